"""``--cluster SPEC`` parsing, job-queue files, and the job graph's waves and scripts (no cluster started)."""

from __future__ import annotations

import pytest

from autoseg.errors import AutosegError
from autoseg.workflow.cluster import ClusterSpec, JobQueueConfig, load_jobqueue_config, parse_cluster_spec
from autoseg.workflow.jobs import GraphJob, render_shell, render_slurm, stages


@pytest.mark.parametrize("text, expected", [
    ("local", ClusterSpec("local", workers=2)),
    ("local:4", ClusterSpec("local", workers=4)),
    (" local:1 ", ClusterSpec("local", workers=1)),
    ("tcp://10.1.2.3:8786", ClusterSpec("address", address="tcp://10.1.2.3:8786")),
    ("tls://sched.example.org:8786", ClusterSpec("address", address="tls://sched.example.org:8786")),
    ("node07:8786", ClusterSpec("address", address="tcp://node07:8786")),
])
def test_parse_cluster_spec(text, expected):
    assert parse_cluster_spec(text) == expected


@pytest.mark.parametrize("text, message", [
    ("local:0", "at least 1"),
    ("locl", "expected local, local:N"),
    ("tcp://host", "expected local, local:N"),
    ("missing.yaml", "no such cluster file"),
    ("", "expected local"),
])
def test_parse_cluster_spec_refuses(text, message):
    with pytest.raises(AutosegError, match=message):
        parse_cluster_spec(text)


def _write(tmp_path, text):
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    return p


def test_jobqueue_file_read_and_turned_into_dask_jobqueue_arguments(tmp_path):
    p = _write(tmp_path, "system: slurm\njobs: 3\nqueue: gpu\naccount: lab\ncores: 8\nmemory: 32GB\ngpus: 1\n"
                         "walltime: '12:00:00'\njob_extra_directives: ['--constraint=a100']\n"
                         "prologue: ['module load cuda']\n")
    spec = parse_cluster_spec(str(p))
    assert spec.kind == "jobqueue" and spec.config == JobQueueConfig(
        "slurm", 3, "gpu", "lab", 8, "32GB", 1, "12:00:00", ("--constraint=a100",), ("module load cuda",))
    kwargs = spec.config.cluster_kwargs()
    assert kwargs["job_extra_directives"] == ["--constraint=a100", "--gres=gpu:1"]
    assert kwargs["account"] == "lab" and kwargs["queue"] == "gpu" and kwargs["processes"] == 1
    assert kwargs["worker_extra_args"] == ["--resources", "autoseg_fold=1"]  # one fold per batch job at a time
    assert JobQueueConfig("pbs", account="lab").cluster_kwargs()["project"] == "lab"


def test_jobqueue_arguments_make_a_slurm_job_script(tmp_path):
    dask_jobqueue = pytest.importorskip("dask_jobqueue", reason="the [cluster] extra is not installed")
    config = JobQueueConfig("slurm", queue="gpu", gpus=2, prologue=("source /opt/venv/bin/activate",))
    with dask_jobqueue.SLURMCluster(**config.cluster_kwargs()) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:2" in script
    assert "source /opt/venv/bin/activate" in script and "--resources autoseg_fold=1" in script


