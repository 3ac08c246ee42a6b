"""Experiment trackers: a training run with --log tensorboard (and mlflow when installed) whose records are read
back with the trackers' own readers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from autoseg.cli import main

TRAIN = ["-c", "3d_fullres", "-f", "0", "--epochs", "3", "--iterations-per-epoch", "2", "-j", "0", "--no-validation"]


def test_tensorboard_and_mlflow_records_of_a_run(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="the [tensorboard] extra is not installed")
    raw, ws = tmp_path / "raw", tmp_path / "ws"
    assert main(["demo", "--make-data", str(raw), "--kind", "tiny"]) == 0
    assert main(["plan", str(raw), "-w", str(ws), "-j", "1", "--no-preprocess"]) == 0
    assert main(["preprocess", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-j", "1"]) == 0
    trackers = ["tensorboard", "mlflow"] if importlib.util.find_spec("mlflow") else ["tensorboard"]
    assert main(["train", "Tiny", "-w", str(ws), *TRAIN, "--log", *trackers]) == 0
    fold = ws / "Tiny" / "models" / "3d_fullres" / "fold_0"
    acc = event_accumulator.EventAccumulator(str(fold / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/train", "loss/validation", "learning_rate", "pseudo_dice/smoothed", "pseudo_dice/liver",
            "pseudo_dice/spleen", "time/epoch_seconds"} <= set(tags["scalars"])
    train_loss = acc.Scalars("loss/train")
    assert [e.step for e in train_loss] == [0, 1, 2]
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert [round(e.value, 4) for e in train_loss] == [round(x["train_loss"], 4) for x in log]
    assert "progress" in tags["images"]
    assert json.loads((fold / "train_config.json").read_text())["trackers"] == trackers
    if "mlflow" in trackers:
        from mlflow.tracking import MlflowClient

        assert (ws / "mlruns" / "mlflow.db").is_file()
        client = MlflowClient(tracking_uri=f"sqlite:///{(ws / 'mlruns' / 'mlflow.db').resolve()}")
        experiment = client.get_experiment_by_name("autoseg")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.run_name == "Tiny 3d_fullres fold 0" and run.data.params["fold"] == "0"
        history = client.get_metric_history(run.info.run_id, "loss_train")
        assert [m.step for m in history] == [0, 1, 2]
        assert any(a.path == "progress.png" for a in client.list_artifacts(run.info.run_id))
        assert list((ws / "mlruns" / "artifacts").rglob("progress.png"))
        assert run.info.status == "FINISHED"
