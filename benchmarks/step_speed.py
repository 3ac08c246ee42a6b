"""Seconds, GFLOP/s and share of the measured matmul peak of one training step, per precision and variant, beside
nnU-Net v2's own step on the same network in the same run.

    python benchmarks/step_speed.py plans/examples/hippocampus.plans.json 3d_fullres --rounds 3 --nnunet

Variants (``--variants``), each changing one thing against ``default`` (what ``autoseg train`` does on this machine
for that precision: channels-last with bf16, contiguous with fp32):

- ``contiguous`` / ``channels_last``: the memory layout forced either way;
- ``instance_norm``: the norm computed by torch's ``InstanceNorm`` instead of ``GroupNorm(C, C)`` (the same
  function and parameters; autoseg's layers use the group norm since 2026-12-03: its CPU kernels keep the
  channels-last layout);
- ``compile``: ``torch.compile`` (inductor) of the network; the first step's time (the compilation) is reported;
- ``fused_sgd``: SGD with ``foreach`` kernels (one pass over all parameters instead of one per tensor);
- combinations joined by ``+``, e.g. ``compile+channels_last``.

Precisions: ``fp32`` always; ``bf16`` (autocast, loss in fp32) only where the CPU has native bf16 units, unless
``--precisions`` names it (emulated bf16 runs 100x slower and says nothing). ``--nnunet`` runs nnU-Net's step in
its own venv (``benchmarks/_nnunet.py``): its ``PlainConvUNet`` built from the same plan, its
``DC_and_CE_loss`` under its deep-supervision wrapper, its SGD and gradient clipping, fp32 contiguous (nnU-Net's
only CPU mode), one child process per round, alternating with autoseg's settings.

Every setting is measured in alternation, ``--rounds`` times, and its fastest round is reported: on a shared
machine other work only ever adds time. FLOPs are torch's count of the network's forward + backward (convolutions,
2 per multiply-add), the same for every setting, so GFLOP/s compare work done per second. ``--loss-steps N`` also
compares the loss of N SGD steps from the same weights across settings (numerics).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _hardware import cpu_description, matmul_peak_gflops, training_flops  # noqa: E402

from autoseg.nn import build_network  # noqa: E402
from autoseg.nn.blocks import with_instance_norms  # noqa: E402
from autoseg.nn.device import cpu_has_fast_bf16, resolve_channels_last  # noqa: E402
from autoseg.nn.speed import autocast_context, prepare_for_device, to_memory_format  # noqa: E402
from autoseg.schema.base import load_json  # noqa: E402
from autoseg.schema.plans import Plans  # noqa: E402
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss, downsample_targets  # noqa: E402

VARIANTS = ("default", "contiguous", "channels_last", "instance_norm", "compile", "fused_sgd")


def variant(text: str) -> str:
    """``--variants`` entry: one of :data:`VARIANTS` or several joined by ``+``."""
    if not text or any(part not in VARIANTS for part in text.split("+")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {', '.join(VARIANTS)} or a '+' combination")
    return text


@dataclasses.dataclass
class Setting:
    precision: str
    variant: str

    @property
    def name(self) -> str:
        return f"{self.precision} {self.variant}"

    def has(self, part: str) -> bool:
        return part in self.variant.split("+")

    def channels_last(self) -> bool:
        if self.has("contiguous") or self.has("channels_last"):
            return self.has("channels_last")
        return resolve_channels_last(None, torch.device("cpu"), self.precision)


class Step:
    """One setting's network, batch, loss and optimizer; ``__call__`` runs one training step and returns its
    loss."""

    def __init__(self, model: nn.Module, loss: nn.Module, batch_shape, setting: Setting, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        cl = setting.channels_last()
        net = copy.deepcopy(model)
        if setting.has("instance_norm"):
            net = with_instance_norms(net)
        self.net = prepare_for_device(net, "cpu", cl).train()
        self.x = to_memory_format(torch.randn(tuple(batch_shape), generator=gen), cl)
        with torch.no_grad():
            outs = self.net(self.x)
        # a learnable target (the class follows the input intensity), so the loss of --loss-steps falls
        full = torch.where(self.x > 0.5, 1, torch.where(self.x < -0.5, 2, 0)).long().contiguous()
        full = full[:, :1] % outs[0].shape[1]
        self.targets = downsample_targets(full, [tuple(o / f for o, f in zip(out.shape[2:], full.shape[2:]))
                                                 for out in outs])
        self.forward = torch.compile(self.net) if setting.has("compile") else self.net
        self.loss, self.precision = loss, setting.precision
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5,
                                   foreach=setting.has("fused_sgd"))

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with autocast_context("cpu", self.precision):
            value = self.loss(self.forward(self.x), self.targets)
        value.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 12.0)
        self.opt.step()
        return float(value.detach())


def time_steps(step: Step, iterations: int) -> float:
    best = float("inf")
    for _ in range(iterations):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


NNUNET_CHILD = r"""
import json, sys, time
import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
dims = len(a["patch"])
conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dims == 3 else (nn.Conv2d, nn.InstanceNorm2d)
torch.manual_seed(0)
net = PlainConvUNet(a["in_channels"], len(a["features"]), a["features"], conv, a["kernels"], a["strides"],
                    a["blocks_enc"], a["classes"], a["blocks_dec"], conv_bias=True, norm_op=norm,
                    norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                    nonlin_kwargs={"inplace": True}, deep_supervision=True)
