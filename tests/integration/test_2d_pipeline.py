"""The 2D path through the CLI, as a DRIVE user takes it: a folder of TIFF photographs with 0/255 GIF vessel
masks and field-of-view masks (other suffixes per kind) -> convert -> plan (2d only) -> train -> predict --roi
(TIFF label maps of the same size, 0/255, background outside the field of view) -> evaluate --roi."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoseg.cli import main
from autoseg.synthetic import fundus_case, preset

SPEC = preset("2d-rgb", num_training=6, num_test=2, shape=(1, 64, 64))


@pytest.fixture(scope="module")
def drive_like(tmp_path_factory) -> Path:
    """The synthetic fundus photographs in DRIVE's own layout and formats."""
    root = tmp_path_factory.mktemp("drive_like")
    for sub in ("training/images", "training/1st_manual", "training/mask", "test/images", "test/mask",
                "test/1st_manual"):
        (root / sub).mkdir(parents=True)
    for i in range(SPEC.num_training + SPEC.num_test):
        image, label, _, roi = fundus_case(SPEC, i)
        part, cid = ("training", f"{21 + i}") if i < SPEC.num_training else ("test", f"{i - SPEC.num_training + 1:02d}")
        Image.fromarray(np.moveaxis(image[:, 0].astype(np.uint8), 0, -1)).save(root / part / "images" /
                                                                                f"{cid}_{part}.tif")
        Image.fromarray((roi[0] * 255).astype(np.uint8)).save(root / part / "mask" / f"{cid}_{part}_mask.gif")
        Image.fromarray((label[0] * 255).astype(np.uint8)).save(root / part / "1st_manual" / f"{cid}_manual1.gif")
    return root


def test_drive_like_folder_from_convert_to_evaluated_predictions(drive_like, tmp_path, capsys):
    raw, ws, out = tmp_path / "raw", tmp_path / "ws", tmp_path / "pred"
    assert main(["convert", str(drive_like), str(raw), "--images", "training/images/{case}_training.tif",
                 "--labels", "training/1st_manual/{case}_manual1.gif", "--roi", "training/mask/{case}_training_mask.gif",
                 "--test-images", "test/images/{case}_test.tif", "--test-roi", "test/mask/{case}_test_mask.gif",
                 "--map", "255=1", "--label-names", "background", "vessel", "--name", "Fundus"]) == 0
    assert main(["plan", str(raw), "-w", str(ws), "-j", "1"]) == 0
    printed = capsys.readouterr().out
    assert "the 2d configuration only" in printed
    plans = json.loads((ws / "Fundus" / "plans.json").read_text())
    assert list(plans["configurations"]) == ["2d"]
    assert [n["scheme"] for n in plans["configurations"]["2d"]["normalization"]] == ["rgb_0_1"] * 3

    assert main(["train", "Fundus", "-w", str(ws), "-c", "2d", "-f", "0", "--epochs", "2",
                 "--iterations-per-epoch", "3", "--validation-iterations", "1", "-j", "0", "--no-validation-tta"]) == 0
    summary = json.loads((ws / "Fundus" / "models" / "2d" / "fold_0" / "validation" / "summary.json").read_text())
    assert summary["cases"]

    assert main(["predict", "Fundus", "-w", str(ws), "-i", str(raw / "imagesTs"), "-o", str(out), "-c", "2d",
                 "-f", "0", "--roi", str(raw / "roiTs"), "--no-tta"]) == 0
    written = sorted(p.name for p in out.iterdir() if p.suffix == ".tif")
    assert written == ["01.tif", "02.tif"]
    for name in written:
        pred = np.asarray(Image.open(out / name))
        src = Image.open(drive_like / "test" / "images" / f"{name[:2]}_test.tif")
        assert pred.shape == (src.size[1], src.size[0]) and pred.dtype == np.uint8
        assert set(np.unique(pred)) <= {0, 255}  # the source's values, not the label indices
        fov = np.asarray(Image.open(drive_like / "test" / "mask" / f"{name[:2]}_test_mask.gif").convert("L")) > 0
        assert not pred[~fov].any()  # background outside the field of view

    # scored inside the field of view against the references in their own format (0/255 GIF)
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in written:
        Image.open(drive_like / "test" / "1st_manual" / f"{name[:2]}_manual1.gif").convert("L").save(refs / name)
    assert main(["evaluate", str(out), str(refs), "--roi", str(raw / "roiTs")]) == 0
    scored = json.loads((out / "summary.json").read_text())
    assert scored["labels"] == [255] and len(scored["cases"]) == 2


def test_predict_refuses_a_missing_or_mismatched_mask_before_writing(drive_like, tmp_path, capsys):
    raw, ws, out = tmp_path / "raw", tmp_path / "ws", tmp_path / "pred"
    assert main(["convert", str(drive_like), str(raw), "--images", "training/images/{case}_training.tif",
                 "--labels", "training/1st_manual/{case}_manual1.gif", "--test-images", "test/images/{case}_test.tif",
                 "--map", "255=1"]) == 0
    assert main(["plan", str(raw), "-w", str(ws), "-j", "1", "--no-preprocess"]) == 0
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.ones((10, 10), np.uint8)).save(masks / "01.png")  # wrong size; 02 has none
    capsys.readouterr()
    assert main(["preprocess", "raw", "-w", str(ws)]) == 0
    assert main(["train", "raw", "-w", str(ws), "-c", "2d", "-f", "0", "--epochs", "1", "--iterations-per-epoch",
                 "1", "--validation-iterations", "1", "-j", "0", "--no-validation"]) == 0
    capsys.readouterr()
    code = main(["predict", "raw", "-w", str(ws), "-i", str(raw / "imagesTs"), "-o", str(out), "-c", "2d", "-f", "0",
                 "--roi", str(masks), "--no-tta"])
    err = capsys.readouterr().err
    assert code == 2 and "01.png: size 10x10 (width x height) differs" in err and "02.tif: region-of-interest " \
                                                                                  "mask of case '02' not found" in err
    assert not out.exists() or not any(out.iterdir())
