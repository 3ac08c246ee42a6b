"""``train --cluster``: a fold job killed mid-run is resumed by its retry; ``autoseg jobs`` orders a cascade's stages.
(The tiny AutoML loop on a LocalCluster against the in-process run is in test_automl.py, which trains it once.)"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from autoseg.cli import main

pytest.importorskip("distributed", reason="the [cluster] extra (dask distributed) is not installed")
psutil = pytest.importorskip("psutil", reason="psutil comes with dask distributed")

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
