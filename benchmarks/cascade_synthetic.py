"""Does the cascade earn its place? 3d_lowres, 3d_fullres and 3d_cascade_fullres at equal training time.

None of the shared datasets plans a cascade (their full-res patch covers most of a case), so this uses a synthetic
one planned with a small memory target: the full-res patch then sees a small part of each case, which is the
situation the cascade is for. Every configuration trains the same folds with the same minutes per fold (the
cascade's share does not include its low-res stage, as in nnU-Net's accounting); ``find-best`` then prints the
cross-validation Dice of each configuration and pair. Wall times are printed; CPU figures are only comparable
within one run on a quiet machine.

Run: ``.venv/bin/python benchmarks/cascade_synthetic.py [--minutes-per-fold 2] [--folds 0 1 2 3 4]
[--shape 40 48 48] [--gpu-memory 0.02] [--workspace /tmp/cascade_bench]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoseg import api
from autoseg.evaluation.selection import selection_table
from autoseg.synthetic import make_dataset, preset
from autoseg.training.automl import VALIDATION_RESERVE

CONFIGS = ["3d_lowres", "3d_fullres", "3d_cascade_fullres"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes-per-fold", type=float, default=2.0)
    ap.add_argument("--folds", nargs="+", default=["0", "1", "2", "3", "4"])
    ap.add_argument("--shape", nargs=3, type=int, default=[40, 48, 48])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--gpu-memory", type=float, default=0.02)
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/cascade_bench"))
    args = ap.parse_args()

    raw = args.workspace / "raw" / "Task09_Cascade"
    if not (raw / "dataset.json").is_file():
        make_dataset(raw, preset("cascade", shape=tuple(args.shape), num_training=args.cases))
    ws = args.workspace / "ws"
    t0 = time.time()
    plans = api.plan(raw, ws, memory_gb=args.gpu_memory).plans
    missing = [c for c in CONFIGS if c not in plans.configurations]
    if missing:
        raise SystemExit(f"no cascade planned ({', '.join(missing)} missing): lower --gpu-memory or enlarge --shape")
    for c in CONFIGS:
        p = plans.configurations[c]
        print(f"{c:20s} spacing {tuple(round(s, 2) for s in p.spacing)} patch {p.patch_size} batch {p.batch_size}")
    jobs = len(CONFIGS) * len(args.folds)
    budget = args.minutes_per_fold * jobs / (1 - VALIDATION_RESERVE)
    api.train_all(ws, "Cascade", CONFIGS, args.folds, budget_minutes=budget, progress=False, select=False)
    if len(args.folds) == 5:
        best = api.find_best(ws, "Cascade", CONFIGS, progress=False)
        print(selection_table(best))
    print(f"wall time {time.time() - t0:.0f} s for {jobs} folds of {args.minutes_per_fold:g} min")


if __name__ == "__main__":
    main()
