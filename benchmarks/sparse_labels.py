"""Sparse annotation with the ignore label: Hippocampus labelled on every 5th slice only vs fully, equal budget.

    .venv/bin/python benchmarks/sparse_labels.py [--budget 20] [--every 5] [--out /tmp/sparse_labels] [--keep]

A copy of ``../shared/data/Task04_Hippocampus`` keeps the labels of every ``--every``-th slice (axis 0 of the
file) and marks the rest ``ignore`` (value 3, declared in its ``dataset.json`` as nnU-Net does). Both datasets are
planned with ``--budget`` and fold 0 of ``3d_fullres`` is trained for that long, one after the other on this
machine; both models are then scored on the same, fully labelled fold-0 validation cases (the sparse run's own
validation only sees its annotated slices). Prints the annotated fraction, both Dice tables and the iterations
each arm reached (a budget is wall-clock time: an arm that shared the machine gets fewer).

``--keep`` reuses ``--out``: an arm whose fold 0 is already trained there is only evaluated (to re-train one arm on
a quiet machine, move its ``ws_<arm>`` folder away first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from autoseg import api
from autoseg.io.image import read_label, write_image
from autoseg.nn.checkpoint import load_checkpoint

HIPPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
IGNORE = 3


def sparsify(src: Path, dst: Path, every: int) -> float:
    """Copy the dataset with labels kept on every ``every``-th slice; returns the annotated voxel fraction."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "dataset.json").read_text())
    meta["labels"][str(IGNORE)] = "ignore"
    meta["name"] = "HippocampusSparse"
    (dst / "dataset.json").write_text(json.dumps(meta, indent=2))
    kept = total = 0
    for entry in meta["training"]:
        path = dst / entry["label"]
        label, geometry = read_label(path)
        sparse = np.full(label.shape, IGNORE, np.uint8)
        sparse[::every] = label[::every]
        kept, total = kept + int((sparse != IGNORE).sum()), total + sparse.size
        write_image(sparse, geometry, path)
    return kept / total


def annotated_fraction(raw: Path) -> float:
    """Annotated voxel fraction of an existing sparse copy."""
    meta = json.loads((raw / "dataset.json").read_text())
    kept = total = 0
    for entry in meta["training"]:
        label, _ = read_label(raw / entry["label"])
        kept, total = kept + int((label != IGNORE).sum()), total + label.size
    return kept / total


def run(raw: Path, ws: Path, minutes: float) -> tuple[str, float]:
    """Plan and train fold 0 within ``minutes`` (or reuse a trained fold 0 in ``ws``)."""
    t0 = time.perf_counter()
    name = json.loads((raw / "dataset.json").read_text())["name"]
    if (ws / name / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file():
        print(f"[bench] reusing the trained fold 0 in {ws}", flush=True)
        return name, 0.0
    name = api.plan(raw, ws, budget_minutes=minutes, progress=False).plans.dataset_name
    api.train(ws, name, "3d_fullres", "0", budget_minutes=minutes, progress=False)
    return name, time.perf_counter() - t0


def iterations(ws: Path, name: str) -> int:
    """Training iterations the fold reached (epochs logged x iterations per epoch)."""
    folder = ws / name / "models" / "3d_fullres" / "fold_0"
    state = json.loads(load_checkpoint(folder / "checkpoint_final.pt")["state"])
    return int(state["batches_drawn"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sparse_labels"))
    ap.add_argument("--keep", action="store_true", help="reuse --out and the arms already trained there")
    args = ap.parse_args()
    sparse_raw = args.out / "Task04_HippocampusSparse"
    if not (args.keep and sparse_raw.is_dir()):
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        sparse_raw.parent.mkdir(parents=True, exist_ok=True)
    fraction = annotated_fraction(sparse_raw) if sparse_raw.is_dir() else sparsify(HIPPO, sparse_raw, args.every)
    print(f"[bench] sparse copy: labels on every {args.every}th slice, {fraction:.1%} of the voxels annotated",
          flush=True)
    results = {}
    for label, raw, ws in (("full", HIPPO, args.out / "ws_full"), ("sparse", sparse_raw, args.out / "ws_sparse")):
        name, seconds = run(raw, ws, args.budget)
        ctx = api.load_context(ws, name)
        val = ctx.fold("3d_fullres", "0").validation
        # both scored on the full labels of the same cases
        summary = api.evaluate(val, HIPPO / "labelsTr", labels=[1, 2], predicted_only=True, progress=False,
                               output=args.out / f"{label}_full_labels_summary.json")
        results[label] = {summary.label_names[k]: round(m.dice, 4) for k, m in summary.mean.items()}
        print(f"[bench] {label}: {json.dumps(results[label])} ({len(summary.cases)} cases, "
              f"{iterations(ws, name)} iterations, {seconds / 60:.1f} min)", flush=True)
    print("\n[bench] summary (fold 0, 3d_fullres, scored on the full labels)")
    for label, dice in results.items():
        print(f"  {label:<7} {dice}  mean {np.mean(list(dice.values())):.4f}")
    gap = np.mean(list(results["full"].values())) - np.mean(list(results["sparse"].values()))
    print(f"  sparse is {gap:+.4f} below full (goal: within 0.03)")


if __name__ == "__main__":
    main()
