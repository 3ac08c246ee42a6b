"""Region-based training end to end on a tiny BraTS-like dataset (nested labels 1-4, MSD layout with a
regions.json): plan -> train a few iterations (sigmoid outputs, BCE + Dice) -> validation scored by region ->
predict (label maps in regions_class_order) -> evaluate --regions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoseg import api
from autoseg.cli import main
from autoseg.io.image import read_label
from autoseg.synthetic import PRESETS, make_dataset

REGIONS = {"whole tumour": [1, 2, 3, 4], "tumour core": [2, 3, 4], "enhancing tumour": [3, 4]}


@pytest.fixture(scope="module")
def brats_like(tmp_path_factory) -> Path:
    spec = replace(PRESETS["brats-like"], num_training=6, num_test=2, shape=(24, 28, 24), channels=("FLAIR", "T1"))
    raw = make_dataset(tmp_path_factory.mktemp("regions") / "Task05_Regions", spec)
    (raw / "regions.json").write_text(json.dumps({"regions": REGIONS, "regions_class_order": [1, 2, 3]}))
    return raw


def test_region_based_training_prediction_and_evaluation(brats_like, tmp_path, capsys):
    ws, out = tmp_path / "ws", tmp_path / "pred"
    assert main(["plan", str(brats_like), "-w", str(ws), "-j", "1"]) == 0
    assert "region-based: one sigmoid output per region" in capsys.readouterr().out
    name = json.loads((brats_like / "dataset.json").read_text())["name"]
    plans = api.load_context(ws, name).plans
    assert [r.name for r in plans.regions] == list(REGIONS) and plans.num_outputs == 3
    result = api.train(ws, name, "3d_fullres", "0", epochs=2, iterations_per_epoch=2, validation_iterations=1,
                       num_workers=0, progress=False)
    assert result.state.epoch == 2 and result.validation_dice is not None
    assert set(result.validation_dice) == set(REGIONS)  # scored by region
    log = [json.loads(line) for line in (Path(result.folder) / "log.jsonl").read_text().splitlines()]
    assert len(log[-1]["pseudo_dice"]) == 3 and np.isfinite(log[-1]["train_loss"])

    api.predict(ws, name, brats_like / "imagesTs", out, "3d_fullres", ["0"], progress=False)
    for f in sorted(out.glob("*.nii.gz")):
        seg, _ = read_label(f)
        assert set(np.unique(seg)) <= {0, 1, 2, 3}  # regions_class_order values only
    assert main(["evaluate", str(out), str(brats_like / "labelsTs"), "--regions", "whole tumour=1,2,3,4",
                 "tumour core=2,3,4", "enhancing tumour=3,4"]) == 0
    assert "whole tumour" in capsys.readouterr().out
