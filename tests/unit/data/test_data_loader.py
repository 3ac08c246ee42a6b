"""BatchLoader: shapes, foreground fraction, determinism across worker counts, failures, shutdown."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest
from _data_cases import ArraySource, make_source

from autoseg.data.augmentation import TrainingAugmentation, training_params
from autoseg.data.loader import BatchLoader, LoaderConfig, LoaderTimeoutError, LoaderWorkerError
from autoseg.preprocessing.case import class_locations

STRIDES_3D = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
STRIDES_2D = [[1, 1], [2, 2], [2, 2]]


def _loader(patch, strides, workers=0, seed=0, batch=4, num_batches=4, source=None, **kw):
    params = training_params(patch, strides)
    cfg = LoaderConfig(patch, batch, sample_patch_size=params.pre_patch_size, num_workers=workers, seed=seed,
                       num_batches=num_batches, **kw)
    return BatchLoader(source or make_source(), cfg, TrainingAugmentation(params))


def _same(a: dict, b: dict) -> bool:
    return (a["keys"] == b["keys"] and a["data"].tobytes() == b["data"].tobytes()
            and all(x.tobytes() == y.tobytes() for x, y in zip(a["target"], b["target"])))


def _gone(pid: int) -> bool:
    """The process has exited and been reaped (a zombie would still be listed in /proc)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("workers", [0, 2])  # 2: the arrays travel through shared memory and come back as numpy
@pytest.mark.parametrize("patch,strides", [((16, 20, 16), STRIDES_3D), ((24, 20), STRIDES_2D)])
def test_shapes_and_dtypes(patch, strides, workers):
    with _loader(patch, strides, workers=workers, batch=5, num_batches=3) as loader:
        batches = list(loader)
    assert len(batches) == 3 and [b["index"] for b in batches] == [0, 1, 2]
    for b in batches:
        assert b["data"].shape == (5, 1, *patch) and b["data"].dtype == np.float32
        assert [t.shape[2:] for t in b["target"]] == [patch, tuple(p // 2 for p in patch)]
        assert all(t.dtype == np.int8 and t.shape[:2] == (5, 1) for t in b["target"])
        assert len(b["keys"]) == 5


def test_no_transforms_gives_plain_patches():
    cfg = LoaderConfig((8, 8, 8), 3, num_workers=0, num_batches=2)
    batches = list(BatchLoader(make_source(), cfg))
    assert batches[0]["data"].shape == (3, 1, 8, 8, 8) and len(batches[0]["target"]) == 1
    assert batches[0]["target"][0].min() >= 0


def test_foreground_fraction_when_forced():
    """Tiny foreground (one 2^3 blob in 30x36x34): random patches rarely see it; forced ones always do."""
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(4):
        seg = np.zeros((1, 30, 36, 34), np.int8)
        z, y, x = rng.integers(0, 28), rng.integers(0, 34), rng.integers(0, 32)
        seg[0, z:z + 2, y:y + 2, x:x + 2] = 1
        cases[f"c{i}"] = (rng.normal(size=(1, 30, 36, 34)).astype(np.float32), seg,
                          class_locations(seg[0], 2, np.random.default_rng(0)))
    src = ArraySource(cases)
    for batch, forced in ((3, 1), (6, 2), (2, 1)):
        cfg = LoaderConfig((12, 12, 12), batch, num_workers=0, num_batches=60, seed=batch)
        has_fg = np.array([[t.any() for t in b["target"][0]] for b in BatchLoader(src, cfg)])
        assert has_fg[:, batch - forced:].all()  # the last samples of every batch
        assert has_fg.mean() >= forced / batch >= 0.33
        assert has_fg[:, :batch - forced].mean() < 0.5  # the others are random
    # with augmentation (rotation/scaling may shift a forced blob a little) the fraction still holds
    params = training_params((12, 12, 12), STRIDES_3D)
    cfg = LoaderConfig((12, 12, 12), 3, sample_patch_size=params.pre_patch_size, num_workers=0, num_batches=60)
    has_fg = np.array([[t.any() for t in b["target"][0]]
                       for b in BatchLoader(src, cfg, TrainingAugmentation(params))])
    assert has_fg.mean() >= 0.33 and has_fg[:, -1].mean() > 0.9


def test_deterministic_across_worker_counts_and_seeds():
    runs = {}
    for workers in (0, 1, 2):
        with _loader((16, 20, 16), STRIDES_3D, workers=workers, seed=11, num_batches=5) as loader:
            runs[workers] = list(loader)
    for workers in (1, 2):
        assert all(_same(a, b) for a, b in zip(runs[0], runs[workers], strict=True))
    other = list(_loader((16, 20, 16), STRIDES_3D, seed=12, num_batches=5))
    assert not any(_same(a, b) for a, b in zip(runs[0], other))
    # distinct batches within a run
    assert not _same(runs[0][0], runs[0][1])


def test_non_deterministic_mode_delivers_every_batch_reproducibly():
    ref = {b["index"]: b for b in _loader((16, 20, 16), STRIDES_3D, seed=5, num_batches=6)}
    with _loader((16, 20, 16), STRIDES_3D, workers=2, seed=5, num_batches=6, deterministic=False) as loader:
        got = list(loader)
    assert sorted(b["index"] for b in got) == list(range(6))
    assert all(_same(b, ref[b["index"]]) for b in got)


def test_in_process_loading_leaves_global_rng_alone():
    np.random.seed(1)
    random.seed(2)
    np_before, py_before = np.random.get_state(), random.getstate()
    list(_loader((16, 20, 16), STRIDES_3D, num_batches=3))
    list(_loader((24, 20), STRIDES_2D, num_batches=2))
    np_after = np.random.get_state()
    assert np.array_equal(np_before[1], np_after[1]) and np_before[2:] == np_after[2:]
    assert random.getstate() == py_before


def test_worker_loading_leaves_torch_rng_alone():
    import torch

    before = torch.get_rng_state()
    with _loader((16, 20, 16), STRIDES_3D, workers=1, num_batches=2) as loader:
        list(loader)
    assert torch.equal(torch.get_rng_state(), before)


class _Failing(ArraySource):
    """Raises on one case."""

    def load(self, case_id):
        if case_id == "case_03":
            raise ValueError("corrupt array in case_03.npy")
        return super().load(case_id)


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_error_is_reported_with_case_and_batch(workers):
    base = make_source()
    src = _Failing({k: base.load(k) for k in base.case_ids()})
    loader = _loader((16, 20, 16), STRIDES_3D, workers=workers, num_batches=None, source=src)
    t0 = time.monotonic()
    with pytest.raises(LoaderWorkerError, match=r"batch \d+, case 'case_03': ValueError: corrupt array") as err:
        with loader:
            for _ in range(200):
                next(loader)
    assert time.monotonic() - t0 < 30
    assert err.value.case_id == "case_03" and err.value.batch_index is not None
    assert all(_gone(pid) for pid in loader.worker_pids)


def test_killed_worker_is_detected():
    loader = _loader((16, 20, 16), STRIDES_3D, workers=2, num_batches=None, prefetch=1)
    with loader:
        next(loader)
        victim = loader.worker_pids[1]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(LoaderWorkerError, match="worker 1 .*killed by signal SIGKILL"):
            for _ in range(100):
                next(loader)
        assert time.monotonic() - t0 < 10
    assert all(_gone(pid) for pid in loader.worker_pids)


class _Slow(ArraySource):
    def load(self, case_id):
        time.sleep(30)


def test_hanging_worker_times_out():
    loader = BatchLoader(_Slow({"a": None}), LoaderConfig((8, 8, 8), 2, num_workers=1, timeout=1.0))
    t0 = time.monotonic()
    with pytest.raises(LoaderTimeoutError, match="no batch 0"):
        next(loader)
    assert time.monotonic() - t0 < 8
    assert all(_gone(pid) for pid in loader.worker_pids)


def test_early_stop_close_and_garbage_collection_leave_no_processes():
    loader = _loader((16, 20, 16), STRIDES_3D, workers=2, num_batches=None)
    with loader:
        next(loader)
        pids = loader.worker_pids
    assert len(pids) == 2 and all(_gone(p) for p in pids)
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)

    loader = _loader((16, 20, 16), STRIDES_3D, workers=2, num_batches=None)
    next(loader)
    pids = loader.worker_pids
    del loader  # never closed explicitly
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)


