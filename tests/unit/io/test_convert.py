"""``autoseg convert``: a DRIVE-like folder (TIFF images, GIF 0/255 labels and masks with other suffixes) and a
3D NIfTI folder with its own naming become raw datasets; every unmatched file, missing partner and unmapped
value is one line naming the file, and nothing is written then."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoseg.errors import AutosegError
from autoseg.io.convert import ConvertSpec, convert, parse_label_map
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.io.image import Geometry, read_label, write_image
from autoseg.io.verify import load_and_check_case

RNG = np.random.default_rng(1)


def _drive_like(root: Path, n_train: int = 3, n_test: int = 2) -> Path:
    for sub in ("training/images", "training/1st_manual", "training/mask", "test/images", "test/mask"):
        (root / sub).mkdir(parents=True)
    for i in range(n_train + n_test):
        part, cid = ("training", f"{21 + i}") if i < n_train else ("test", f"{i - n_train + 1:02d}")
        rgb = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / part / "images" / f"{cid}_{part}.tif")
        fov = np.zeros((20, 24), np.uint8)
        fov[2:18, 3:21] = 255
        Image.fromarray(fov).save(root / part / "mask" / f"{cid}_{part}_mask.gif")
        if part == "training":
            vessels = np.where(RNG.random((20, 24)) > 0.8, 255, 0).astype(np.uint8) * (fov > 0)
            Image.fromarray(vessels).save(root / "training" / "1st_manual" / f"{cid}_manual1.gif")
    return root


SPEC = ConvertSpec(images=("training/images/{case}_training.tif",), labels="training/1st_manual/{case}_manual1.gif",
                   roi="training/mask/{case}_training_mask.gif", test_images=("test/images/{case}_test.tif",),
                   test_roi="test/mask/{case}_test_mask.gif", label_map={255: 1},
                   label_names=("background", "vessel"), name="DRIVElike")


def test_drive_like_folder_converts_to_a_raw_dataset_autoseg_verifies(tmp_path):
    src = _drive_like(tmp_path / "src")
    out = convert(src, tmp_path / "raw", SPEC, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["file_ending"] == ".tif" and meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["source_label_values"] == {"background": 0, "vessel": 255}
    spec = read_dataset_spec(out)
    assert [c.case_id for c in spec.training] == ["21", "22", "23"] and [c.case_id for c in spec.test] == ["01", "02"]
    assert spec.source_label_values == (0, 255) and spec.has_roi
    case = spec.training[0]
    loaded = load_and_check_case(out, spec, case)
    assert loaded.ok and loaded.image.shape == (3, 1, 20, 24)
    source = np.asarray(Image.open(src / "training/1st_manual/21_manual1.gif").convert("L"))
    np.testing.assert_array_equal(loaded.label[0], source // 255)  # 255 -> 1
    np.testing.assert_array_equal(loaded.roi[0], np.asarray(Image.open(src / "training/mask/21_training_mask.gif").convert("L")) > 0)
    # images are the source files, unchanged
    assert (out / case.images[0]).read_bytes() == (src / "training/images/21_training.tif").read_bytes()


@pytest.mark.parametrize("damage, expected", [
    (lambda s: (s / "training/images/notes.txt").write_text("x"), "notes.txt: matches no pattern"),
    (lambda s: (s / "training/1st_manual/22_manual1.gif").unlink(), "22_training.tif: case '22' has no label"),
    (lambda s: (s / "training/images/23_training.tif").unlink(), "23_manual1.gif: case '23' has no image"),
    (lambda s: (s / "test/mask/01_test_mask.gif").unlink(), "01_test.tif: case '01' has no region-of-interest mask"),
    (lambda s: Image.fromarray(np.full((20, 24), 128, np.uint8)).save(s / "training/1st_manual/21_manual1.gif"),
     "21_manual1.gif: label value(s) 128 not mapped"),
    (lambda s: Image.fromarray(np.zeros((10, 24), np.uint8)).save(s / "training/1st_manual/21_manual1.gif"),
     "21_manual1.gif: label map of 24x10 pixels (width x height), its image 21_training.tif has 24x20"),
    (lambda s: Image.fromarray(np.full((20, 24, 3), (200, 0, 0), np.uint8)).save(  # true RGB pixels
        s / "training/1st_manual/21_manual1.gif", format="PNG"), "21_manual1.gif: label map is an RGB image"),
    (lambda s: Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(s / "test/images/09_test.png"),
     "09_test.png: matches no pattern"),
])
def test_every_problem_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, damage, expected):
    src = _drive_like(tmp_path / "src")
    damage(src)
    with pytest.raises(AutosegError) as e:
        convert(src, tmp_path / "raw", SPEC, progress=False)
    assert any(expected in p for p in e.value.problems), e.value.problems
    assert len(e.value.problems) == 1, e.value.problems
    assert not (tmp_path / "raw").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_mixed_formats_and_bad_patterns_are_refused(tmp_path):
    src = _drive_like(tmp_path / "src")
    with pytest.raises(AutosegError, match="needs \\{case\\} exactly once"):
        convert(src, tmp_path / "raw", ConvertSpec(("training/images/x.tif",), SPEC.labels), progress=False)
    with pytest.raises(AutosegError, match="must be relative"):
        convert(src, tmp_path / "raw", ConvertSpec(("../{case}.tif",), SPEC.labels), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(AutosegError, match="not empty"):
        convert(src, tmp_path / "busy", SPEC, progress=False)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_spec_file_and_label_map_parsing(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"images": "a/{case}.png", "labels": "b/{case}.png",
                                                 "label_map": {"255": 1}}))
    spec = ConvertSpec.from_json(tmp_path / "s.json")
    assert spec.images == ("a/{case}.png",) and spec.label_map == {255: 1}
    (tmp_path / "t.json").write_text(json.dumps({"images": "a/{case}.png", "labels": "b", "colour": 1}))
    with pytest.raises(AutosegError, match="unknown key"):
        ConvertSpec.from_json(tmp_path / "t.json")
    with pytest.raises(AutosegError, match="SOURCE=LABEL"):
        parse_label_map(["255:1"])


def test_a_mapping_beyond_the_label_names_is_refused(tmp_path):
    from dataclasses import replace

    src = _drive_like(tmp_path / "src")
    with pytest.raises(AutosegError, match="beyond the 2 label names"):
        convert(src, tmp_path / "raw", replace(SPEC, label_map={255: 5}), progress=False)
    assert not (tmp_path / "raw").exists()


def test_3d_nifti_folder_with_other_naming_and_two_channels(tmp_path):
    src = tmp_path / "scans"
    (src / "img").mkdir(parents=True)
    (src / "seg").mkdir()
    g = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for cid in ("p1", "p2"):
        for mod in ("t1", "t2"):
            write_image(RNG.random((6, 8, 8)).astype(np.float32), g, src / "img" / f"{cid}-{mod}.nii.gz")
        lab = np.zeros((6, 8, 8), np.uint8)
        lab[2:4, 2:5, 2:5] = 10
        write_image(lab, g, src / "seg" / f"{cid}-mask.nii.gz")
    spec = ConvertSpec(("img/{case}-t1.nii.gz", "img/{case}-t2.nii.gz"), "seg/{case}-mask.nii.gz",
                       label_map={10: 1}, channel_names=("T1", "T2"))
    out = convert(src, tmp_path / "Dataset001_Scans", spec, progress=False)
    ds = read_dataset_spec(out)
    assert ds.channel_names == ("T1", "T2") and ds.file_ending == ".nii.gz"
    assert ds.training[0].images == ("imagesTr/p1_0000.nii.gz", "imagesTr/p1_0001.nii.gz")
    label, geometry = read_label(out / ds.training[0].label)
    assert set(np.unique(label)) == {0, 1} and geometry.spacing == (2.0, 1.0, 1.0)
    assert ds.source_label_values == (0, 10)
    assert load_and_check_case(out, ds, ds.training[1]).ok


def test_a_killed_converts_folder_is_removed_by_the_next_convert(tmp_path):
    import tempfile

    src = _drive_like(tmp_path / "src")
    killed = Path(tempfile.mkdtemp(prefix=".raw.", suffix=".converting", dir=tmp_path))  # what a SIGKILL leaves
    (killed / "imagesTr").mkdir()
    (killed / "imagesTr" / "21_0000.tif").write_bytes(b"half")
    other = Path(tempfile.mkdtemp(prefix=".raw2.", suffix=".converting", dir=tmp_path))  # another target's
    out = convert(src, tmp_path / "raw", SPEC, progress=False)
    assert not killed.exists() and other.is_dir() and (out / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", "raw", other.name])
