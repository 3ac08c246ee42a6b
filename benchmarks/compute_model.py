"""How well multiply-accumulates predict the seconds of a training step on this device (issue 11's compute model).

For a planned configuration (nnU-Net's plan) and smaller variants of it, the kinds a time budget would choose
(batch 1, the patch the memory planner picks for a smaller memory target, half the features), it prints the
MACs of a training step (:func:`autoseg.planning.compute.training_macs`), the measured seconds of one
(:func:`autoseg.nn.speed.benchmark_step`, fastest of ``--iterations`` after a warm-up), and seconds per TMAC. If
seconds per MAC stay near constant across the variants, one measured step of one plan predicts every candidate plan.

    .venv/bin/python benchmarks/compute_model.py [--raw DIR ...] [--iterations 2]

Each raw dataset is planned (no preprocessing) into ``--workspace`` first when it is not planned there yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch

from autoseg import api
from autoseg.nn.device import resolve_channels_last, resolve_device, resolve_precision
from autoseg.nn.speed import benchmark_step
from autoseg.nn.unet import build_network
from autoseg.planning.compute import training_macs
from autoseg.planning.configuration import fit_configuration
from autoseg.planning.presets import load_preset
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss

RAW = [Path("/work/shared/data/Task04_Hippocampus"), Path("/work/shared/data/Task902_LA2018")]


def variants(ctx, config: str):
    """(name, patch, batch, architecture) of nnU-Net's plan and of smaller plans a budget could choose."""
    plan = ctx.plans.configurations[config]
    yield "nnU-Net plan", plan.patch_size, plan.batch_size, plan.architecture
    if plan.batch_size > 1:
        yield "batch 1", plan.patch_size, 1, plan.architecture
    half = tuple(max(8, f // 2) for f in plan.architecture.features_per_stage)
    yield "half features", plan.patch_size, plan.batch_size, dataclasses.replace(plan.architecture,
                                                                                  features_per_stage=half)
    preset = load_preset(ctx.plans.preset)
    voxels = math.prod(plan.median_shape) * len(ctx.spec.training)  # as the planner counts the dataset
    for gb in (4.0, 2.0, 1.0):
        choice = fit_configuration(plan.spacing, plan.median_shape, voxels, len(ctx.plans.labels), preset, gb)
        yield f"patch for {gb:g} GB", choice.patch_size, plan.batch_size, choice.architecture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, nargs="+", default=RAW)
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/compute_model_ws"))
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    precision = resolve_precision("auto", dev)
    channels_last = resolve_channels_last(None, dev, precision)
    print(f"device {dev}, precision {precision}, channels_last {channels_last}, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    rows = []
    for raw in args.raw:
        result = api.plan(raw, args.workspace, progress=False, preprocess=False)
        ctx = api.load_context(args.workspace, result.plans.dataset_name)
        channels = ctx.plans.input_channels(args.config)
        classes = len(ctx.plans.labels)
        for name, patch, batch, arch in variants(ctx, args.config):
            macs = training_macs(arch, patch, batch, channels, classes)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                net = build_network(arch, channels, classes)
            t0 = time.perf_counter()
            seconds = benchmark_step(net, DeepSupervisionLoss(DiceCELoss(batch_dice=False)), (batch, channels, *patch),
                                     dev, precision, channels_last, iterations=args.iterations, warmup=1)
            row = (ctx.name, name, "x".join(map(str, patch)), batch, arch.features_per_stage[0], macs / 1e12,
                   seconds, seconds / (macs / 1e12))
            rows.append(row)
            print(f"[bench] {row[0]} {name}: {row[5]:.3f} TMAC, {seconds:.2f} s/step, {row[7]:.2f} s/TMAC "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{'dataset':12s} {'variant':16s} {'patch':>12s} {'batch':>5s} {'width':>5s} {'TMAC/step':>10s} "
          f"{'s/step':>8s} {'s/TMAC':>7s}")
    for r in rows:
        print(f"{r[0]:12s} {r[1]:16s} {r[2]:>12s} {r[3]:5d} {r[4]:5d} {r[5]:10.3f} {r[6]:8.2f} {r[7]:7.2f}")


if __name__ == "__main__":
    main()
