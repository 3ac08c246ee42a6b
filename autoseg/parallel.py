"""Run a per-case function over many cases in forked worker processes, in order, with a progress bar; the CPUs this
process may use."""

from __future__ import annotations

import math
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

from autoseg.progress import bar as progress_bar

from autoseg.errors import AutosegError, option

_WAITING, _RUNNING, _DONE = 0, 1, 2

# Per worker process: the job-state array shared with the parent (``_WAITING`` / ``_RUNNING`` / ``_DONE`` per job),
# handed over by the pool initializer (fork: inherited memory). It lets the parent name exactly the cases in flight
# when a worker is killed.
_job_state = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str | None, period: str | None) -> float | None:
    """``quota / period`` in CPUs; ``None`` for no limit (``max``, ``-1``) or an unreadable value."""
    try:
        q, p = int(quota), int(period)  # int() strips the newline
    except (TypeError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def _cpu_max(text: str | None) -> float | None:
    """cgroup v2 ``cpu.max``: ``"200000 100000"`` (2 CPUs) or ``"max 100000"`` (no limit)."""
    parts = (text or "").split()
    return _ratio(*parts) if len(parts) == 2 else None


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and its parents up to ``mount`` (a parent's limit binds its children too), those that
    exist. In a container the cgroup named in /proc/self/cgroup may lie outside the mount (the mount is then the
    container's own cgroup): only ``mount`` itself exists then."""
    parts = [p for p in path.strip().split("/") if p and p != ".."]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroups in CPUs (``1.5``: one and a half cores' time), ``None`` when none.

    Reads cgroup v2 ``cpu.max`` and cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of the cgroups named
    in ``root/proc/self/cgroup`` (and of their parents) under ``root/sys/fs/cgroup``; the smallest quota wins.

    Parameters
    ----------
    root
        The file-system root the ``proc`` and ``sys`` trees are found under (a test passes a fake tree).
    """
    base = Path(root) / "sys" / "fs" / "cgroup"
    limits: list[float] = []
    for line in (_read(Path(root) / "proc" / "self" / "cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 (unified): the root itself, or ``unified`` in hybrid mode
            for mount in (base, base / "unified"):
                if (mount / "cgroup.controllers").is_file():
                    limits += [q for d in _cgroup_dirs(mount, path)
                               if (q := _cpu_max(_read(d / "cpu.max"))) is not None]
        elif "cpu" in controllers.split(","):  # v1: mounted as ``cpu``, ``cpu,cpuacct`` or ``cpuacct,cpu``
            for name in dict.fromkeys(("cpu", controllers, "cpu,cpuacct", "cpuacct,cpu")):
                if (base / name).is_dir():
                    limits += [q for d in _cgroup_dirs(base / name, path)
                               if (q := _ratio(_read(d / "cpu.cfs_quota_us"),
                                               _read(d / "cpu.cfs_period_us"))) is not None]
                    break
    return min(limits) if limits else None


def usable_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may use: its CPU affinity (which a cgroup cpuset restricts too), capped by its cgroups'
    CPU quota (:func:`cgroup_cpu_limit`, rounded up); at least 1. Every default worker and thread count of autoseg
    comes from here.

    Parameters
    ----------
    root
        The file-system root of the cgroup files (a test passes a fake tree).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity outside Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota - 1e-9))
    return max(1, cpus)


def worker_count(num_workers: int | None, n_jobs: int) -> int:
    """``num_workers`` (default: one per usable core, :func:`usable_cpus`), at most one per job, at least 1."""
    return max(1, min(num_workers or usable_cpus(), n_jobs))


def one_blas_thread() -> None:
    """Limit this process's BLAS / OpenMP thread pools to one thread (a worker initializer: the worker processes
    are the parallelism). A no-op without threadpoolctl (it comes with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:
        pass


def _init_pool_worker(job_state, initializer: Callable[[], None] | None) -> None:
    global _job_state
    _job_state = job_state
    if initializer is not None:
        initializer()


def _run_job(fn: Callable[..., Any], index: int, job: tuple) -> Any:
    _job_state[index] = _RUNNING
    try:
        return fn(*job)
    finally:
        _job_state[index] = _DONE


def map_cases(fn: Callable[..., Any], jobs: Sequence[tuple], case_ids: Sequence[str], num_workers: int | None = None,
              desc: str = "cases", progress: bool = True, initializer: Callable[[], None] | None = None,
              on_result: Callable[[int, Any], None] | None = None,
              died_message: Callable[[list[str]], str] | None = None) -> list[Any]:
    """``[fn(*job) for job in jobs]`` with up to ``num_workers`` processes (default: one per core).

    Workers are forked (they start in milliseconds and see the parent's modules); ``fn`` must use numpy, scipy
    and SimpleITK only. With one worker (or one job) everything runs in this process, leaving its thread settings
    alone.

    The run stops at the first error: the first exception raised by ``fn`` or ``on_result`` is re-raised here
    (as is a KeyboardInterrupt) once the jobs already running have finished; no new job starts.

    Parameters
    ----------
    fn
        Module-level function.
    jobs
        Arguments of each call.
    case_ids
        The case of each job, to name in the error when a worker dies.
    num_workers
        Worker processes; default one per usable core (never more than one per job).
    desc
        Progress-bar label.
    progress
        Show the progress bar.
    initializer
        Called once in every worker process before its first job (not in this process when running in-process).
    on_result
        ``on_result(index, result)``, in this process as each job finishes (in completion order), before the
        progress bar advances.
    died_message
        The error message when a worker process dies, from the cases running at that moment (in job order; empty
        when none had started); default: ``"<desc>: a worker process died (most likely out of memory) while
        working on one of <cases>; retry with fewer workers (-j 1)"`` (``num_workers=1`` in Python).

    Raises
    ------
    AutosegError
        A worker process died (most likely out of memory), naming the cases that were running.
    """
    workers = worker_count(num_workers, len(jobs))
    results: list[Any] = [None] * len(jobs)
    bar = progress_bar(len(jobs), desc, "case", progress)

    def finished(i: int, result: Any) -> None:
        results[i] = result
        if on_result is not None:
            on_result(i, result)
        bar.update()

    try:
        if workers <= 1:
            for i, job in enumerate(jobs):
                finished(i, fn(*job))
            return results
        _run_in_pool(fn, jobs, case_ids, workers, initializer, finished, desc, died_message)
        return results
    finally:
        bar.close()


def _run_in_pool(fn: Callable[..., Any], jobs: Sequence[tuple], case_ids: Sequence[str], workers: int,
                 initializer: Callable[[], None] | None, finished: Callable[[int, Any], None], desc: str,
                 died_message: Callable[[list[str]], str] | None) -> None:
    """:func:`map_cases` with forked worker processes: each job's result to ``finished`` as it comes; a dead
    worker raises naming the cases it may have been working on."""
    ctx = get_context("fork")
    state = ctx.RawArray("b", len(jobs))  # per job: started in a worker (to name the cases when one dies)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                             initargs=(state, initializer)) as pool:
        pending: dict = {}
        try:
            for i, job in enumerate(jobs):  # a worker may die while jobs are still being submitted
                pending[pool.submit(_run_job, fn, i, job)] = i
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    finished(i, fut.result())
        except BrokenProcessPool:
            running = [case_ids[i] for i in range(len(jobs)) if state[i] == _RUNNING]
            if died_message is not None:
                raise AutosegError(died_message(running)) from None
            # none marked running (the worker died before its first job): the next ones in line
            named = sorted(running) or sorted(case_ids[i] for i in pending)[:workers]
            raise AutosegError(f"{desc}: a worker process died (most likely out of memory) while working on one "
                               f"of {', '.join(named)}; retry with fewer workers "
                               f"({option('num_workers=1')})") from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running jobs finish, no new ones start
            raise
