"""Where the time of one training step goes, per op family, per precision (torch profiler and oneDNN's verbose log).

    python benchmarks/step_profile.py plans/examples/hippocampus.plans.json 3d_fullres --steps 3

For each precision (``--precisions fp32 bf16``) and memory layout it profiles ``--steps`` training steps (after a
warm-up step) of the planned network on random data, the same step the trainer runs (forward under autocast,
deep-supervision loss in fp32, backward, gradient clipping, SGD with Nesterov momentum), and prints:

- the step split into phases (forward, loss, backward, clip + optimizer): wall ms per step;
- inside forward and backward, the self time of the ops grouped into families: convolutions, transposed
  convolutions, instance norm, activation, concatenation, layout and dtype conversions (copies, reorders), other;
- the cost of deep supervision: the same step with the auxiliary heads off;
- with ``--onednn``, oneDNN's own account of its primitives (a child process with ``ONEDNN_VERBOSE=1``): time per
  primitive kind and implementation, which shows the reorders (layout conversions) oneDNN inserted and whether
  convolutions ran a JIT kernel or a reference one.

Times are self CPU times from the profiler (each op counted once, not with its children); the profiler adds a few
per cent of overhead, so compare shares, and take absolute step times from ``step_speed.py``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoseg.nn import build_network  # noqa: E402
from autoseg.nn.speed import autocast_context, prepare_for_device, to_memory_format  # noqa: E402
from autoseg.schema.base import load_json  # noqa: E402
from autoseg.schema.plans import Plans  # noqa: E402
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402

PHASES = ("forward", "loss", "backward", "optimizer")

#: op-name patterns (first match wins) -> family; names are aten op names and autograd node names
FAMILIES = (
    ("transposed conv", re.compile(r"transpose|deconv", re.I)),
    ("convolution", re.compile(r"conv", re.I)),
    ("instance norm", re.compile(r"batch_norm|instance_norm|group_norm|NormBackward", re.I)),
    ("activation", re.compile(r"leaky_relu|relu", re.I)),
    ("concatenation", re.compile(r"\bcat\b|CatBackward|aten::cat", re.I)),
    ("layout/dtype copies", re.compile(r"copy_|_to_copy|contiguous|clone|reorder|aten::to\b|empty_strided", re.I)),
    ("loss ops", re.compile(r"softmax|nll|cross_entropy|scatter|one_hot", re.I)),
    ("optimizer ops", re.compile(r"_foreach|sgd|addcmul|norm\b|linalg_vector_norm|clamp", re.I)),
)


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if pattern.search(name):
            return fam
    return "other (elementwise, sums, allocation)"


def make_step(net, loss, x, targets, precision):
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99, nesterov=True, weight_decay=3e-5)

    def step():
        with record_function("forward"):
            opt.zero_grad(set_to_none=True)
            with autocast_context("cpu", precision):
                out = net(x)
        with record_function("loss"):
            with autocast_context("cpu", precision):
                value = loss(out, targets)
        with record_function("backward"):
            value.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
        return value

    return step


def setup(model, batch, precision, channels_last, deep_supervision=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = prepare_for_device(copy.deepcopy(model), "cpu", channels_last).train()
    net.deep_supervision = deep_supervision
    x = to_memory_format(torch.randn(batch, generator=gen), channels_last)
    with torch.no_grad(), autocast_context("cpu", precision):
        out = net(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    targets = [torch.randint(0, o.shape[1], (o.shape[0], 1, *o.shape[2:]), generator=gen) for o in outs]
    return net, x, targets if isinstance(out, (list, tuple)) else targets[0]


def wall_per_step(step, steps):
    step()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def _phase_of(event):
    while event is not None:
        if event.name in PHASES:
            return event.name
        event = event.cpu_parent
    return None


def profile_steps(step, steps):
    """{phase: wall us}, {(phase, family): self us}, {op: self us} summed over ``steps`` profiled steps."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = list(prof.events())
    phase_wall, fam_self, op_self = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.name in PHASES:
            phase_wall[e.name] += e.time_range.elapsed_us()
            continue
        phase = _phase_of(e.cpu_parent)
        if phase is None:
            continue
        self_us = e.self_cpu_time_total
        fam_self[(phase, family(e.name))] += self_us
        op_self[(phase, e.name)] += self_us
    return phase_wall, fam_self, op_self


