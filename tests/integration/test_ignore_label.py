"""Sparse annotation with nnU-Net's ignore label: a tiny dataset whose labels are kept on every third slice only
(the rest 'ignore') plans, trains, validates and evaluates, the ignored voxels counting nowhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg import api
from autoseg.errors import DatasetError
from autoseg.io.image import read_label, write_image
from autoseg.preprocessing.store import CaseStore
from autoseg.schema.dataset import IGNORE

IGNORE_VALUE = 3  # tiny has background + 2 classes


def _sparsify(raw: Path, keep_every: int = 3) -> None:
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"][str(IGNORE_VALUE)] = "ignore"
    (raw / "dataset.json").write_text(json.dumps(meta))
    for entry in meta["training"]:
        path = raw / entry["label"]
        label, geometry = read_label(path)
        sparse = np.full_like(label, IGNORE_VALUE)
        sparse[::keep_every] = label[::keep_every]
        write_image(sparse.astype(np.uint8), geometry, path)


@pytest.fixture(scope="module")
def sparse_raw(tiny_raw, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("sparse") / "Task02_Sparse"
    shutil.copytree(tiny_raw, raw)
    _sparsify(raw)
    return raw


def test_sparse_labels_plan_train_validate_and_evaluate(sparse_raw, tmp_path):
    ws = tmp_path / "ws"
    result = api.plan(sparse_raw, ws, progress=False)
    spec = api.load_context(ws, result.plans.dataset_name).spec
    assert spec.ignore_label == IGNORE_VALUE and result.plans.labels == ("background", "liver", "spleen")
    ctx = api.load_context(ws, result.plans.dataset_name)
    # the preprocessed segmentations carry IGNORE, random patches are drawn from the annotated voxels
    folder = next(p for p in (ws / result.plans.dataset_name / "preprocessed").iterdir() if p.is_dir())
    _, seg, locs, _ = CaseStore(folder).load(spec.training[0].case_id)
    assert (seg == IGNORE).any() and (seg >= 0).any() and 0 in locs

    trained = api.train(ws, result.plans.dataset_name, "3d_fullres", "0", epochs=2, iterations_per_epoch=2,
                        validation_iterations=1, num_workers=0, progress=False)
    assert trained.state.epoch == 2
    summary = json.loads(ctx.fold("3d_fullres", "0").validation_summary.read_text())
    assert set(summary["labels"]) == {1, 2}  # the ignore value is never a label to score

    # evaluation leaves the ignored voxels out: a prediction equal to the reference on annotated voxels and
    # anything elsewhere scores Dice 1
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    case = spec.training[0]
    label, geometry = read_label(sparse_raw / case.label)
    noisy = np.where(label == IGNORE_VALUE, 1, label).astype(np.uint8)
    write_image(label.astype(np.uint8), geometry, ref / f"{case.case_id}.nii.gz")
    write_image(noisy, geometry, pred / f"{case.case_id}.nii.gz")
    scored = api.evaluate(pred, ref, workspace=ws, dataset=result.plans.dataset_name, progress=False)
    assert all(m.dice == pytest.approx(1.0) for m in scored.mean.values() if m.dice is not None)


def test_a_case_entirely_ignored_is_an_error_naming_it(sparse_raw, tmp_path):
    raw = tmp_path / "Task03_Empty"
    shutil.copytree(sparse_raw, raw)
    entry = json.loads((raw / "dataset.json").read_text())["training"][1]
    label, geometry = read_label(raw / entry["label"])
    write_image(np.full_like(label, IGNORE_VALUE).astype(np.uint8), geometry, raw / entry["label"])
    with pytest.raises(DatasetError) as e:
        api.plan(raw, tmp_path / "ws", progress=False)
    assert any(Path(entry["label"]).name in p and "every voxel is the ignore label" in p for p in e.value.problems)
