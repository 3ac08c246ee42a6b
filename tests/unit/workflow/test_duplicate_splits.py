"""Duplicate images found at plan time share a cross-validation fold, whether the splits are made by planning
(with preprocessing) or later, when training needs them."""

import json
import shutil

import pytest

from autoseg.workflow.context import load_context
from autoseg.workflow.plan import plan


@pytest.fixture(scope="module")
def raw_with_copy(tiny_raw, tmp_path_factory):
    """The tiny dataset plus ``tiny_copy``, an exact copy of ``tiny_000`` (nnU-Net's folds separate the two)."""
    raw = tmp_path_factory.mktemp("dup") / tiny_raw.name
    shutil.copytree(tiny_raw, raw)
    meta = json.loads((raw / "dataset.json").read_text())
    for folder in ("imagesTr", "labelsTr"):
        shutil.copy(raw / folder / "tiny_000.nii.gz", raw / folder / "tiny_copy.nii.gz")
    meta["training"].append({"image": "./imagesTr/tiny_copy.nii.gz", "label": "./labelsTr/tiny_copy.nii.gz"})
    meta["numTraining"] = len(meta["training"])
    (raw / "dataset.json").write_text(json.dumps(meta))
    return raw


@pytest.mark.parametrize("when", ["plan", "train"])
def test_copies_share_a_fold(raw_with_copy, tmp_path, when):
    ws = tmp_path / "ws"
    result = plan(raw_with_copy, ws, num_workers=1, progress=False, preprocess=when == "plan")
    assert [g.case_ids for g in result.dataset_report.duplicates] == [("tiny_000", "tiny_copy")]
    if when == "train":
        assert not result.paths.splits.exists()
        load_context(ws, "Tiny", create_splits=True)
    splits = json.loads(result.paths.splits.read_text())
    assert len(splits) == 5 and all(f["val"] for f in splits)
    assert sorted(c for f in splits for c in f["val"]) == sorted([f"tiny_{i:03d}" for i in range(8)] + ["tiny_copy"])
    assert [{"tiny_000", "tiny_copy"} <= set(f["val"]) for f in splits].count(True) == 1
