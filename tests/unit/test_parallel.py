"""map_cases: results in order, in-process and forked, first error stops the run, a dead worker is named."""

import os
import signal
import time

import pytest

from autoseg.errors import AutosegError
from autoseg.parallel import map_cases

_initialized = []


def _square(x):
    time.sleep(0.05)  # long enough that every worker gets a job, whatever the machine's load
    return x * x, os.getpid()


def _fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


def _die_on(x, victim):
    if x == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return x


def _mark():
    _initialized.append(1)


def _initialized_count(_x):
    return len(_initialized)


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_job_order_with_callback(workers):
    seen = []
    out = map_cases(_square, [(i,) for i in range(7)], [f"c{i}" for i in range(7)], workers, progress=False,
                    on_result=lambda i, r: seen.append((i, r[0])))
    assert [r[0] for r in out] == [i * i for i in range(7)]
    assert sorted(seen) == [(i, i * i) for i in range(7)]
    pids = {pid for _, pid in out}
    assert (os.getpid() not in pids) if workers > 1 else (pids == {os.getpid()})


def test_initializer_runs_in_workers_only():
    assert map_cases(_initialized_count, [(0,), (1,)], ["a", "b"], 2, progress=False,
                     initializer=_mark) == [1, 1]
    assert map_cases(_initialized_count, [(0,)], ["a"], 2, progress=False, initializer=_mark) == [0]


@pytest.mark.parametrize("workers", [1, 2])
def test_first_error_is_raised(workers):
    with pytest.raises(ValueError, match="bad 3"):
        map_cases(_fail_on, [(i, 3) for i in range(6)], [f"c{i}" for i in range(6)], workers, progress=False)

    def reject(i, result):
        if result == 2:
            raise AutosegError("case c2 rejected")

    with pytest.raises(AutosegError, match="c2 rejected"):
        map_cases(_fail_on, [(i, -1) for i in range(6)], [f"c{i}" for i in range(6)], workers, progress=False,
                  on_result=reject)


def test_dead_worker_names_the_running_case():
    jobs, ids = [(i, 2) for i in range(5)], [f"case{i}" for i in range(5)]
    with pytest.raises(AutosegError) as e:
        map_cases(_die_on, jobs, ids, 2, "test", progress=False)
    msg = str(e.value)
    assert msg.startswith("test: a worker process died") and "case2" in msg and "case4" not in msg
    with pytest.raises(AutosegError, match=r"^died: .*case2"):
        map_cases(_die_on, jobs, ids, 2, progress=False, died_message=lambda running: f"died: {running}")
