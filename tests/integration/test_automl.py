"""The AutoML loop on a tiny dataset: two configurations x 5 folds -> best.json + postprocessing.json -> predict."""

import json

from autoseg.cli import main

FAST = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "-j", "0"]


def test_train_everything_select_and_predict(tiny_raw, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["plan", str(tiny_raw), "-w", ws, "-j", "2"]) == 0
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
