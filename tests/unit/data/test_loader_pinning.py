"""Pinned loader batches (training on CUDA): the workers' arrays arrive as CPU tensors viewing the pinned block."""

import numpy as np
import pytest
import torch
from _data_cases import make_source

import autoseg.data.loader as L
from autoseg.data.loader import BatchLoader, LoaderConfig


def _batch():
    return {"data": np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4),
            "target": [np.arange(12, dtype=np.int8).reshape(1, 1, 3, 4) - 1,
                       np.ones((1, 1, 1, 2), dtype=np.int8)],
            "mask": np.array([[True, False]]), "keys": ["case_00"], "index": 7}


def test_a_pinned_block_unpacks_to_tensors_of_that_block(monkeypatch):
    batch = _batch()
    packed = L._pack(batch)
    assert isinstance(L._unpack(packed)["data"], np.ndarray)  # not pinned (a CPU-only machine): numpy views
    # what the DataLoader's pinning thread hands over on a CUDA machine: the same block, in page-locked memory
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *args: True)
    out = L._unpack(packed)
    base = packed.block.untyped_storage().data_ptr()
    for got, want in [(out["data"], batch["data"]), (out["mask"], batch["mask"]),
                      *zip(out["target"], batch["target"])]:
        assert isinstance(got, torch.Tensor) and got.untyped_storage().data_ptr() == base  # views, no copy
        assert got.dtype == torch.from_numpy(want).dtype and np.array_equal(got.numpy(), want)
    assert out["keys"] == ["case_00"] and out["index"] == 7


@pytest.mark.filterwarnings("ignore:.pin_memory. argument is set as true")
def test_pin_memory_reaches_the_dataloader(monkeypatch):
    seen = {}
    real = L.DataLoader

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "DataLoader", recording)
    cfg = LoaderConfig((8, 8, 8), 2, num_workers=1, num_batches=1, pin_memory=True)
    with BatchLoader(make_source(n=2), cfg) as loader:
        batch = next(loader)
    assert seen["pin_memory"] is True
    # no CUDA here: torch pins nothing and the arrays stay numpy
    assert batch["data"].shape == (2, 1, 8, 8, 8)
