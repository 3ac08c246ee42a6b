"""Seconds per training step of a planned configuration, fp32 vs bf16 autocast, contiguous vs channels-last.

    python benchmarks/step_speed.py plans/examples/hippocampus.plans.json 3d_fullres --rounds 3

Settings are measured in alternation, ``--rounds`` times, and the minimum is reported: on a shared machine other
work only ever adds time. Also compares the loss of a few SGD steps in fp32 and bf16 from the same weights.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
from pathlib import Path

import torch

from autoseg.nn import build_network
from autoseg.nn.speed import autocast_context, benchmark_step, prepare_for_device, to_memory_format
from autoseg.schema.base import load_json
from autoseg.schema.plans import Plans
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss, downsample_targets


def loss_trajectory(model, loss, batch_shape, precision, channels_last, steps, seed=0):
    """Loss values of ``steps`` SGD steps on one fixed random batch (same data and weights for every setting)."""
    gen = torch.Generator().manual_seed(seed)
    net = prepare_for_device(copy.deepcopy(model), "cpu", channels_last).train()
    x = to_memory_format(torch.randn(batch_shape, generator=gen), channels_last)
    with torch.no_grad():
        outs = net(x)
    # a learnable target: the class follows the input intensity (x > 0.5 -> 1, x < -0.5 -> 2), so the loss falls
    full = torch.where(x > 0.5, 1, torch.where(x < -0.5, 2, 0)).long().contiguous() % outs[0].shape[1]
    targets = downsample_targets(full, [tuple(o / f for o, f in zip(out.shape[2:], full.shape[2:])) for out in outs])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    values = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with autocast_context("cpu", precision):
            value = loss(net(x), targets)
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        values.append(float(value.detach()))
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", type=Path)
    ap.add_argument("configuration")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss-steps", type=int, default=0, help="also compare the loss of this many SGD steps")
    ap.add_argument("--network", help="override the plan's network kind")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plans = load_json(Plans, args.plans)
    cfg = plans.configurations[args.configuration]
    arch = cfg.architecture if args.network is None else dataclasses.replace(cfg.architecture, network=args.network)
    torch.manual_seed(0)
    net = build_network(arch, len(cfg.normalization), len(plans.labels))
    batch = (args.batch_size or cfg.batch_size, len(cfg.normalization), *cfg.patch_size)
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=cfg.batch_dice))
    settings = list(itertools.product(("fp32", "bf16"), (False, True)))
    best = {s: float("inf") for s in settings}
    print(f"{args.configuration} {arch.network} batch {batch} threads {args.threads}", flush=True)
    for r in range(args.rounds):
        for prec, cl in settings:
            t = benchmark_step(net, loss, batch, "cpu", prec, cl, iterations=args.iterations, warmup=1, seed=r)
            best[(prec, cl)] = min(best[(prec, cl)], t)
            print(f"round {r} {prec} channels_last={cl}: {t:.3f} s", flush=True)
    for (prec, cl), t in best.items() if args.rounds else ():
        print(f"MIN {prec:5s} {'channels_last' if cl else 'contiguous':13s} {t:.3f} s/step "
              f"({best[('fp32', False)] / t:.2f}x)")
    if args.loss_steps:
        for prec, cl in settings:
            vals = loss_trajectory(net, loss, batch, prec, cl, args.loss_steps)
            print(f"loss {prec} cl={cl}: " + " ".join(f"{v:.4f}" for v in vals), flush=True)


if __name__ == "__main__":
    main()
