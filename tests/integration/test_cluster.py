"""``train --cluster``: a fold job killed mid-run is resumed by its retry; a hung job is killed and retried; Ctrl-C
stops every job it started; ``autoseg jobs`` orders a cascade's stages. (The tiny AutoML loop on a LocalCluster
against the in-process run is in test_automl.py, which trains it once.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from autoseg.cli import main
from autoseg.errors import JobsFailed

pytest.importorskip("distributed", reason="the [cluster] extra (dask distributed) is not installed")
psutil = pytest.importorskip("psutil", reason="psutil comes with dask distributed")

pytestmark = pytest.mark.slow  # each test starts a Dask cluster and autoseg processes: ~15-60 s


def _kill_when_checkpointed(fold_dir, killed: list, stop: threading.Event) -> None:
    """SIGKILL the fold's training process once its first latest checkpoint is on disk."""
    while not stop.is_set():
        if (fold_dir / "checkpoint_latest.pt").is_file():
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info["cmdline"] or []
                if "autoseg" in cmd and "train" in cmd and "3d_fullres" in cmd and "--cluster" not in cmd:
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
            if killed:
                return
        time.sleep(0.02)


def test_a_killed_fold_job_is_resumed_by_its_retry(tiny_raw, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2"]) == 0
    fold = ws / "Tiny" / "models" / "3d_fullres" / "fold_0"
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_when_checkpointed, args=(fold, killed, stop), daemon=True)
    watcher.start()
    try:
        assert main(["train", "Tiny", "-w", str(ws), "--cluster", "local:1", "-c", "3d_fullres", "-f", "0",
                     "--epochs", "8", "--iterations-per-epoch", "3", "--checkpoint-every", "1", "-j", "0",
                     "--no-validation"]) == 0
    finally:
        stop.set()
        watcher.join(10)
    assert killed, "the job finished before it could be killed"
    out = capsys.readouterr().out
    assert "train-3d_fullres-fold0: failed with exit code -9" in out
    assert "train-3d_fullres-fold0: running on" in out and "(attempt 2)" in out
    log = (ws / "Tiny" / "jobs" / "train-3d_fullres-fold0.log").read_text()
    second = log.split("=== autoseg job attempt 2")[1]
    assert "resuming at epoch" in second
    assert (fold / "checkpoint_final.pt").is_file()
    epochs = [json.loads(line)["epoch"] for line in (fold / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(8))


#: A stand-in job: prints a line, then hangs on its first attempt (``once``) or on every one (``always``).
HANG = ("import pathlib, sys, time\nmarker = pathlib.Path(sys.argv[1])\nprint('started', flush=True)\n"
        "if sys.argv[2] == 'always' or not marker.exists():\n    marker.touch()\n    time.sleep(600)\n")


def test_a_hung_job_is_killed_and_retried(tmp_path):
    from autoseg.workflow.cluster import ClusterSpec, run_graph
    from autoseg.workflow.jobs import GraphJob

    graph = [GraphJob(f"hangs-{how}", (sys.executable, "-c", HANG, str(tmp_path / how), how))
             for how in ("once", "always")]
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(JobsFailed) as e:
        run_graph(graph, ClusterSpec("local", workers=2), tmp_path / "jobs", lines.append, progress=False,
                  job_timeout_minutes=3 / 60)
    assert time.monotonic() - t0 < 120
    said = "\n".join(lines)
    for how in ("once", "always"):
        log = tmp_path / "jobs" / f"hangs-{how}.log"
        assert (f"hangs-{how}: no progress for 3 s (its log did not grow): killed (attempt 1), log {log}" in said)
        assert f"hangs-{how}: running on" in said and "(attempt 2)" in said
        assert log.read_text().count("no progress (the log did not grow) for 3 s: killed (exit code -9)") == (
            1 if how == "once" else 2)
    assert "hangs-once: finished" in said
    assert "hangs-always: no progress for 3 s (its log did not grow): killed (attempt 2)" in said
    assert e.value.lines[0].startswith("1 job(s) failed twice") and "hangs-always: log" in e.value.lines[1]


def _train_processes(ws):
    """The fold-training processes of workspace ``ws`` (not the command that submitted them)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if str(ws) in cmd and "train" in cmd and "--cluster" not in cmd:
            found.append(p)
    return found


def test_ctrl_c_cancels_the_jobs_and_stops_their_processes(tiny_raw, tmp_path):
    import logging

    from distributed import LocalCluster

    ws = tmp_path / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2"]) == 0
    log = ws / "Tiny" / "jobs" / "train-3d_fullres-fold0.log"
    # a scheduler and worker that outlive the command, as remote ones do: only the cancellation can stop the job
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        driver = subprocess.Popen([sys.executable, "-m", "autoseg", "train", "Tiny", "-w", str(ws), "--cluster",
                                   cluster.scheduler_address, "-c", "3d_fullres", "-f", "0", "--epochs", "500",
                                   "--iterations-per-epoch", "2", "-j", "0", "--no-validation"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while not (log.is_file() and "epoch 1/500" in log.read_text()):  # the fold is training
                assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
                time.sleep(0.2)
            assert _train_processes(ws)
            driver.send_signal(signal.SIGINT)  # Ctrl-C of the submitting command (the workers do not see it)
            out, err = driver.communicate(timeout=120)
        finally:
            driver.kill()
        assert driver.returncode == 130 and err.splitlines() == ["interrupted"], (out, err)
        assert "interrupted: cancelling 1 job(s); 1 running stop" in out, out
        assert "train-3d_fullres-fold0: cancelled, its process stopped" in out, out
        assert _train_processes(ws) == []  # while the worker lives on
        assert len(cluster.scheduler.workers) == 1
    text = log.read_text()
    assert "interrupted: saved" in text and "cancelled: interrupted and stopped (exit code 130)" in text, text


@pytest.fixture()
def cascade_raw(tmp_path_factory):
    from autoseg.synthetic import PRESETS, make_dataset

    return make_dataset(tmp_path_factory.mktemp("raw") / "Task09_Cascade", PRESETS["cascade"])


def test_jobs_orders_a_cascade(cascade_raw, tmp_path, capsys):
    ws = tmp_path / "ws"
    # a small memory target makes the full-res patch small against the cases: the planner adds the cascade
    assert main(["plan", str(cascade_raw), "-w", str(ws), "--gpu-memory", "0.02", "-j", "2",
                 "--no-preprocess"]) == 0
    capsys.readouterr()
    assert main(["jobs", "Cascade", "-w", str(ws), "--epochs", "3", "--deterministic"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("autoseg")]
    config_of = [line.split(" -c ")[1].split()[0] if " -c " in line else "find-best" for line in commands]
    assert {"3d_lowres", "3d_cascade_fullres", "3d_fullres"} <= set(config_of)
    last_low = max(i for i, c in enumerate(config_of) if c == "3d_lowres")
    first_cascade = min(i for i, c in enumerate(config_of) if c == "3d_cascade_fullres")
    assert last_low < first_cascade and config_of[-1] == "find-best"
    assert config_of.count("3d_cascade_fullres") == 5
    assert all("--resume --epochs 3 --deterministic" in line for line in commands if "train" in line)
    assert main(["jobs", "Cascade", "-w", str(ws), "--format", "slurm", "--sbatch=--partition=gpu"]) == 0
    script = capsys.readouterr().out.splitlines()
    cascade0 = next(line for line in script if line.startswith("job_train_3d_cascade_fullres_fold0="))
    assert all(f"$job_train_3d_lowres_fold{k}" in cascade0 for k in range(5))
    best = next(line for line in script if line.startswith("job_find_best="))
    assert best.count("$job_train_") == len([c for c in config_of if c != "find-best"])
    # -c with a cascade stage alone: skipped with the reason, noted in the script
    assert main(["jobs", "Cascade", "-w", str(ws), "-c", "3d_cascade_fullres"]) == 0
    assert "# skipped: 3d_cascade_fullres (needs all five folds of 3d_lowres" in capsys.readouterr().out