@pytest.mark.parametrize("text, message", [
    ("system: torque\n", "'system' must be one of"),
    ("jobs: 2\n", "'system' must be one of"),
    ("system: slurm\njobs: 0\n", "'jobs' must be a positive integer"),
    ("system: slurm\ngpus: -1\n", "'gpus' must be a non-negative integer"),
    ("system: slurm\ncores: two\n", "'cores' must be a positive integer"),
    ("system: slurm\nqueues: gpu\n", "unknown setting 'queues'"),
    ("system: slurm\nprologue: module load cuda\n", "'prologue' must be a list"),
    ("- slurm\n", "expected a mapping"),
    ("system: [slurm\n", "not a readable YAML"),
])
def test_jobqueue_file_refused_with_one_line_naming_it(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(AutosegError, match=message) as e:
        load_jobqueue_config(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def _graph():
    low = [GraphJob(f"train-low-fold{k}", ("autoseg", "train", "D", "-c", "low", "-f", str(k))) for k in range(2)]
    cas = [GraphJob(f"train-cas-fold{k}", ("autoseg", "train", "D", "-c", "cas", "-f", str(k)),
                    tuple(j.name for j in low)) for k in range(2)]
    full = GraphJob("train-full-fold0", ("autoseg", "train", "D", "-c", "full", "-f", "0"))
    best = GraphJob("find-best", ("autoseg", "find-best", "D"), tuple(j.name for j in [*low, *cas, full]))
    return [*low, *cas, full, best]


def test_stages_put_every_job_after_its_dependencies():
    waves = [[j.name for j in w] for w in stages(_graph())]
    assert waves == [["train-low-fold0", "train-low-fold1", "train-full-fold0"],
                     ["train-cas-fold0", "train-cas-fold1"], ["find-best"]]


def test_scripts_of_the_graph(tmp_path):
    shell = render_shell(_graph(), "D", ["x (why)"]).splitlines()
    commands = [line for line in shell if line.startswith("autoseg")]
    assert commands.index("autoseg train D -c cas -f 0") > commands.index("autoseg train D -c low -f 1")
    assert commands[-1] == "autoseg find-best D" and "# skipped: x (why)" in shell
    slurm = render_slurm(_graph(), "D", tmp_path / "logs", ["--partition=gpu"]).splitlines()
    cas0 = next(line for line in slurm if line.startswith("job_train_cas_fold0="))
    assert "--dependency=afterok:$job_train_low_fold0:$job_train_low_fold1" in cas0 and "--partition=gpu" in cas0
    assert "--wrap='autoseg train D -c cas -f 0'" in cas0
    low0 = next(line for line in slurm if line.startswith("job_train_low_fold0="))
    assert "--dependency" not in low0
    assert slurm.index(cas0) > slurm.index(low0)


# a job's subprocess under watch (no cluster): hung, alive, cancelled --------------------------------------------

def _start(tmp_path, script):
    import subprocess
    import sys

    log = tmp_path / "job.log"
    f = open(log, "a")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    f.close()
    return proc, log


def test_a_job_whose_log_stops_growing_is_killed(tmp_path):
    import time

    from autoseg.workflow.cluster import supervise

    proc, log = _start(tmp_path, "import time\nprint('epoch 1', flush=True)\ntime.sleep(60)\n")
    t0 = time.monotonic()
    assert supervise(proc, log, timeout_s=1.0, cancelled=lambda: False, poll_s=0.1) == (-9, "hung")
    assert time.monotonic() - t0 < 10


def test_a_job_that_keeps_printing_is_left_alone(tmp_path):
    from autoseg.workflow.cluster import supervise

    proc, log = _start(tmp_path, "import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.3)\n")
    assert supervise(proc, log, timeout_s=1.0, cancelled=lambda: False, poll_s=0.1) == (0, None)
    assert log.read_text().split() == [str(i) for i in range(8)]


@pytest.mark.parametrize("ignores_interrupt", [False, True])
def test_a_cancelled_job_is_interrupted_then_killed_with_its_children(tmp_path, ignores_interrupt):
    import os
    import time

    from autoseg.workflow.cluster import supervise

    ignore = "signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if ignores_interrupt else ""
    script = (f"import signal, subprocess, sys, time\n{ignore}"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('saved', flush=True)\n    sys.exit(130)\n")
    proc, log = _start(tmp_path, script)
    while not log.read_text().strip():
        time.sleep(0.05)
    child = int(log.read_text().split()[0])
    rc, why = supervise(proc, log, timeout_s=None, cancelled=lambda: True, poll_s=0.1, grace_s=1.0)
    assert why == "cancelled" and rc == (-9 if ignores_interrupt else 130)
    assert ("saved" in log.read_text()) is not ignores_interrupt
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the grandchild got SIGKILL; wait for it to be reaped by init
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the job's child {child} survived")


def test_a_lost_interrupt_is_sent_again(tmp_path):
    from autoseg.workflow.cluster import supervise

    # the first SIGINT is lost (as when it lands in a finaliser: Python says so) and the job prints on; the second
    # stops it
    script = ("import signal, sys, time\nlost = []\n"
              "def first(*_):\n    lost.append(1)\n    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "    print('Exception ignored in: <function remove>', file=sys.stderr, flush=True)\n"
              "signal.signal(signal.SIGINT, first)\nprint('started', flush=True)\n"
              "try:\n    for i in range(600):\n        time.sleep(0.1)\n        if lost:\n            print(i, flush=True)\n"
              "except KeyboardInterrupt:\n    print('saved', flush=True)\n    sys.exit(130)\n")
    proc, log = _start(tmp_path, script)
    while "started" not in log.read_text():
        pass
    assert supervise(proc, log, timeout_s=None, cancelled=lambda: True, poll_s=0.2, grace_s=30) == (130, "cancelled")
    assert log.read_text().split()[-1] == "saved"


@pytest.mark.parametrize("worker, device, gpus, expected", [
    (0, "auto", ["GPU-a", "GPU-b"], "GPU-a"),
    (1, "auto", ["GPU-a", "GPU-b"], "GPU-b"),
    (2, "cuda", ["GPU-a", "GPU-b"], "GPU-a"),   # more workers than GPUs: round-robin
    (3, "auto", ["GPU-a", "GPU-b", "GPU-c", "GPU-d"], "GPU-d"),
    (1, "auto", ["GPU-a"], None),                # one GPU: nothing to share out
    (1, "auto", [], None),                       # none
    (1, "cpu", ["GPU-a", "GPU-b"], None),
    (1, "cuda:1", ["GPU-a", "GPU-b"], None),     # the job chose its GPU itself
])
def test_each_local_worker_gets_its_own_gpu(worker, device, gpus, expected):
    from autoseg.workflow.cluster import assigned_gpu

    assert assigned_gpu(worker, device, gpus) == expected


def test_the_device_of_a_job_command():
    from autoseg.workflow.cluster import job_device

    assert job_device(("autoseg", "train", "D", "-c", "3d_fullres")) == "auto"
    assert job_device(("autoseg", "train", "D", "--device", "cuda:1", "--epochs", "2")) == "cuda:1"
    assert job_device(("autoseg", "train", "D", "--device=cpu")) == "cpu"


def test_job_timeout_is_a_cluster_option(capsys):
    from autoseg.cli import main

    assert main(["train", "Nothing", "--job-timeout", "45s"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --job-timeout applies to the jobs of a --cluster run"]
