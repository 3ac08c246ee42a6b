"""Choice of device, precision and memory format for the machine at hand."""

from __future__ import annotations

import torch

from autoseg.errors import AutosegError, option


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU. Otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AutosegError(f"{option('device')} {name}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AutosegError(f"{option('device')} {name}: CUDA is not available on this machine "
                           f"(torch {torch.__version__})")
    return device


def cpu_has_fast_bf16() -> bool:
    """The CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast about doubles conv speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """``(major, minor)`` compute capability of a CUDA device (8.0: A100, 9.0: H100/H200)."""
    return torch.cuda.get_device_capability(device)


#: Compute capability from which NVIDIA GPUs have bf16 units (Ampere). ``torch.cuda.is_bf16_supported()`` says yes
#: on older GPUs too, where bf16 is emulated through fp32 arithmetic: slower than fp16 there.
CUDA_BF16_CAPABILITY = (8, 0)


def resolve_precision(precision: str, device: torch.device, *, capability: tuple[int, int] | None = None,
                      cpu_bf16: bool | None = None) -> str:
    """The arithmetic a run uses on ``device``: ``fp32``, ``bf16`` or ``fp16``.

    ``"auto"``: bf16 only where the device has bf16 units (CUDA compute capability >= 8.0; a CPU with
    AVX512-BF16 or AMX), fp16 with a GradScaler on older CUDA GPUs (the trainer's scaler is enabled for fp16),
    fp32 elsewhere (other CPUs and device types). An explicit choice is kept; fp16 is refused off CUDA.

    Parameters
    ----------
    precision
        ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    device
        Where the run computes.
    capability, cpu_bf16
        The hardware facts (a CUDA device's compute capability; the CPU has bf16 units), for tests that force
        them; ``None``: asked of the machine (:func:`cuda_capability`, :func:`cpu_has_fast_bf16`).

    Raises
    ------
    AutosegError
        An unknown precision, or fp16 off CUDA.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise AutosegError(f"{option('precision')} {precision}: expected auto, fp32, bf16 or fp16")
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise AutosegError(f"{option('precision')} fp16: only on CUDA; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        capability = cuda_capability(device) if capability is None else capability
        return "bf16" if tuple(capability) >= CUDA_BF16_CAPABILITY else "fp16"
    if device.type == "cpu":
        return "bf16" if (cpu_has_fast_bf16() if cpu_bf16 is None else cpu_bf16) else "fp32"
    return "fp32"


def resolve_channels_last(channels_last: bool | None, device: torch.device, precision: str) -> bool:
    """``None``: channels-last with mixed precision (on this project's CPU measurements it adds ~15% to bf16's
    2.2x for 2D and 3D U-Nets, and nothing in fp32), and on CUDA (tensor-core kernels want it)."""
    if channels_last is not None:
        return channels_last
    return device.type == "cuda" or precision in ("bf16", "fp16")