loss = DC_and_CE_loss({"batch_dice": a["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                      weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
n_out = len(a["features"]) - 1
w = [1 / 2 ** i for i in range(n_out)]
w[-1] = 0
w = [v / sum(w) for v in w]
loss = DeepSupervisionWrapper(loss, w)
x = torch.randn(a["batch"], a["in_channels"], *a["patch"])
with torch.no_grad():
    outs = net(x)
targets = [torch.randint(0, a["classes"], (a["batch"], 1, *o.shape[2:])).float() for o in outs]
opt = torch.optim.SGD(net.parameters(), 0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)
times = []
for i in range(a["iterations"] + 1):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    l = loss(net(x), targets)
    l.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    opt.step()
    times.append(time.perf_counter() - t0)
print("NNUNET_TIMES " + json.dumps(times[1:]))
"""


def nnunet_step(python: Path, spec: dict) -> float:
    res = subprocess.run([str(python), "-c", NNUNET_CHILD, json.dumps(spec)], capture_output=True, text=True)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("NNUNET_TIMES ")), None)
    if res.returncode or line is None:
        raise RuntimeError(f"nnU-Net's step failed: {(res.stderr or res.stdout).strip().splitlines()[-3:]}")
    return min(json.loads(line.split(" ", 1)[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", type=Path)
    ap.add_argument("configuration")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=2, help="timed steps per setting and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", help="default: fp32, and bf16 where the CPU has it natively")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), type=variant)
    ap.add_argument("--nnunet", action="store_true", help="also time nnU-Net v2's step (its venv)")
    ap.add_argument("--loss-steps", type=int, default=0, help="also compare the loss of this many SGD steps")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plans = load_json(Plans, args.plans)
    cfg = plans.configurations[args.configuration]
    arch = cfg.architecture
    torch.manual_seed(0)
    model = build_network(arch, len(cfg.normalization), len(plans.labels))
    batch = (args.batch_size or cfg.batch_size, len(cfg.normalization), *cfg.patch_size)
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=cfg.batch_dice))
    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"])
    settings = [Setting(p, v) for p in precisions for v in args.variants]

    peak = matmul_peak_gflops()
    flops = training_flops(copy.deepcopy(model), batch)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads; native bf16: "
          f"{cpu_has_fast_bf16()}", flush=True)
    print(f"measured 2048^3 matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s", flush=True)
    print(f"{args.configuration}: {arch.network} {arch.features_per_stage}, input {batch}, "
          f"{flops / 1e9:.0f} GFLOP per step (forward + backward)", flush=True)

    python = None
    spec = dict(threads=args.threads, in_channels=batch[1], features=list(arch.features_per_stage),
                kernels=[list(k) for k in arch.kernel_sizes], strides=[list(s) for s in arch.strides],
                blocks_enc=list(arch.blocks_per_stage_encoder), blocks_dec=list(arch.blocks_per_stage_decoder),
                classes=len(plans.labels), batch=batch[0], patch=list(cfg.patch_size), batch_dice=cfg.batch_dice,
                iterations=args.iterations)
    if args.nnunet:
        import _nnunet

        python = _nnunet.ensure_nnunet_venv()
        if arch.network != "plain_unet":
            raise SystemExit("--nnunet compares the plain U-Net only")

    steps = {}
    compile_seconds = {}
    for s in settings:  # built once (the compiled ones compile here), timed in alternation below
        steps[s.name] = Step(model, loss, batch, s)
        t0 = time.perf_counter()
        steps[s.name]()
        if s.has("compile"):
            compile_seconds[s.name] = time.perf_counter() - t0
    best = {s.name: float("inf") for s in settings}
    if python is not None:
        best["nnU-Net v2 fp32"] = float("inf")
    for r in range(args.rounds):
        for s in settings:
            t = time_steps(steps[s.name], args.iterations)
            best[s.name] = min(best[s.name], t)
            print(f"round {r} {s.name:22s} {t:.3f} s", flush=True)
        if python is not None:
            t = nnunet_step(python, spec)
            best["nnU-Net v2 fp32"] = min(best["nnU-Net v2 fp32"], t)
            print(f"round {r} {'nnU-Net v2 fp32':22s} {t:.3f} s", flush=True)

    base = {p: best[f"{p} default"] for p in precisions if f"{p} default" in best}
    print(f"\n{'setting':24s} {'s/step':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'vs default':>10s}")
    for name, t in best.items():
        precision = name.split()[0] if not name.startswith("nnU-Net") else "fp32"
        gflops = flops / t / 1e9
        ref = base.get(precision)
        print(f"{name:24s} {t:8.3f} {gflops:8.0f} {gflops / peak[precision]:8.1%} "
              f"{(ref / t if ref else float('nan')):9.2f}x")
    for name, seconds in compile_seconds.items():
        print(f"{name}: first step (compilation included, inductor's cache as found) {seconds:.0f} s")
    if python is not None and "fp32 default" in best:
        print(f"autoseg fp32 default vs nnU-Net v2: {best['nnU-Net v2 fp32'] / best['fp32 default']:.2f}x")

    losses = {}
    if args.loss_steps:
        for s in settings:
            step = Step(model, loss, batch, s, seed=1)
            losses[s.name] = [step() for _ in range(args.loss_steps)]
            print(f"loss {s.name:22s}: " + " ".join(f"{v:.4f}" for v in losses[s.name]), flush=True)
        final = [v[-1] for v in losses.values()]
        print(f"final loss spread over settings: {max(final) - min(final):.4f} "
              f"(median {statistics.median(final):.4f})")
    if args.json:
        args.json.write_text(json.dumps(dict(cpu=cpu_description(), peak_gflops=peak, gflop_per_step=flops / 1e9,
                                              seconds=best, compile_seconds=compile_seconds, losses=losses),
                                         indent=1))


if __name__ == "__main__":
    main()
