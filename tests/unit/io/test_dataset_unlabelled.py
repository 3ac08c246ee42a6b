"""imagesTrUnlabelled/: found in both layouts, named as the layout names training images, never mixed with the
labelled cases; problems are one line each naming the file."""

import json

import pytest

from autoseg.errors import DatasetError
from autoseg.io.dataset_json import read_dataset_spec


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def msd(tmp_path, unlabelled=("u1.nii.gz", "u2.nii.gz")):
    raw = tmp_path / "Task09_X"
    for cid in ("a", "b"):
        _touch(raw / "imagesTr" / f"{cid}.nii.gz")
        _touch(raw / "labelsTr" / f"{cid}.nii.gz")
    for name in unlabelled:
        _touch(raw / "imagesTrUnlabelled" / name)
    (raw / "dataset.json").write_text(json.dumps({
        "name": "X", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "organ"}, "numTraining": 2,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in "ab"],
        "test": []}))
    return raw


def nnunetv2(tmp_path, unlabelled=("u1_0000.nii.gz", "u1_0001.nii.gz")):
    raw = tmp_path / "Dataset009_X"
    for cid in ("a", "b"):
        for ch in (0, 1):
            _touch(raw / "imagesTr" / f"{cid}_{ch:04d}.nii.gz")
        _touch(raw / "labelsTr" / f"{cid}.nii.gz")
    for name in unlabelled:
        _touch(raw / "imagesTrUnlabelled" / name)
    (raw / "dataset.json").write_text(json.dumps({
        "name": "X", "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return raw


def test_msd_unlabelled_images_are_one_file_per_case(tmp_path):
    spec = read_dataset_spec(msd(tmp_path))
    assert [(c.case_id, c.images, c.label) for c in spec.unlabelled_cases] == [
        ("u1", ("imagesTrUnlabelled/u1.nii.gz",), None), ("u2", ("imagesTrUnlabelled/u2.nii.gz",), None)]
    assert [c.case_id for c in spec.training] == ["a", "b"]


def test_nnunetv2_unlabelled_images_have_a_file_per_channel(tmp_path):
    spec = read_dataset_spec(nnunetv2(tmp_path))
    assert [(c.case_id, c.images) for c in spec.unlabelled_cases] == [
        ("u1", ("imagesTrUnlabelled/u1_0000.nii.gz", "imagesTrUnlabelled/u1_0001.nii.gz"))]


def test_without_the_folder_there_are_none_and_the_spec_json_is_unchanged(tmp_path):
    from autoseg.schema.base import to_jsonable

    raw = msd(tmp_path, unlabelled=())
    (raw / "imagesTrUnlabelled").rmdir() if (raw / "imagesTrUnlabelled").exists() else None
    spec = read_dataset_spec(raw)
    assert spec.unlabelled is None and spec.unlabelled_cases == ()
    assert "unlabelled" not in to_jsonable(spec)


@pytest.mark.parametrize("layout, names, expected", [
    ("msd", ("a.nii.gz",), "case id 'a' is also a labelled training case"),
    ("msd", ("u1.png",), "not a .nii.gz image"),
    ("nnunetv2", ("u1_0000.nii.gz",), "missing channel file"),
    ("nnunetv2", ("u1.nii.gz",), "does not follow <case>_<cccc>.nii.gz"),
])
def test_problems_are_one_line_naming_the_file(tmp_path, layout, names, expected):
    raw = (msd if layout == "msd" else nnunetv2)(tmp_path, unlabelled=names)
    with pytest.raises(DatasetError) as e:
        read_dataset_spec(raw)
    assert len(e.value.problems) == 1
    assert expected in e.value.problems[0] and str(raw / "imagesTrUnlabelled") in e.value.problems[0]


def test_an_empty_folder_is_reported(tmp_path):
    raw = msd(tmp_path, unlabelled=())
    (raw / "imagesTrUnlabelled").mkdir()
    with pytest.raises(DatasetError, match="folder is empty"):
        read_dataset_spec(raw)