def test_spawn_start_method():
    with _loader((16, 20, 16), STRIDES_3D, workers=1, num_batches=2, start_method="spawn", seed=4) as loader:
        spawned = list(loader)
    ref = list(_loader((16, 20, 16), STRIDES_3D, num_batches=2, seed=4))
    assert all(_same(a, b) for a, b in zip(spawned, ref, strict=True))


def test_store_source_and_plan_loaders():
    from autoseg.data.loader import StoreSource, training_loader, validation_loader
    from autoseg.schema.plans import ArchitecturePlan, ChannelNormalization, ConfigurationPlan

    base = make_source()

    class FakeStore:  # the CaseStore interface: 4-tuple, locations keyed by int or str
        def case_ids(self):
            return base.case_ids()

        def load(self, case_id, mmap=True):
            data, seg, locs = base.load(case_id)
            return data, seg, {str(k): v for k, v in locs.items()}, {"case_id": case_id}

    arch = ArchitecturePlan("plain_unet", (8, 16, 32), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)),
                            (2, 2, 2), (2, 2))
    plan = ConfigurationPlan("3d_fullres", (1.0, 1.0, 1.0), (16, 20, 16), 3, (20, 24, 22),
                             (ChannelNormalization("zscore", use_nonzero_mask=True),), arch, 0, 0.1, False)
    src = StoreSource(FakeStore())
    assert sorted(src.load("case_00")[2]) == [1, 2]
    for make in (training_loader, validation_loader):
        with make(src, plan, num_workers=0, num_batches=2, case_ids=["case_01", "case_02"]) as loader:
            b = next(loader)
        assert b["data"].shape == (3, 1, 16, 20, 16) and [t.shape[2:] for t in b["target"]] == [(16, 20, 16),
                                                                                               (8, 10, 8)]
        assert set(b["keys"]) <= {"case_01", "case_02"}


@pytest.mark.parametrize("workers", [0, 2])
def test_first_batch_continues_the_stream(workers):
    """A resumed run asks for the stream from batch k on and gets exactly batches k, k+1, ..."""
    full = list(_loader((16, 20, 16), STRIDES_3D, workers=0, seed=5, num_batches=5))
    with _loader((16, 20, 16), STRIDES_3D, workers=workers, seed=5, num_batches=3, first_batch=2) as loader:
        tail = list(loader)
    assert [b["index"] for b in tail] == [2, 3, 4]
    assert all(_same(a, b) for a, b in zip(tail, full[2:]))
