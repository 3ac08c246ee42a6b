"""Run a per-case function over many cases in forked worker processes, in order, with a progress bar."""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from tqdm import tqdm

from autoseg.errors import AutosegError


def worker_count(num_workers: int | None, n_jobs: int) -> int:
    """``num_workers`` (default: one per usable core), at most one per job, at least 1."""
    return max(1, min(num_workers or len(os.sched_getaffinity(0)), n_jobs))


def map_cases(fn: Callable[..., Any], jobs: Sequence[tuple], case_ids: Sequence[str], num_workers: int | None = None,
              desc: str = "cases", progress: bool = True,
              initializer: Callable[[], None] | None = None) -> list[Any]:
    """``[fn(*job) for job in jobs]`` with up to ``num_workers`` processes (default: one per core).

    Workers are forked (they start in milliseconds and see the parent's modules); ``fn`` must use numpy, scipy
    and SimpleITK only. The first exception raised by ``fn`` is re-raised here.

    Parameters
    ----------
    fn
        Module-level function.
    jobs
        Arguments of each call.
    case_ids
        The case of each job, to name in the error when a worker dies.
    desc
        Progress-bar label.
    initializer
        Called once in every worker process before its first job (not in this process when running in-process).

    Raises
    ------
    AutosegError
        A worker process died (most likely out of memory), naming the cases that were running.
    """
    workers = worker_count(num_workers, len(jobs))
    results: list[Any] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:
            for i, job in enumerate(jobs):
                results[i] = fn(*job)
                bar.update()
            return results
        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=initializer) as pool:
            pending = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        results[i] = fut.result()
                        bar.update()
            except BrokenProcessPool:
                running = sorted(case_ids[i] for i in pending)[:workers]
                raise AutosegError(f"{desc}: a worker process died (most likely out of memory) while working on one "
                                   f"of {', '.join(running)}; retry with fewer workers (-j 1)") from None
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        return results
    finally:
        bar.close()
