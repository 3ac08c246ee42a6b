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


# usable_cpus: fake cgroup trees (files under a root passed in), one row per layout ------------------------------

V2 = {"sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n"}
CGROUP_TREES = [
    ("no cgroup files", {}, None),
    ("v2, limit on the process's cgroup", {**V2, "proc/self/cgroup": "0::/user.slice/job7\n",
                                           "sys/fs/cgroup/user.slice/job7/cpu.max": "150000 100000\n"}, 1.5),
    ("v2, a parent's limit binds", {**V2, "proc/self/cgroup": "0::/user.slice/job7\n",
                                    "sys/fs/cgroup/user.slice/cpu.max": "50000 100000\n",
                                    "sys/fs/cgroup/user.slice/job7/cpu.max": "max 100000\n"}, 0.5),
    ("v2, container (cgroupns root)", {**V2, "proc/self/cgroup": "0::/\n",
                                       "sys/fs/cgroup/cpu.max": "400000 100000\n"}, 4.0),
    ("v2, no limit", {**V2, "proc/self/cgroup": "0::/a\n", "sys/fs/cgroup/a/cpu.max": "max 100000\n"}, None),
    ("v2, unreadable value", {**V2, "proc/self/cgroup": "0::/a\n", "sys/fs/cgroup/a/cpu.max": "garbage\n"}, None),
    ("v1, docker without cgroupns: the mount is the container's cgroup",
     {"proc/self/cgroup": "5:cpuacct,cpu:/docker/abc\n4:memory:/docker/abc\n",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.0),
    ("v1, quota -1", {"proc/self/cgroup": "3:cpu:/\n", "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                      "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("hybrid: v1 cpu quota, unified without cpu.max",
     {"proc/self/cgroup": "1:cpu:/slurm/job9\n0::/\n", "sys/fs/cgroup/unified/cgroup.controllers": "\n",
      "sys/fs/cgroup/cpu/slurm/job9/cpu.cfs_quota_us": "300000\n",
      "sys/fs/cgroup/cpu/slurm/job9/cpu.cfs_period_us": "100000\n"}, 3.0),
    ("v1 and v2 both limit: the smaller wins",
     {**V2, "proc/self/cgroup": "1:cpu:/\n0::/j\n", "sys/fs/cgroup/j/cpu.max": "250000 100000\n",
      "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "50000\n"}, 2.0),
]


@pytest.mark.parametrize("files, expected", [row[1:] for row in CGROUP_TREES], ids=[row[0] for row in CGROUP_TREES])
def test_cgroup_cpu_limit_of_fake_trees(tmp_path, files, expected):
    from autoseg.parallel import cgroup_cpu_limit

    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected


@pytest.mark.parametrize("quota, expected", [("50000 100000", 1), ("100000 100000", 1), ("max 100000", None)])
def test_usable_cpus_is_the_smaller_of_affinity_and_quota(tmp_path, quota, expected):
    from autoseg.parallel import usable_cpus, worker_count

    files = {**V2, "proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": quota}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))
    assert usable_cpus(tmp_path / "nothing") == affinity
    assert worker_count(None, 100) == usable_cpus()
