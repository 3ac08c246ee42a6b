"""The private parts of torch's multi-process DataLoader iterator that :class:`autoseg.data.loader.BatchLoader`
needs, in one place.

torch's DataLoader tells a caller neither which worker died nor which batches that worker still owed, and gives no
public way to stop its workers from a finaliser or to opt out of its SIGCHLD handler (which raises in whatever
code runs when a worker dies). Its multi-process iterator keeps all of that in private attributes; they are read
here and nowhere else. :func:`check_torch` says which torch versions this was checked against, and
:class:`WorkerPool` fails with one clear line on an iterator that lacks what it reads, instead of an
``AttributeError`` deep in a training run.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import torch
from torch.utils.data._utils import signal_handling

#: torch versions (major.minor) whose ``_MultiProcessingDataLoaderIter`` holds what :class:`WorkerPool` reads.
CHECKED_TORCH = ("2.11", "2.12", "2.13")
#: What is read of the iterator.
_ATTRIBUTES = ("_workers", "_task_info", "_shutdown_workers", "_worker_pids_set")


def torch_minor(version: str = torch.__version__) -> str:
    """``"2.13"`` of ``"2.13.0+cpu"``."""
    return ".".join(version.split("+")[0].split(".")[:2])


def check_torch(version: str = torch.__version__) -> str | None:
    """``None`` when ``version`` is one :class:`WorkerPool` was checked against, else what to do about it."""
    if torch_minor(version) in CHECKED_TORCH:
        return None
    return (f"torch {version}: autoseg's data loader reads private parts of torch's DataLoader "
            f"(autoseg/data/torch_workers.py), checked against torch {', '.join(CHECKED_TORCH)}; run "
            f"tests/unit/data/test_torch_workers.py on this torch and add it to CHECKED_TORCH")


class WorkerPool:
    """The workers of one multi-process DataLoader iterator.

    Parameters
    ----------
    iterator
        ``iter(DataLoader(..., num_workers > 0))``.

    Raises
    ------
    RuntimeError
        The iterator lacks an attribute read here (a torch this was not checked against).
    """

    def __init__(self, iterator: Any):
        missing = [a for a in _ATTRIBUTES if not hasattr(iterator, a)]
        if missing:
            raise RuntimeError(f"torch {torch.__version__}'s DataLoader iterator has no {', '.join(missing)}: "
                               + (check_torch() or "autoseg/data/torch_workers.py needs updating for it"))
        self._it = iterator

    @property
    def processes(self) -> list[multiprocessing.Process]:
        """The worker processes, by worker index."""
        return list(self._it._workers)

    def owed_by(self, worker: int) -> list[int]:
        """Indices (counted from the iterator's start) of the batches sent to ``worker`` and not yet received."""
        return sorted(t for t, info in self._it._task_info.items() if info == (worker,))

    def shutdown(self) -> None:
        """Stop and join the workers, terminating those that do not exit in time. Idempotent."""
        self._it._shutdown_workers()

    def release_sigchld(self) -> None:
        """Take the workers out of torch's SIGCHLD handler: a dying worker then raises nothing in arbitrary code
        (the loader notices deaths itself, in ``next()``)."""
        if self._it._worker_pids_set:
            signal_handling._remove_worker_pids(id(self._it))
            self._it._worker_pids_set = False
