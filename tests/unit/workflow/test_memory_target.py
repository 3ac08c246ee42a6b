"""The default memory target of a plan: nnU-Net's 8 GB on any GPU (less on a smaller one), not the whole device."""

import pytest

import autoseg.workflow.plan as P
from autoseg.errors import AutosegError
from autoseg.planning.presets import load_preset


@pytest.mark.parametrize("preset, device_gb, given, expected", [
    ("default", 139.8, None, 8.0),   # an H200: still nnU-Net's 8 GB (it was 139.8)
    ("default", 79.3, None, 8.0),
    ("default", 6.0, None, 6.0),     # a smaller GPU: its memory
    ("default", None, None, 8.0),    # no GPU
    ("default", 139.8, 40.0, 40.0),  # more when asked for (--gpu-memory)
    ("resenc-l", 139.8, None, 24.0),  # a preset's own target
    ("resenc-l", None, 12.0, 12.0),
])
def test_memory_target(monkeypatch, preset, device_gb, given, expected):
    monkeypatch.setattr(P, "cuda_memory_gb", lambda: device_gb)
    assert P.memory_target(load_preset(preset), given) == expected


def test_non_positive_target_is_refused():
    with pytest.raises(AutosegError, match="positive"):
        P.memory_target(load_preset("default"), 0.0)
