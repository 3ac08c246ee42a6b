"""Plan the same datasets with autoseg and nnU-Net v2 and print both side by side, with wall times.

Datasets: the shared Hippocampus and BraTS subsets, a synthetic anisotropic set and a synthetic large set (which
gets a 3d_lowres configuration). nnU-Net runs from its own virtualenv (built on first use, see ``_nnunet.py``).
Both tools run as subprocesses with 2 workers, alternating, and are timed for fingerprint + planning only
(nnU-Net's MSD conversion is timed apart and excluded).

Usage::

    .venv/bin/python benchmarks/planner_vs_nnunet.py [--work-dir /tmp/planner_bench] [--repeats 2] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _datasets(work: Path, skip_large: bool) -> list[tuple[str, Path, int]]:
    from autoseg import synthetic

    out = []
    for name, folder, did in (("Hippocampus", SHARED / "Task04_Hippocampus", 4),
                              ("BraTS subset", SHARED / "BraTS2015_DeepMedicSubset", 5)):
        if (folder / "dataset.json").is_file():
            out.append((name, folder, did))
        else:
            print(f"skipping {name}: {folder} not found")
    synth = [("synthetic anisotropic", "anisotropic", 11)] + ([] if skip_large else [("synthetic large", "large", 12)])
    for name, preset, did in synth:
        folder = work / "raw" / f"Task{did}_{preset.capitalize()}"
        if not (folder / "dataset.json").is_file():
            if folder.exists():
                shutil.rmtree(folder)
            print(f"generating {name} ...", flush=True)
            synthetic.make_dataset(folder, synthetic.PRESETS[preset])
        out.append((name, folder, did))
    return out


def _autoseg_plan(raw: Path, ws: Path, log: Path) -> dict:
    if ws.exists():
        shutil.rmtree(ws)  # measure a cold run (no reused fingerprint)
    ws.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "autoseg", "plan", str(raw), "-w", str(ws), "-j", "2", "--no-preprocess"]
    m = _nnunet._run_measured(cmd, _nnunet._clean_env(), log, ws.parent)
    plans_file = next(ws.glob("*/plans.json"))
    m["plans"] = json.loads(plans_file.read_text())
    return m


def summarize_autoseg_plans(plans: dict) -> dict:
    """The same compact view as ``_nnunet.summarize_nnunet_plans``, from an autoseg plans.json."""
    out = {"transpose_forward": plans["transpose_forward"], "configurations": {}}
    for name, c in plans["configurations"].items():
        strides = c["architecture"]["strides"]
        out["configurations"][name] = {
            "spacing": c["spacing"], "patch_size": c["patch_size"], "batch_size": c["batch_size"],
            "poolings_per_axis": [sum(1 for s in strides if s[a] == 2) for a in range(len(c["patch_size"]))],
            "n_stages": len(c["architecture"]["features_per_stage"]),
            "normalization": [n["scheme"] + ("+mask" if n["use_nonzero_mask"] else "") for n in c["normalization"]],
        }
    return out


def _nn_norm(c: dict) -> list[str]:
    names = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none",
             "RescaleTo01Normalization": "rescale_0_1"}
    return [names.get(n, n) + ("+mask" if m else "") for n, m in zip(c["normalization"], c["use_mask_for_norm"])]


def _fmt(v) -> str:
    if isinstance(v, list):
        return "x".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)
    return str(v)


def compare(name: str, ours: dict, theirs: dict) -> tuple[list[str], int]:
    """Table rows for one dataset and the number of disagreeing fields."""
    rows, diffs = [], 0
    if ours["transpose_forward"] != theirs["transpose_forward"]:
        rows.append(f"  transpose_forward differs: autoseg {ours['transpose_forward']} nnU-Net "
                    f"{theirs['transpose_forward']}")
        diffs += 1
    configs = sorted(set(ours["configurations"]) | set(theirs["configurations"]))
    for cfg in configs:
        a = ours["configurations"].get(cfg)
        b = theirs["configurations"].get(cfg)
        if a is None or b is None:
            rows.append(f"  {cfg:20s} only in {'nnU-Net' if a is None else 'autoseg'}")
            diffs += 1
            continue
        for key in ("spacing", "patch_size", "poolings_per_axis", "batch_size", "n_stages", "normalization"):
            va = a[key]
            vb = _nn_norm(b) if key == "normalization" else b[key]
            same = (all(abs(x - y) < 1e-4 for x, y in zip(va, vb)) and len(va) == len(vb)) if key == "spacing" \
                else va == vb
            diffs += not same
            rows.append(f"  {cfg:20s} {key:18s} {_fmt(va):>22s} {_fmt(vb):>22s}  {'ok' if same else 'DIFFERENT'}")
    return rows, diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/planner_bench"))
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per tool and dataset (alternating)")
    ap.add_argument("--skip-large", action="store_true", help="leave out the synthetic large dataset")
    args = ap.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    _nnunet.ensure_nnunet_venv()

    report, total_diffs = [], 0
    for name, raw, did in _datasets(work, args.skip_large):
        print(f"== {name}: planning with both tools x{args.repeats} ...", flush=True)
        ours_t, theirs_t, ours_rss, theirs_rss = [], [], [], []
        ours = theirs = None
        for _ in range(args.repeats):
            o = _autoseg_plan(raw, work / "autoseg_ws" / str(did), work / "logs" / f"autoseg_{did}.log")
            t = _nnunet.plan_with_nnunet(raw, work / "nnunet", did, num_proc=2)
            ours_t.append(o["wall_seconds"])
            theirs_t.append(t["wall_seconds"]["plan"])
            ours_rss.append(o["peak_tree_rss_mb"])
            theirs_rss.append(t["peak_tree_rss_mb"])
            ours, theirs = o["plans"], t["plans"]
        rows, diffs = compare(name, summarize_autoseg_plans(ours), _nnunet.summarize_nnunet_plans(theirs))
        total_diffs += diffs
        a, b = statistics.median(ours_t), statistics.median(theirs_t)
        report.append(f"\n{name} ({raw})\n  {'configuration':20s} {'field':18s} {'autoseg':>22s} {'nnU-Net':>22s}")
        report.extend(rows)
        report.append(f"  fingerprint + planning wall time (median of {args.repeats}): autoseg {a:.2f} s, "
                      f"nnU-Net {b:.2f} s -> autoseg {b / a:.1f}x faster; peak tree RSS autoseg "
                      f"{max(ours_rss):.0f} MB, nnU-Net {max(theirs_rss):.0f} MB")
    print("\n".join(report))
    print(f"\n{total_diffs} field(s) differ between the tools")
    return 0


if __name__ == "__main__":
    sys.exit(main())
