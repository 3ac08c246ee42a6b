"""What the machine can do, measured: matmul peak per precision, CPU flags, the FLOPs of a training step."""

from __future__ import annotations

import time

import torch

#: the flags that decide which kernels oneDNN picks for fp32 and bf16
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """CPU model and the vector flags that matter for convolutions (from /proc/cpuinfo; '' elsewhere)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return f"{model}; flags: {' '.join(f for f in _FLAGS if f in flags) or 'none of ' + ' '.join(_FLAGS)}"


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a ``size``^3 matmul at torch's current thread count, fp32 and bf16 (the fastest of ``repeats``).

    bf16 on a CPU without bf16 units (emulated, ~1 GFLOP/s) is measured at 256^3 only: a 2048^3 matmul would
    take a minute per repeat and say nothing more.
    """
    from autoseg.nn.device import cpu_has_fast_bf16

    fp32 = _matmul_gflops(size, torch.float32, repeats)
    bf16 = _matmul_gflops(size if cpu_has_fast_bf16() else 256, torch.bfloat16, repeats)
    return {"fp32": fp32, "bf16": bf16}


def _matmul_gflops(size: int, dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def training_flops(model: torch.nn.Module, batch_shape) -> float:
    """Forward + backward FLOPs of ``model`` for one batch of ``batch_shape`` ``(B, C, *spatial)`` (torch's FLOP
    counter: convolutions and matmuls, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(tuple(batch_shape))
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().sum() for o in outs).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
