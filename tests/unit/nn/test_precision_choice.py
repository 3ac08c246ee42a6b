"""The arithmetic ``--precision`` chooses on each kind of device, from the hardware facts (forced here)."""

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.nn import device as D
from autoseg.nn.device import resolve_precision

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda:0"), torch.device("meta")


@pytest.mark.parametrize("precision, device, capability, cpu_bf16, expected", [
    ("auto", CUDA, (9, 0), None, "bf16"),   # H100 / H200
    ("auto", CUDA, (8, 0), None, "bf16"),   # A100: the first with bf16 units
    ("auto", CUDA, (8, 6), None, "bf16"),   # RTX 30xx, A40
    ("auto", CUDA, (7, 5), None, "fp16"),   # T4, RTX 20xx: bf16 only emulated (is_bf16_supported() says yes)
    ("auto", CUDA, (7, 0), None, "fp16"),   # V100
    ("auto", CUDA, (6, 1), None, "fp16"),
    ("auto", CPU, None, True, "bf16"),      # AVX512-BF16 / AMX
    ("auto", CPU, None, False, "fp32"),
    ("auto", META, None, True, "fp32"),     # another device type: no mixed precision assumed
    ("bf16", CUDA, (7, 5), None, "bf16"),   # an explicit choice is kept
    ("fp16", CUDA, (9, 0), None, "fp16"),
    ("fp32", CUDA, (9, 0), None, "fp32"),
    ("bf16", CPU, None, False, "bf16"),
    ("fp32", CPU, None, True, "fp32"),
])
def test_precision_from_the_hardware(precision, device, capability, cpu_bf16, expected):
    assert resolve_precision(precision, device, capability=capability, cpu_bf16=cpu_bf16) == expected


@pytest.mark.parametrize("precision, device", [("fp16", CPU), ("fp16", META), ("fp8", CPU), ("half", CUDA)])
def test_refused_precisions(precision, device):
    with pytest.raises(AutosegError, match=f"precision {precision}"):
        resolve_precision(precision, device, capability=(9, 0), cpu_bf16=True)


def test_the_machine_is_asked_through_the_two_facts(monkeypatch):
    """Without forced facts, the CPU's comes from ``cpu_has_fast_bf16`` and a GPU's from ``cuda_capability``
    (the names a test patches to run a whole suite on another path)."""
    monkeypatch.setattr(D, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(D, "cuda_capability", lambda device: (7, 5))
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("auto", CUDA) == "fp16"
    monkeypatch.setattr(D, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(D, "cuda_capability", lambda device: (9, 0))
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "bf16"


def test_emulated_bf16_is_not_chosen(monkeypatch):
    """A T4 (7.5): torch says bf16 is supported (emulated), but auto picks fp16 with loss scaling there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_precision("auto", CUDA) == "fp16"
