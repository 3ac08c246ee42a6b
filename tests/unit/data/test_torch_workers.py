"""The one adapter over torch's private DataLoader parts: checked against this torch, clear on another."""

import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from autoseg.data.torch_workers import CHECKED_TORCH, WorkerPool, check_torch, torch_minor


def test_this_torch_is_one_the_adapter_was_checked_against():
    # fails, with what to do, on a torch nobody has checked the private parts of yet
    problem = check_torch()
    assert problem is None, problem


@pytest.mark.parametrize("version, minor", [("2.13.0", "2.13"), ("2.13.0+cpu", "2.13"), ("3.0.1+cu130", "3.0")])
def test_torch_minor(version, minor):
    assert torch_minor(version) == minor


def test_an_unchecked_torch_is_named_with_what_to_do():
    message = check_torch("9.1.0")
    assert message.startswith("torch 9.1.0: autoseg's data loader reads private parts of torch's DataLoader")
    assert "torch_workers.py" in message and ", ".join(CHECKED_TORCH) in message


def test_an_iterator_without_the_parts_fails_in_one_clear_line():
    with pytest.raises(RuntimeError, match=r"DataLoader iterator has no _workers, _task_info"):
        WorkerPool(iter(DataLoader(list(range(3)), batch_size=None)))  # single-process: none of them


class _Slow(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        time.sleep(3 if i >= 2 else 0)
        return torch.tensor(i)


def test_the_pool_sees_the_workers_what_they_owe_and_stops_them():
    it = iter(DataLoader(_Slow(), batch_size=None, num_workers=2, timeout=60))
    pool = WorkerPool(it)
    try:
        procs = pool.processes
        assert len(procs) == 2 and all(p.is_alive() for p in procs)
        pool.release_sigchld()
        assert next(it).item() == 0 and next(it).item() == 1
        owed = pool.owed_by(0) + pool.owed_by(1)
        assert 2 in owed and 3 in owed  # the slow batches, sent and not received
        os.kill(procs[0].pid, signal.SIGKILL)  # no SIGCHLD error here: the handler was released
        procs[0].join(10)
        assert not procs[0].is_alive() and procs[1].is_alive()
    finally:
        pool.shutdown()
        pool.shutdown()  # idempotent
    assert not any(p.is_alive() for p in procs)
