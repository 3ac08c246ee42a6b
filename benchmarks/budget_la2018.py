"""One LA2018 fold within a CPU time budget: the plan used, iterations reached, fold-0 Dice, test predictions.

    .venv/bin/python benchmarks/budget_la2018.py --budget 60 [--gpu-memory GB] [--out /tmp/budget_la2018]

Plans ``../shared/data/Task902_LA2018`` into ``OUT/ws`` as ``autoseg plan --budget`` does (the budget rule fits
the plan to ``--budget`` minutes per fold on this machine's measured throughput; ``--no-fit``: nnU-Net's
memory-only plan), trains ``3d_fullres`` fold 0 for ``--budget`` minutes, validates it on its fold-0 cases (the
fold's cross-validation Dice and HD95 against the training labels), and predicts the 10 test images into
``OUT/predictions`` (the project owners score those on the hidden labels). Prints one summary block; the
per-epoch lines go to the console too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from autoseg import api
from autoseg.planning.compute import training_macs
from autoseg.planning.summary import plans_table

RAW = Path("/work/shared/data/Task902_LA2018")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=RAW)
    ap.add_argument("--out", type=Path, default=Path("/tmp/budget_la2018"))
    ap.add_argument("--budget", type=float, default=60.0, help="training minutes for the fold")
    ap.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="planner memory target")
    ap.add_argument("--no-fit", action="store_true", help="train nnU-Net's memory-only plan instead")
    ap.add_argument("--pretrained", type=Path, default=None, help="model zip to initialise from")
    ap.add_argument("--no-predict", action="store_true", help="skip the test predictions")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--fold", default="0")
    args = ap.parse_args()
    ws = args.out / "ws"
    t0 = time.perf_counter()
    result = api.plan(args.raw, ws, memory_gb=args.gpu_memory, progress=False,
                      budget_minutes=None if args.no_fit else args.budget)
    print(plans_table(result.plans), flush=True)
    ctx = api.load_context(ws, result.plans.dataset_name)
    plan = ctx.configuration(args.config)
    macs = training_macs(plan.architecture, plan.patch_size, plan.batch_size, ctx.plans.input_channels(args.config),
                         len(ctx.plans.labels))
    print(f"[bench] plan {args.config}: patch {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}, "
          f"{len(plan.architecture.features_per_stage)} stages, features {plan.architecture.features_per_stage}, "
          f"spacing {plan.spacing}, {macs / 1e12:.2f} TMAC per step (memory target "
          f"{args.gpu_memory or 'default'} GB; planned in {time.perf_counter() - t0:.0f} s)", flush=True)
    t1 = time.perf_counter()
    trained = api.train(ws, ctx.name, args.config, args.fold, resume=True, budget_minutes=args.budget,
                        progress=True, pretrained=args.pretrained)
    train_wall = time.perf_counter() - t1
    st = trained.state
    summary = json.loads(ctx.fold(args.config, args.fold).validation_summary.read_text())
    out = args.out / "predictions"
    t2 = time.perf_counter()
    if not args.no_predict:
        api.predict(ws, ctx.name, args.raw / "imagesTs", out, args.config, [args.fold], overwrite=True,
                    progress=False)
    print(f"\n[bench] LA2018 {args.config} fold {args.fold}, budget {args.budget:g} min, memory target "
          f"{args.gpu_memory or 'default'} GB")
    print(f"  plan: patch {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}, "
          f"features {plan.architecture.features_per_stage}, {macs / 1e12:.2f} TMAC per step")
    print(f"  trained: {st.epoch} epochs x {st.iterations_per_epoch} = {st.epoch * st.iterations_per_epoch} "
          f"iterations in {st.train_seconds / 60:.1f} min of training ({train_wall / 60:.1f} min wall with "
          f"validation), {st.train_seconds / max(1, st.epoch * st.iterations_per_epoch):.2f} s per iteration"
          + (f" (plan expected {plan.budget.seconds_per_iteration:.2f} s, ~{plan.budget.iterations} iterations)"
             if plan.budget else ""))
    for key, m in summary["mean"].items():
        print(f"  fold-{args.fold} validation ({len(summary['cases'])} cases): "
              f"{summary['label_names'].get(key, key)} Dice {m['dice']:.4f}, HD95 {m['hd95']:.2f} mm")
    print(f"  test predictions: {out} ({len(list(out.glob('*.nii.gz')))} images, "
          f"{time.perf_counter() - t2:.0f} s)")


if __name__ == "__main__":
    main()
