"""Seconds per image of sliding-window prediction, with and without mirror test-time augmentation.

    python benchmarks/sliding_window_speed.py plans/examples/hippocampus.plans.json 3d_fullres \
        --shape 36 50 35 --rounds 3

The network is built from the plan with untrained (random) weights: speed does not depend on them. Settings are
measured in alternation, ``--rounds`` times, and the minimum is reported: on a shared machine other work only ever
adds time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from autoseg.inference.sliding_window import predict_logits
from autoseg.inference.tiling import num_tiles, padding_for
from autoseg.nn import build_network
from autoseg.schema.base import load_json
from autoseg.schema.plans import Plans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plans", type=Path)
    p.add_argument("config")
    p.add_argument("--shape", type=int, nargs="+", required=True, help="image shape (z, y, x), voxels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = p.parse_args()

    plans = load_json(Plans, args.plans)
    cfg = plans.configurations[args.config]
    num_classes = len(plans.labels)
    torch.manual_seed(0)
    net = build_network(cfg.architecture, len(plans.channel_names), num_classes).eval()
    image = torch.randn((len(plans.channel_names), *args.shape))
    padded = [n + b + a for n, (b, a) in zip(args.shape, padding_for(args.shape, cfg.patch_size))]
    tiles = num_tiles(padded, cfg.patch_size) if len(cfg.patch_size) == len(args.shape) else \
        args.shape[0] * num_tiles(padded[1:], cfg.patch_size)
    all_axes = tuple(range(len(cfg.patch_size)))
    settings = [(prec, mirror) for prec in args.precision for mirror in (None, all_axes)]
    best = {s: float("inf") for s in settings}
    predict_logits(net, image, cfg.patch_size, num_classes, device=args.device)  # warm-up
    for _ in range(args.rounds):
        for prec, mirror in settings:
            t = time.perf_counter()
            predict_logits(net, image, cfg.patch_size, num_classes, mirror_axes=mirror, device=args.device,
                           precision=prec, batch_size=args.batch_size)
            if torch.device(args.device).type == "cuda":
                torch.cuda.synchronize()
            best[(prec, mirror)] = min(best[(prec, mirror)], time.perf_counter() - t)
    print(f"{args.plans.name} {args.config}: image {tuple(args.shape)}, patch {tuple(cfg.patch_size)}, {tiles} "
          f"tile(s), {torch.get_num_threads()} threads, device {args.device}")
    for (prec, mirror), sec in best.items():
        print(f"  {prec:5s} mirror={str(mirror):10s} {sec:7.3f} s")


if __name__ == "__main__":
    main()