def onednn_summary(argv: list[str]) -> str:
    """Run this script's ``--onednn-child`` mode with oneDNN's verbose log on; sum its exec lines per setting."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    res = subprocess.run([sys.executable, __file__, *argv, "--onednn-child"], env=env, capture_output=True, text=True)
    if res.returncode:
        return f"oneDNN child failed: {res.stderr.strip().splitlines()[-1:]}"
    sections: dict[str, dict] = {}
    totals: dict | None = None
    for line in res.stdout.splitlines():
        if line.startswith("### "):  # the setting's measured step starts (its warm-up step is not counted)
            totals = sections.setdefault(line[4:], collections.defaultdict(lambda: [0, 0.0]))
            continue
        parts = line.split(",")
        if totals is None or "exec" not in parts or not parts[0].startswith(("onednn_verbose", "dnnl_verbose")):
            continue
        at = parts.index("exec")
        try:
            ms = float(parts[-1])
        except ValueError:
            continue
        key = (parts[at + 2], parts[at + 3], parts[at + 4])  # primitive kind, implementation, propagation
        totals[key][0] += 1
        totals[key][1] += ms
    if not any(sections.values()):
        return "oneDNN printed no exec lines (torch did not route these ops through oneDNN)"
    lines = []
    for setting, totals in sections.items():
        grand = sum(v[1] for v in totals.values())
        lines.append(f"  -- {setting}: {grand:.1f} ms in oneDNN primitives")
        lines.append(f"  {'primitive':14s} {'implementation':34s} {'propagation':18s} {'calls':>6s} {'ms':>9s} share")
        for (kind, impl, prop), (n, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"  {kind:14s} {impl:34s} {prop:18s} {n:6d} {ms:9.1f} {ms / max(grand, 1e-9):5.1%}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", type=Path)
    ap.add_argument("configuration")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--patch-size", type=int, nargs="+")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"])
    ap.add_argument("--top", type=int, default=12, help="also list the most expensive ops")
    ap.add_argument("--onednn", action="store_true", help="add oneDNN's verbose account (a child process)")
    ap.add_argument("--onednn-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plans = load_json(Plans, args.plans)
    cfg = plans.configurations[args.configuration]
    if args.patch_size:
        cfg = dataclasses.replace(cfg, patch_size=tuple(args.patch_size))
    torch.manual_seed(0)
    model = build_network(cfg.architecture, len(cfg.normalization), len(plans.labels))
    batch = (args.batch_size or cfg.batch_size, len(cfg.normalization), *cfg.patch_size)
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=cfg.batch_dice))

    if args.onednn_child:  # one step of each setting, printed by oneDNN itself
        for precision in args.precisions:
            for layout in args.layouts:
                net, x, targets = setup(model, batch, precision, layout == "channels_last")
                step = make_step(net, loss, x, targets, precision)
                step()
                print(f"### {precision} {layout}", flush=True)
                step()
        return

    print(f"{args.configuration}: {cfg.architecture.network} {cfg.architecture.features_per_stage}, input {batch}, "
          f"{args.threads} threads, torch {torch.__version__}, CPU bf16 native: "
          f"{torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()}", flush=True)
    for precision in args.precisions:
        for layout in args.layouts:
            cl = layout == "channels_last"
            net, x, targets = setup(model, batch, precision, cl)
            step = make_step(net, loss, x, targets, precision)
            wall = wall_per_step(step, args.steps)
            phase_wall, fam_self, op_self = profile_steps(step, args.steps)
            net_nods, x_nods, t_nods = setup(model, batch, precision, cl, deep_supervision=False)
            no_ds = wall_per_step(make_step(net_nods, loss, x_nods, t_nods, precision), args.steps)
            print(f"\n== {precision}, {layout}: {wall:.3f} s/step (fastest of {args.steps}); without deep "
                  f"supervision {no_ds:.3f} s ({(wall - no_ds) / wall:+.1%} of the step is the auxiliary heads "
                  f"and their loss terms)", flush=True)
            total = sum(phase_wall.values())
            print("  phase       ms/step  share")
            for p in PHASES:
                print(f"  {p:10s} {phase_wall[p] / args.steps / 1e3:8.1f}  {phase_wall[p] / total:5.1%}")
            fams = sorted({f for _, f in fam_self}, key=lambda f: -sum(fam_self[(p, f)] for p in PHASES))
            print(f"  {'op family (self time)':38s}" + "".join(f"{p:>11s}" for p in PHASES) + "      total")
            grand = sum(fam_self.values())
            for f in fams:
                row = [fam_self[(p, f)] / args.steps / 1e3 for p in PHASES]
                print(f"  {f:38s}" + "".join(f"{v:11.1f}" for v in row) + f" {sum(row):8.1f} ms "
                      f"{sum(fam_self[(p, f)] for p in PHASES) / grand:5.1%}")
            print(f"  most expensive ops (self ms/step):")
            for (p, name), us in op_self.most_common(args.top):
                print(f"    {us / args.steps / 1e3:8.1f}  {p:9s} {name}")
    if args.onednn:
        child = [str(args.plans), args.configuration, "--threads", str(args.threads), "--precisions",
                 *args.precisions, "--layouts", *args.layouts]
        if args.batch_size:
            child += ["--batch-size", str(args.batch_size)]
        if args.patch_size:
            child += ["--patch-size", *map(str, args.patch_size)]
        print("\noneDNN's account (one step of each setting, after a warm-up step):")
        print(onednn_summary(child))


if __name__ == "__main__":
    main()
