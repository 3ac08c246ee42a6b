"""Seconds per image of sliding-window prediction, with and without mirror test-time augmentation.

    python benchmarks/sliding_window_speed.py plans/examples/hippocampus.plans.json 3d_fullres \
        --shape 36 50 35 --rounds 3 --batch-size 1 0

The network is built from the plan with untrained (random) weights: speed does not depend on them. Settings are
measured in alternation, ``--rounds`` times, and the minimum is reported: on a shared machine other work only ever
adds time.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from autoseg.inference.sliding_window import PASS_VOXELS, predict_logits
from autoseg.inference.tiling import num_tiles, padding_for
from autoseg.nn import build_network
from autoseg.nn.blocks import with_instance_norms
from autoseg.nn.speed import compile_for_inference
from autoseg.schema.base import load_json
from autoseg.schema.plans import Plans


NETWORKS = ("eager", "instance_norm", "compiled")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plans", type=Path)
    p.add_argument("config")
    p.add_argument("--shape", type=int, nargs="+", required=True, help="image shape (z, y, x), voxels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 0],
                   help="network inputs (tile mirrorings) per forward pass to compare; 0: the automatic choice")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--networks", nargs="+", default=["eager"], choices=NETWORKS,
                   help="eager (the layers' group norm), instance_norm (torch's InstanceNorm twin, the layers before "
                        "2026-12-03), compiled (--runtime compiled: torch.compile with frozen weights; its "
                        "compilation is timed apart)")
    args = p.parse_args()

    plans = load_json(Plans, args.plans)
    cfg = plans.configurations[args.config]
    num_classes = len(plans.labels)
    torch.manual_seed(0)
    eager = build_network(cfg.architecture, len(plans.channel_names), num_classes).eval()
    image = torch.randn((len(plans.channel_names), *args.shape))
    nets = {"eager": eager, "instance_norm": with_instance_norms(eager).eval()}
    if "compiled" in args.networks:
        nets["compiled"] = compile_for_inference(eager, args.device)
    compile_seconds = {}
    padded = [n + b + a for n, (b, a) in zip(args.shape, padding_for(args.shape, cfg.patch_size))]
    tiles = num_tiles(padded, cfg.patch_size) if len(cfg.patch_size) == len(args.shape) else \
        args.shape[0] * num_tiles(padded[1:], cfg.patch_size)
    all_axes = tuple(range(len(cfg.patch_size)))
    settings = [(name, prec, mirror, batch) for name in args.networks for prec in args.precision
                for mirror in (None, all_axes) for batch in args.batch_size]
    best = {s: float("inf") for s in settings}
    for name, prec, mirror, batch in settings:  # warm-up: kernels chosen, the compiled network compiled per shape
        t = time.perf_counter()
        predict_logits(nets[name], image, cfg.patch_size, num_classes, mirror_axes=mirror, device=args.device,
                       precision=prec, batch_size=batch or None)
        if name == "compiled":
            compile_seconds[(prec, mirror, batch)] = time.perf_counter() - t
    for _ in range(args.rounds):
        for name, prec, mirror, batch in settings:
            t = time.perf_counter()
            predict_logits(nets[name], image, cfg.patch_size, num_classes, mirror_axes=mirror, device=args.device,
                           precision=prec, batch_size=batch or None)
            if torch.device(args.device).type == "cuda":
                torch.cuda.synchronize()
            best[(name, prec, mirror, batch)] = min(best[(name, prec, mirror, batch)], time.perf_counter() - t)
    print(f"{args.plans.name} {args.config}: image {tuple(args.shape)}, patch {tuple(cfg.patch_size)}, {tiles} "
          f"tile(s), {torch.get_num_threads()} threads, device {args.device}")
    for (name, prec, mirror, batch), sec in best.items():
        inputs = batch or max(1, PASS_VOXELS // math.prod(cfg.patch_size))
        first = compile_seconds.get((prec, mirror, batch)) if name == "compiled" else None
        print(f"  {name:13s} {prec:5s} mirror={str(mirror):10s} inputs per pass {inputs:4d}"
              f"{' (auto)' if not batch else '':7s} {sec:7.3f} s"
              + (f"  (first call, compilation included: {first:.1f} s)" if first is not None else ""))


if __name__ == "__main__":
    main()
