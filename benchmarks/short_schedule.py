"""Which learning-rate schedule gets most out of a few hundred iterations (issue 11, short budgets).

    .venv/bin/python benchmarks/short_schedule.py [--epochs 25] [--iterations-per-epoch 10] [--out DIR]

Task04_Hippocampus, nnU-Net's 3d_fullres plan at batch 2 (what a short CPU budget trains), fold 0, the same seed
and so the same batches for every arm; a fixed number of iterations (not a time budget, so the arms differ only
in their schedule), then the full-resolution validation of fold 0. Arms: nnU-Net's recipe (SGD, Nesterov
momentum 0.99, lr 0.01, poly), a linear warm-up over the first 10% of the epochs, warm-up with a 3x higher peak,
and momentum 0.9 at the same effective step (lr / (1 - momentum)). Prints one line per arm and a summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autoseg import api

DATA = Path("/work/shared/data")

ARMS = {
    "nnU-Net (lr 0.01, momentum 0.99)": {},
    "warm-up 10%": {"warmup_fraction": 0.1},
    "warm-up 10%, lr 0.03": {"warmup_fraction": 0.1, "learning_rate": 0.03},
    "momentum 0.9, lr 0.1, warm-up 10%": {"warmup_fraction": 0.1, "learning_rate": 0.1, "momentum": 0.9},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/short_schedule"))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--iterations-per-epoch", type=int, default=10)
    ap.add_argument("--arms", nargs="*", default=None, help="subset of the arm names")
    args = ap.parse_args()
    result = api.plan(DATA / "Task04_Hippocampus", args.out, progress=False)
    name = result.plans.dataset_name
    plan = result.plans.configurations["3d_fullres"]
    print(f"[bench] {name} 3d_fullres patch {'x'.join(map(str, plan.patch_size))}, batch 2 (plans: "
          f"{plan.batch_size}); {args.epochs} x {args.iterations_per_epoch} iterations per arm", flush=True)
    rows = []
    for label, overrides in ARMS.items():
        if args.arms and label not in args.arms:
            continue
        t0 = time.perf_counter()
        api.train(args.out, name, "3d_fullres", "0", progress=False, overwrite=True, batch_size=2,
                  epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, validation_iterations=2,
                  **overrides)
        ctx = api.load_context(args.out, name)
        fold = ctx.fold("3d_fullres", "0")
        summary = json.loads(fold.validation_summary.read_text())
        log = [json.loads(line) for line in fold.log.read_text().splitlines() if line.strip()]
        dice = {summary["label_names"].get(k, k): round(m["dice"], 4) for k, m in summary["mean"].items()}
        row = {"arm": label, "overrides": overrides, "dice": dice, "mean_dice": round(sum(dice.values()) / len(dice), 4),
               "final_train_loss": round(log[-1]["train_loss"], 4), "minutes": round((time.perf_counter() - t0) / 60, 1),
               "train_loss_by_epoch": [round(e["train_loss"], 3) for e in log]}
        rows.append(row)
        print(f"[bench] {json.dumps(row)}", flush=True)
    print("\n[bench] summary (fold-0 validation, full resolution)")
    for r in rows:
        print(f"  {r['arm']:<38} mean Dice {r['mean_dice']:.4f} {r['dice']}  final train loss "
              f"{r['final_train_loss']:+.3f}  ({r['minutes']} min)")


if __name__ == "__main__":
    main()
