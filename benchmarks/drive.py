"""DRIVE (retinal vessels, 2D RGB) end to end with autoseg commands only, within a CPU budget.

    .venv/bin/python benchmarks/drive.py [--budget 45] [--out /tmp/drive]

1. ``autoseg convert`` from ``../shared/data/DRIVE`` as it is (TIFF photographs, GIF 0/255 vessel masks, GIF
   field-of-view masks, other suffixes per kind) into ``OUT/raw``;
2. ``autoseg plan --budget BUDGET`` (the 2d configuration only; the budget rule on this machine's throughput);
3. ``autoseg train -c 2d -f 0 --budget BUDGET`` and its validation (fold 0's 4 cases, scored inside the field of
   view);
4. ``autoseg predict --roi`` of the 20 test images into ``OUT/predictions`` (TIFF, 0/255 like the manual
   annotations, background outside the field of view).

Prints the plan, the iterations reached, the cross-validation F1 (= Dice of the vessel class) and accuracy inside
the field of view per validation case, and the wall time of every step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

DRIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "DRIVE"
CONVERT = ["--images", "training/images/{case}_training.tif", "--labels", "training/1st_manual/{case}_manual1.gif",
           "--roi", "training/mask/{case}_training_mask.gif", "--test-images", "test/images/{case}_test.tif",
           "--test-roi", "test/mask/{case}_test_mask.gif", "--map", "255=1", "--label-names", "background",
           "vessel", "--name", "DRIVE"]


OUTPUT: list[str] = []


def autoseg(*args: str) -> float:
    """Run one autoseg command, its output streamed (and kept in OUTPUT); returns its wall time, s."""
    t0 = time.perf_counter()
    print(f"\n[bench] $ autoseg {' '.join(args)}", flush=True)
    with subprocess.Popen([sys.executable, "-m", "autoseg", *args], stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            OUTPUT.append(line.rstrip())
            print(line, end="", flush=True)
    if proc.returncode:
        sys.exit(f"autoseg {args[0]} failed with exit code {proc.returncode}")
    return time.perf_counter() - t0


def inside_fov_scores(pred: Path, ref: Path, roi: Path) -> tuple[float, float]:
    """F1 and accuracy of one case inside its field of view."""
    p, r = np.asarray(Image.open(pred)) > 0, np.asarray(Image.open(ref)) > 0
    m = np.asarray(Image.open(roi)) > 0
    p, r = p[m], r[m]
    tp = float(np.sum(p & r))
    f1 = 2 * tp / max(float(p.sum() + r.sum()), 1.0)
    return f1, float(np.mean(p == r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=45.0, help="training minutes of the fold")
    ap.add_argument("--out", type=Path, default=Path("/tmp/drive"))
    ap.add_argument("--source", type=Path, default=DRIVE)
    args = ap.parse_args()
    if not (args.source / "training" / "images").is_dir():
        sys.exit(f"{args.source}: DRIVE not found")
    shutil.rmtree(args.out, ignore_errors=True)
    raw, ws, preds = args.out / "raw", args.out / "ws", args.out / "predictions"
    times = {"convert": autoseg("convert", str(args.source), str(raw), *CONVERT)}
    times["plan"] = autoseg("plan", str(raw), "-w", str(ws), "--budget", f"{args.budget:g}")
    times["train + validation"] = autoseg("train", "DRIVE", "-w", str(ws), "-c", "2d", "-f", "0", "--budget",
                                          f"{args.budget:g}")
    times["predict 20 test images"] = autoseg("predict", "DRIVE", "-w", str(ws), "-i", str(raw / "imagesTs"), "-o",
                                              str(preds), "-c", "2d", "-f", "0", "--roi", str(raw / "roiTs"))

    fold = ws / "DRIVE" / "models" / "2d" / "fold_0"
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines() if line.strip()]
    cfg = json.loads((fold / "train_config.json").read_text())
    plan = json.loads((ws / "DRIVE" / "plans.json").read_text())["configurations"]["2d"]
    print("\n[bench] summary")
    print(f"  plan 2d: patch {plan['patch_size']}, batch {plan['batch_size']}, width "
          f"{plan['architecture']['features_per_stage'][0]}, spacing {plan['spacing']}; trade-offs: "
          f"{(plan.get('budget') or {}).get('trade_offs')}")
    trained = next((ln.strip() for ln in OUTPUT if ln.startswith("2d fold 0:")), "")
    print(f"  {trained} ({cfg.get('budget_minutes')} min budget); median step "
          f"{np.median([e['step_seconds'] for e in log]):.2f} s; final train loss {log[-1]['train_loss']:.3f}")
    rows = []
    for f in sorted((fold / "validation").glob("*.tif")):
        cid = f.name[: -len(".tif")]
        rows.append((cid, *inside_fov_scores(f, raw / "labelsTr" / f.name, raw / "roiTr" / f.name)))
    for cid, f1, acc in rows:
        print(f"  validation case {cid}: F1 {f1:.4f}, accuracy {acc:.4f} (inside the field of view)")
    print(f"  fold-0 cross-validation inside the field of view: mean F1 {np.mean([r[1] for r in rows]):.4f}, "
          f"mean accuracy {np.mean([r[2] for r in rows]):.4f} ({len(rows)} cases)")
    written = sorted(p.name for p in preds.glob("*.tif"))
    print(f"  test predictions: {len(written)} files in {preds} ({written[0]} ... {written[-1]})")
    for k, v in times.items():
        print(f"  {k}: {v / 60:.1f} min")
    print(f"  total: {sum(times.values()) / 60:.1f} min")


if __name__ == "__main__":
    main()
