"""read_dataset_spec: both layouts (MSD, nnU-Net v2 raw) on tiny synthetic folders and on the real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import DatasetError
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.io.image import Geometry, write_image
from autoseg.schema.base import from_jsonable, to_jsonable
from autoseg.schema.dataset import CaseSpec, DatasetSpec

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
GEOM = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _img(path: Path, channels: int = 0) -> None:
    shape = (4, 5, 6) if not channels else (channels, 4, 5, 6)
    write_image(np.ones(shape, np.float32), GEOM, path)


def _msd(root: Path, cases=("a_1", "a_2"), test=("t_1",), channels=1, **extra) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for c in cases:
        _img(root / "imagesTr" / f"{c}.nii.gz", channels if channels > 1 else 0)
        _img(root / "labelsTr" / f"{c}.nii.gz")
    for c in test:
        _img(root / "imagesTs" / f"{c}.nii.gz", channels if channels > 1 else 0)
    data = {"name": "Tiny", "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": {str(i): f"ch{i}" for i in range(channels)},
            "labels": {"0": "background", "1": "fg"},
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test]}
    data.update(extra)
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def _nnunet(root: Path, cases=("liver_001", "liver_002"), test=("liver_100",), channels=2, **extra) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for c in cases:
        for k in range(channels):
            _img(root / "imagesTr" / f"{c}_{k:04d}.nii.gz")
        _img(root / "labelsTr" / f"{c}.nii.gz")
    for c in test:
        for k in range(channels):
            _img(root / "imagesTs" / f"{c}_{k:04d}.nii.gz")
    data = {"channel_names": {str(k): n for k, n in zip(range(channels), ("CT", "PET", "X"))},
            "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": len(cases),
            "file_ending": ".nii.gz"}
    data.update(extra)
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def _problems(raw: Path) -> tuple[str, ...]:
    with pytest.raises(DatasetError) as ei:
        read_dataset_spec(raw)
    return ei.value.problems


# ---------------------------------------------------------------------------------------------------------------
# valid layouts


def test_msd_3d(tmp_path):
    spec = read_dataset_spec(_msd(tmp_path / "Task01_Tiny"))
    assert spec.layout == "msd" and spec.name == "Tiny"
    assert spec.channel_names == ("ch0",) and spec.labels == ("background", "fg")
    assert spec.file_ending == ".nii.gz"
    assert spec.training == (CaseSpec("a_1", ("imagesTr/a_1.nii.gz",), "labelsTr/a_1.nii.gz"),
                             CaseSpec("a_2", ("imagesTr/a_2.nii.gz",), "labelsTr/a_2.nii.gz"))
    assert spec.test == (CaseSpec("t_1", ("imagesTs/t_1.nii.gz",), None),)
    assert spec.raw_dir == str((tmp_path / "Task01_Tiny").resolve())


def test_msd_4d_multichannel_one_file_per_case(tmp_path):
    spec = read_dataset_spec(_msd(tmp_path / "x", channels=2))
    assert spec.num_channels == 2 and spec.training[0].images == ("imagesTr/a_1.nii.gz",)


def test_msd_test_list_optional_and_labels_unordered(tmp_path):
    raw = _msd(tmp_path / "x", test=())
    data = json.loads((raw / "dataset.json").read_text())
    del data["test"]
    data["labels"] = {"2": "b", "0": "background", "1": "a"}
    (raw / "dataset.json").write_text(json.dumps(data))
    spec = read_dataset_spec(raw)
    assert spec.test == () and spec.labels == ("background", "a", "b")


def test_nnunetv2_discovery(tmp_path):
    spec = read_dataset_spec(_nnunet(tmp_path / "Dataset003_Liver"))
    assert spec.layout == "nnunetv2" and spec.name == "Liver"
    assert spec.channel_names == ("CT", "PET") and spec.labels == ("background", "liver", "tumour")
    assert spec.training[0] == CaseSpec("liver_001", ("imagesTr/liver_001_0000.nii.gz",
                                                      "imagesTr/liver_001_0001.nii.gz"), "labelsTr/liver_001.nii.gz")
    assert [c.case_id for c in spec.test] == ["liver_100"] and spec.test[0].label is None


def test_nnunetv2_without_imagests_and_unrelated_files_ignored(tmp_path):
    raw = _nnunet(tmp_path / "Dataset003_Liver", test=(), channels=1)
    (raw / "imagesTr" / ".DS_Store").write_text("x")
    (raw / "imagesTr" / "notes.txt").write_text("x")
    spec = read_dataset_spec(raw)
    assert len(spec.training) == 2 and spec.test == ()


def test_nnunetv2_explicit_dataset_listing(tmp_path):
    raw = _nnunet(tmp_path / "Dataset004_X", channels=1, test=())
    data = json.loads((raw / "dataset.json").read_text())
    data["dataset"] = {"first": {"images": ["./imagesTr/liver_002_0000.nii.gz"],
                                 "label": "labelsTr/liver_002.nii.gz"}}
    data["numTraining"] = 1
    (raw / "dataset.json").write_text(json.dumps(data))
    spec = read_dataset_spec(raw)
    assert spec.training == (CaseSpec("first", ("imagesTr/liver_002_0000.nii.gz",), "labelsTr/liver_002.nii.gz"),)


def _msd_lists_with_nnunet_keys(root: Path, image_ending: str, label_ending: str, test_ending: str) -> Path:
    """nnU-Net v2's ``channel_names`` and name -> value ``labels`` over MSD ``training`` / ``test`` file lists,
    without ``file_ending``."""
    root.mkdir(parents=True)
    for c in ("a_1", "a_2"):
        _img(root / "imagesTr" / f"{c}{image_ending}", 2)
        _img(root / "labelsTr" / f"{c}{label_ending}")
    _img(root / "imagesTs" / f"t_1{test_ending}", 2)
    data = {"name": "Hybrid", "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "fg": 1},
            "numTraining": 2, "training": [{"image": f"./imagesTr/{c}{image_ending}",
                                            "label": f"./labelsTr/{c}{label_ending}"} for c in ("a_1", "a_2")],
            "test": [f"./imagesTs/t_1{test_ending}"]}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("image, label, test, expected", [
    (".nii.gz", ".nii.gz", ".nii.gz", ".nii.gz"),
    (".mha", ".mha", ".mha", ".mha"),
    (".nrrd", ".nrrd", ".nrrd", ".nrrd"),
    (".nii.gz", ".mha", ".nii.gz", "'.mha', '.nii.gz'"),
    (".nii.gz", ".nii.gz", ".nrrd", "'.nii.gz', '.nrrd'"),
])
def test_file_ending_of_msd_lists_under_nnunet_keys(tmp_path, image, label, test, expected):
    raw = _msd_lists_with_nnunet_keys(tmp_path / "Dataset005_Hybrid", image, label, test)
    if expected.startswith("'"):
        problems = _problems(raw)
        assert problems == (f"{raw / 'dataset.json'}: no 'file_ending', and the files listed in 'training' / "
                            f"'test' end in {expected}; list files of one format or give 'file_ending'",)
        return
    spec = read_dataset_spec(raw)
    assert spec.file_ending == expected and spec.layout == "msd"
    assert spec.channel_names == ("T1", "T2") and spec.labels == ("background", "fg")
    assert spec.training == tuple(CaseSpec(c, (f"imagesTr/{c}{image}",), f"labelsTr/{c}{label}")
                                  for c in ("a_1", "a_2"))
    assert spec.test == (CaseSpec("t_1", (f"imagesTs/t_1{test}",), None),)


def test_name_fallback_and_sanitising(tmp_path):
    raw = _msd(tmp_path / "Task07_Pancreas")
    data = json.loads((raw / "dataset.json").read_text())
    del data["name"]
    (raw / "dataset.json").write_text(json.dumps(data))
    assert read_dataset_spec(raw).name == "Pancreas"
    data["name"] = "Brain Tumour/2"
    (raw / "dataset.json").write_text(json.dumps(data))
    assert read_dataset_spec(raw).name == "Brain_Tumour_2"


def test_spec_roundtrips_through_json(tmp_path):
    spec = read_dataset_spec(_nnunet(tmp_path / "Dataset003_Liver"))
    assert from_jsonable(DatasetSpec, json.loads(json.dumps(to_jsonable(spec)))) == spec


# ---------------------------------------------------------------------------------------------------------------
# problems: collected together, one line each, naming dataset.json or the file


def test_all_problems_collected_in_one_error(tmp_path):
    raw = _msd(tmp_path / "x", numTraining=5)
    data = json.loads((raw / "dataset.json").read_text())
    data["labels"] = {"0": "background", "2": "b"}
    data["modality"] = {"0": ""}
    data["training"].append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
    (raw / "dataset.json").write_text(json.dumps(data))
    problems = _problems(raw)
    jpath = str(raw / "dataset.json")
    assert any(p.startswith(jpath) and "consecutive" in p for p in problems)
    assert any(p.startswith(jpath) and "empty or non-string name" in p for p in problems)
    assert any(p.startswith(jpath) and "numTraining" in p for p in problems)
    assert f"{raw / 'imagesTr/gone.nii.gz'}: listed in dataset.json training[2].image but not found" in problems
    assert any(p.startswith(str(raw / "labelsTr/gone.nii.gz")) for p in problems)
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize("labels, keyword", [
    ({"0": "background"}, "no foreground"),
    ({"1": "a", "2": "b"}, "no background value 0"),
    ({"0": "background", "1": "a", "x": "b"}, "not an integer"),
    ({"0": "background", "1": "a", "2": "a"}, "unique"),
    ([0, 1], "must be an object"),
])
def test_msd_label_problems(tmp_path, labels, keyword):
    raw = _msd(tmp_path / "x", labels=labels)
    assert any(keyword in p for p in _problems(raw)), _problems(raw)


@pytest.mark.parametrize("labels, keyword", [
    ({"background": 0, "a": 1, "b": 1}, "used by both"),
    ({"background": 0, "a": [1, 2]}, "'regions_class_order' is missing"),
    ({"background": 0, "a": [1]}, "one-value list"),
    ({"background": 0, "a": "1"}, "integer value"),
    ({"0": "background", "1": "a"}, "MSD-style"),
    ({"background": 0, "ignore": 1, "a": 2}, "'ignore' label must have the highest value (2), found 1"),
    ({"background": 0, "ignore": 1}, "no foreground label besides 'ignore'"),
])
def test_nnunetv2_label_problems(tmp_path, labels, keyword):
    raw = _nnunet(tmp_path / "x", labels=labels)
    assert any(keyword in p for p in _problems(raw)), _problems(raw)


def test_nnunetv2_file_problems(tmp_path):
    raw = _nnunet(tmp_path / "x")
    (raw / "imagesTr" / "liver_001_0001.nii.gz").unlink()
    (raw / "labelsTr" / "liver_002.nii.gz").unlink()
    _img(raw / "imagesTr" / "liver_003_0002.nii.gz")  # a third channel, but 2 are declared
    _img(raw / "imagesTr" / "badname.nii.gz")
    _img(raw / "labelsTr" / "orphan.nii.gz")
    problems = _problems(raw)
    expect = {"imagesTr/liver_001_0001.nii.gz": "missing channel file",
              "labelsTr/liver_002.nii.gz": "missing label file",
              "imagesTr/liver_003_0002.nii.gz": "channel 2 but dataset.json declares only 2",
              "imagesTr/badname.nii.gz": "does not follow",
              "labelsTr/orphan.nii.gz": "label without image files"}
    for f, kw in expect.items():
        assert any(p.startswith(str(raw / f)) and kw in p for p in problems), (f, problems)


def test_layout_and_key_problems(tmp_path):
    raw = tmp_path / "x"
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "a"}}))
    assert any("neither 'modality'" in p for p in _problems(raw))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0,
                                                                                          "a": 1}}))
    problems = _problems(raw)
    assert any("file_ending" in p for p in problems)
    (raw / "dataset.json").write_text("[1, 2]")
    assert any("top level" in p for p in _problems(raw))
    (raw / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI", "1": "T2"}, "tensorImageSize": "3D",
                                                  "labels": {"0": "background", "1": "a"}, "training": []}))
    problems = _problems(raw)
    assert any("tensorImageSize" in p for p in problems) and any("'training' is empty" in p for p in problems)


def test_missing_folder(tmp_path):
    assert _problems(tmp_path / "nope") == (f"{tmp_path / 'nope'}: folder not found",)


def test_paths_in_messages_as_given(tmp_path, monkeypatch):
    _msd(tmp_path / "Task01_Tiny")
    (tmp_path / "Task01_Tiny" / "labelsTr" / "a_2.nii.gz").unlink()
    monkeypatch.chdir(tmp_path)
    assert _problems(Path("Task01_Tiny")) == (
        "Task01_Tiny/labelsTr/a_2.nii.gz: listed in dataset.json training[1].label but not found",)


# ---------------------------------------------------------------------------------------------------------------
# the real data


def _real(name: str) -> Path:
    raw = DATA / name
    if not (raw / "dataset.json").is_file():
        pytest.skip(f"real dataset not found at {raw}")
    return raw


def test_real_hippocampus():
    spec = read_dataset_spec(_real("Task04_Hippocampus"))
    assert spec.layout == "msd" and spec.name == "Hippocampus"
    assert len(spec.training) == 208 and len(spec.test) == 53
    assert spec.labels == ("background", "Anterior", "Posterior") and spec.channel_names == ("MRI",)
    assert spec.training[0] == CaseSpec("hippocampus_001", ("imagesTr/hippocampus_001.nii.gz",),
                                        "labelsTr/hippocampus_001.nii.gz")
    assert len({c.case_id for c in spec.training + spec.test}) == 261


def test_real_brats():
    spec = read_dataset_spec(_real("BraTS2015_DeepMedicSubset"))
    assert spec.num_channels == 2 and spec.channel_names == ("FLAIR", "T1c")
    assert spec.num_classes == 5 and len(spec.training) == 6 and spec.test == ()
    assert all(len(c.images) == 1 for c in spec.training)  # one 4D file per case


def test_ignore_label_is_the_highest_value_and_not_a_class(tmp_path):
    raw = _nnunet(tmp_path / "x", labels={"background": 0, "a": 1, "ignore": 2})
    spec = read_dataset_spec(raw)
    assert spec.labels == ("background", "a") and spec.ignore_label == 2 and spec.num_classes == 2


# ---------------------------------------------------------------------------------------------------------------
# regions

BRATS = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": 3}


def test_nnunetv2_regions_in_declaration_order(tmp_path):
    raw = _nnunet(tmp_path / "x", labels={**BRATS, "ignore": 4}, regions_class_order=[1, 2, 3])
    spec = read_dataset_spec(raw)
    assert [(r.name, r.labels) for r in spec.regions] == [("whole tumour", (1, 2, 3)), ("tumour core", (2, 3)),
                                                          ("enhancing tumour", (3,))]
    assert spec.regions_class_order == (1, 2, 3) and spec.ignore_label == 4
    assert spec.labels == ("background", "label_1", "label_2", "enhancing tumour")


def test_msd_regions_side_file(tmp_path):
    raw = _msd(tmp_path / "m", labels={"0": "background", "1": "necrosis", "2": "oedema", "3": "enhancing"})
    (raw / "regions.json").write_text(json.dumps({"regions": {"whole": [1, 2, 3], "core": [1, 3], "enh": [3]},
                                                  "regions_class_order": [2, 1, 3]}))
    spec = read_dataset_spec(raw)
    assert [r.labels for r in spec.regions] == [(1, 2, 3), (1, 3), (3,)] and spec.regions_class_order == (2, 1, 3)
    assert spec.labels == ("background", "necrosis", "oedema", "enhancing")


@pytest.mark.parametrize("labels, order, keyword", [
    (BRATS, None, "'regions_class_order' is missing"),
    (BRATS, [1, 2], "has 2 entries for 3 regions"),
    (BRATS, [1, 2, 7], "label value(s) [7] that no region holds"),
    (BRATS, [1, 2, [3]], "must be a list of 3 label values"),
    ({"background": 0, "a": [1, 3]}, [1], "consecutive 1..K, found [1, 3]"),
    ({"background": 0, "a": [0, 1, 2]}, [1], "includes the background 0"),
    ({**BRATS, "ignore": 2}, [1, 2, 3], "'ignore' label must have the highest value (4)"),
    ({"background": 0, "a": 1, "b": 2}, [1, 2], "no label is a region"),
])
def test_region_declaration_problems_are_one_line_each(tmp_path, labels, order, keyword):
    extra = {"labels": labels} | ({"regions_class_order": order} if order is not None else {})
    problems = _problems(_nnunet(tmp_path / "x", **extra))
    assert len(problems) == 1 and keyword in problems[0], problems


def test_msd_regions_naming_undeclared_labels(tmp_path):
    raw = _msd(tmp_path / "m")
    (raw / "regions.json").write_text(json.dumps({"regions": {"whole": [1, 2]}, "regions_class_order": [1]}))
    problems = _problems(raw)
    assert len(problems) == 1 and "regions.json: region 'whole' names label value(s) [2]" in problems[0]
