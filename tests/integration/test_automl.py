"""The AutoML loop on a tiny dataset: two configurations x 5 folds -> best.json + postprocessing.json -> predict;
the same loop on a Dask LocalCluster (``train --cluster local:2``) gives the same choice."""

import json
import shutil

import pytest

from autoseg.cli import main

# slow: the AutoML loop over configurations x folds, in-process and on a Dask LocalCluster (minutes)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FAST = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "-j", "0", "--deterministic",
        "--no-validation-tta"]


def test_train_everything_select_and_predict(tiny_raw, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["plan", str(tiny_raw), "-w", ws, "-j", "2"]) == 0
    shutil.copytree(ws, tmp_path / "planned")  # for the cluster run below
    assert main(["train", "Tiny", "-w", ws, *FAST]) == 0
    out = capsys.readouterr().out
    assert "training plan" in out and "3d_fullres" in out and "2d" in out
    ds = tmp_path / "ws" / "Tiny"
    best = json.loads((ds / "best.json").read_text())
    assert (ds / "postprocessing.json").is_file()
    names = [c["name"] for c in best["candidates"]]
    assert len(names) == 3  # 2d, 3d_fullres and their ensemble
    # a second run finds every fold finished and trains nothing
    assert main(["train", "Tiny", "-w", ws, *FAST]) == 0
    assert "10 fold(s) already finished" in capsys.readouterr().out
    # predict uses the choice (and its postprocessing) by default
    pred = tmp_path / "pred"
    assert main(["predict", "Tiny", "-w", ws, "-i", str(tiny_raw / "imagesTs"), "-o", str(pred)]) == 0
    assert "best" in capsys.readouterr().out
    assert len(list(pred.glob("*.nii.gz"))) == 2

    # the same run on a local Dask cluster of 2 worker processes: 10 fold jobs + find-best, the same choice
    pytest.importorskip("distributed", reason="the [cluster] extra (dask distributed) is not installed")
    remote = tmp_path / "planned"
    assert main(["train", "Tiny", "-w", str(remote), "--cluster", "local:2", *FAST]) == 0
    out = capsys.readouterr().out
    cluster_best = json.loads((remote / "Tiny" / "best.json").read_text())
    assert cluster_best["chosen"] == best["chosen"]
    assert [c["name"] for c in cluster_best["candidates"]] == names
    assert "train-3d_fullres-fold4: finished" in out and "find-best: finished" in out
    assert "all 11 job(s) finished" in out
    logs = sorted(p.name for p in (remote / "Tiny" / "jobs").glob("*.log"))
    assert len(logs) == 11 and "find-best.log" in logs
    # a second cluster run finds every fold finished: only find-best runs again
    assert main(["train", "Tiny", "-w", str(remote), "--cluster", "local:1", *FAST]) == 0
    out = capsys.readouterr().out
    assert "10 fold(s) already finished" in out and "all 1 job(s) finished" in out
