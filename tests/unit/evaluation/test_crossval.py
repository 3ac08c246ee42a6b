"""Merging fold validation predictions and ensembling two configurations (fake fold folders, no training)."""

import os

import numpy as np
import pytest

from _selection_fakes import DATASET, make_workspace, probabilities, reference, remove_fold
from autoseg.data.splits import read_splits
from autoseg.errors import AutosegError
from autoseg.evaluation.crossval import ensemble_pair, merge_folds
from autoseg.io.image import read_label
from autoseg.schema.base import load_json
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.workspace import Workspace


def _splits(paths, spec):
    return read_splits(paths, [c.case_id for c in spec.training])


@pytest.fixture()
def fake(tmp_path):
    ws, ids = make_workspace(tmp_path)
    paths = Workspace(ws).dataset(DATASET)
    return paths, load_json(DatasetSpec, paths.dataset_spec), ids


def test_merge_covers_every_case_once_with_links(fake):
    paths, spec, ids = fake
    out = merge_folds(paths, "2d", spec, _splits(paths, spec), num_workers=1, progress=False)
    assert out == paths.crossval / "2d"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in ids]
    assert sorted(p.name for p in out.glob("*.npz")) == [f"{c}.npz" for c in ids]
    summary = load_json(EvaluationSummary, out / "summary.json")
    assert [c.case_id for c in summary.cases] == ids
    # 2d misses half of label 1 (32 of 64 voxels) and adds an 8-voxel blob: Dice 64 / 104
    assert summary.mean["1"].dice == pytest.approx(64 / 104)
    assert summary.mean["2"].dice == pytest.approx(1.0)
    src = next(paths.fold("2d", 0).root.glob("validation/*.npz"))
    assert os.path.samefile(src, out / src.name)  # a hard link, not a copy
    assert not list(paths.crossval.glob(".*partial"))


def test_merge_refuses_a_missing_fold(fake):
    paths, spec, _ = fake
    remove_fold(paths.root.parent, "3d_fullres", 3)
    with pytest.raises(AutosegError, match="fold 3 of 3d_fullres not trained"):
        merge_folds(paths, "3d_fullres", spec, _splits(paths, spec), progress=False)
    with pytest.raises(AutosegError) as e:  # every missing fold is listed
        merge_folds(paths, "3d_lowres", spec, _splits(paths, spec), progress=False)
    assert len(e.value.problems) == 2 and "fold 4 of 3d_lowres" in e.value.problems[1]
    assert not (paths.crossval / "3d_fullres").exists()


def test_merge_refuses_missing_validation_probabilities(fake):
    paths, spec, _ = fake
    next(paths.fold("2d", 1).root.glob("validation/*.npz")).unlink()
    with pytest.raises(AutosegError, match=r"fold 1 of 2d lacks the validation prediction"):
        merge_folds(paths, "2d", spec, _splits(paths, spec), progress=False)


def test_ensemble_averages_probabilities(fake):
    paths, spec, ids = fake
    for c in ("2d", "3d_fullres"):
        merge_folds(paths, c, spec, _splits(paths, spec), num_workers=1, progress=False)
    out = ensemble_pair(paths, "2d", "3d_fullres", spec, num_workers=2, progress=False)
    assert out.name == "ensemble__2d__3d_fullres"
    seg, geometry = read_label(out / f"{ids[0]}.nii.gz")
    mean = (probabilities("2d").astype(np.float16).astype(np.float32)
            + probabilities("3d_fullres").astype(np.float16).astype(np.float32)) / 2
    np.testing.assert_array_equal(seg, mean.argmax(0))
    expected = reference()
    expected[0:2, 0:2, 10:12] = 1  # the spurious blob both predict
    np.testing.assert_array_equal(seg, expected)  # each configuration's unsure mistakes are outvoted
    _, ref_geometry = read_label(paths.root.parent.parent / "raw" / DATASET / "labelsTr" / f"{ids[0]}.nii.gz")
    assert geometry == ref_geometry
    summary = load_json(EvaluationSummary, out / "summary.json")
    assert summary.mean["2"].dice == pytest.approx(1.0) and len(summary.cases) == len(ids)


def test_ensemble_needs_merged_configurations(fake):
    paths, spec, _ = fake
    merge_folds(paths, "2d", spec, _splits(paths, spec), num_workers=1, progress=False)
    with pytest.raises(AutosegError, match="3d_fullres missing .* merge its folds first"):
        ensemble_pair(paths, "2d", "3d_fullres", spec, progress=False)
