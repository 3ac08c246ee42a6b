"""Malformed prediction inputs and output locations: each gets one line naming the file and why, exit 2, and
nothing written; ``--skip-bad`` predicts the good cases, lists the bad ones in ``failures.json`` and exits 3.

The models are planned on tiny synthetic datasets and given untrained weights (the checks come before the network,
so training would only cost time): a 1-channel one (MSD layout) and a 2-channel one.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import api
from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.io.image import Geometry, read_image, write_image
from autoseg.nn.checkpoint import save_checkpoint
from autoseg.nn.unet import build_network

GEOM = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def _model(tmp_path_factory, preset: str) -> tuple[Path, str, Path]:
    from autoseg.synthetic import PRESETS, make_dataset

    root = tmp_path_factory.mktemp(preset)
    raw = make_dataset(root / f"Task09_{preset}", PRESETS[preset])
    ws = root / "ws"
    name = api.plan(raw, ws, progress=False, preprocess=False).plans.dataset_name
    ctx = api.load_context(ws, name)
    plan = ctx.configuration("3d_fullres")
    net = build_network(plan.architecture, ctx.plans.input_channels("3d_fullres"), len(ctx.plans.labels))
    save_checkpoint(ctx.fold("3d_fullres", "0").final_checkpoint,
                    {"model": net.state_dict(), "plans_sha256": ctx.plans_sha256})
    return ws, name, raw


@pytest.fixture(scope="module")
def one_channel(tmp_path_factory):
    return _model(tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    return _model(tmp_path_factory, "multichannel")


def _good(raw: Path) -> tuple[np.ndarray, Geometry]:
    return read_image([sorted((raw / "imagesTs").glob("*.nii.gz"))[0]])


def _truncated_gz(d: Path, raw: Path) -> Path:
    src = sorted((raw / "imagesTs").glob("*.nii.gz"))[0].read_bytes()
    (d / "cut.nii.gz").write_bytes(src[:len(src) // 2])
    return d / "cut.nii.gz"


def _with_value(value: float) -> Callable[[Path, Path], Path]:
    def make(d: Path, raw: Path) -> Path:
        image, geometry = _good(raw)
        image = image[0].copy()
        image[1, 2, 3] = value
        path = d / f"odd_{'nan' if np.isnan(value) else 'inf'}.nii.gz"
        write_image(image, geometry, path)
        return path
    return make


def _four_d(channels: int) -> Callable[[Path, Path], Path]:
    def make(d: Path, raw: Path) -> Path:
        image, geometry = _good(raw)
        write_image(np.repeat(image[:1], channels, axis=0), geometry, d / "multi.nii.gz")
        return d / "multi.nii.gz"
    return make


def _text(d: Path, raw: Path) -> Path:
    (d / "notes.nii.gz").write_text("not an image\n")
    return d / "notes.nii.gz"


def _empty(d: Path, raw: Path) -> Path:
    (d / "empty.nii.gz").write_bytes(b"")
    return d / "empty.nii.gz"


def _two_d(d: Path, raw: Path) -> Path:
    image, _ = _good(raw)
    sitk.WriteImage(sitk.GetImageFromArray(image[0, 0]), str(d / "slice.nii.gz"))
    return d / "slice.nii.gz"


def _tail_cut_gz(d: Path, raw: Path) -> Path:
    src = sorted((raw / "imagesTs").glob("*.nii.gz"))[0].read_bytes()
    (d / "tail.nii.gz").write_bytes(src[:-64])  # only the end of the stream (and its checksum) missing
    return d / "tail.nii.gz"


def _short_payload_gz(d: Path, raw: Path) -> Path:
    image, geometry = _good(raw)
    write_image(image[0], geometry, d / "full.nii", compress=False)
    data = (d / "full.nii").read_bytes()
    (d / "full.nii").unlink()
    (d / "short.nii.gz").write_bytes(gzip.compress(data[:len(data) - 1000]))  # a complete stream, too few voxels
    return d / "short.nii.gz"


def _rgb(d: Path, raw: Path) -> Path:
    image, _ = _good(raw)
    vec = sitk.GetImageFromArray(np.stack([image[0]] * 3, axis=-1), isVector=True)
    sitk.WriteImage(vec, str(d / "rgb.nii.gz"))
    return d / "rgb.nii.gz"


def _folder(d: Path, raw: Path) -> Path:
    (d / "series.nii.gz").mkdir()
    return d / "series.nii.gz"


def _nifti_header_only(d: Path, raw: Path) -> Path:
    image, _ = _good(raw)
    img = nib.Nifti1Image(image[0].T, np.eye(4))
    (d / "header.nii.gz").write_bytes(gzip.compress(img.header.binaryblock + b"\0" * 4))
    return d / "header.nii.gz"


def _gzip_garbage(d: Path, raw: Path) -> Path:
    (d / "junk.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    return d / "junk.nii.gz"


# (variant, writer, fragment of the one-line problem); the 1-channel model
ONE_CHANNEL = [
    ("truncated .nii.gz", _truncated_gz, "truncated or corrupt compressed file"),
    ("NaN voxels", _with_value(np.nan), "1 NaN voxel values"),
    ("infinite voxels", _with_value(np.inf), "1 infinite voxel values"),
    ("2-channel 4D for a 1-channel model", _four_d(2), "4D image with 2 channels, but the model expects 1 channel"),
    ("not an image", _text, "cannot be read as an image"),
    ("empty file", _empty, "cannot be read as an image"),
    ("2D image for a 3D model", _two_d, "2D image, expected 3D"),
    ("end of the gzip stream cut", _tail_cut_gz, "truncated or corrupt compressed file"),
    ("complete gzip stream, too few voxels", _short_payload_gz, "file is truncated"),
    ("RGB pixels", _rgb, "components per voxel"),
    ("a folder named like an image", _folder, "a folder, not an image file"),
    ("NIfTI header without voxels", _nifti_header_only, "file is truncated"),
    ("gzip of no image", _gzip_garbage, "cannot be read as an image"),
]


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _inputs(tmp_path: Path, raw: Path, bad: Callable[[Path, Path], Path] | None) -> tuple[Path, Path | None]:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(sorted((raw / "imagesTs").glob("*.nii.gz"))[0], d / "good.nii.gz")
    (d / "README.txt").write_text("stray files without the image ending are ignored\n")
    return d, (bad(d, raw) if bad else None)


@pytest.mark.parametrize("variant, make, fragment", ONE_CHANNEL, ids=[v[0] for v in ONE_CHANNEL])
def test_bad_input_stops_before_anything_is_written(one_channel, tmp_path, capsys, variant, make, fragment):
    ws, name, raw = one_channel
    images, bad_file = _inputs(tmp_path, raw, make)
    out = tmp_path / "out"
    code = _run(["predict", name, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "3d_fullres", "-f", "0",
                 "--no-tta"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines[0].startswith(f"error: {bad_file}: ") and fragment in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


def test_skip_bad_predicts_the_good_ones_and_lists_the_bad(one_channel, tmp_path, capsys):
    ws, name, raw = one_channel
    images, _ = _inputs(tmp_path, raw, None)
    bad = [make(images, raw) for _, make, _ in ONE_CHANNEL[:3]]
    out = tmp_path / "out"
    argv = ["predict", name, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "3d_fullres", "-f", "0",
            "--no-tta", "--skip-bad"]
    assert _run(argv) == 3
    err = capsys.readouterr().err
    assert all(str(b) in err for b in bad) and "3 input case(s) refused" in err
    assert (out / "good.nii.gz").is_file()
    assert not any((out / b.name).exists() for b in bad)
    failures = json.loads((out / "failures.json").read_text())["failures"]
    assert sorted(f["case"] for f in failures) == sorted(b.name.split(".")[0] for b in bad)
    assert all(f["problems"] and f["problems"][0].startswith(str(images)) for f in failures)
    # the bad files mended: a second run (continue) predicts them and the failures list goes away
    for b in bad:
        shutil.copy(images / "good.nii.gz", b)
    assert _run([*argv, "--continue"]) == 0
    assert not (out / "failures.json").exists() and all((out / b.name).is_file() for b in bad)


def _channel_files(d: Path, raw: Path, change: str) -> Path:
    image, geometry = read_image([sorted((raw / "imagesTs").glob("*.nii.gz"))[0]])
    write_image(image[0], geometry, d / "case_0000.nii.gz")
    second = d / "case_0001.nii.gz"
    if change == "spacing":
        write_image(image[1], Geometry((9.0, 9.0, 9.0), geometry.origin, geometry.direction), second)
    elif change == "size":
        write_image(image[1, :-2], geometry, second)
    elif change == "origin":
        write_image(image[1], Geometry(geometry.spacing, (40.0, 0.0, 0.0), geometry.direction), second)
    elif change == "missing":
        write_image(image[1], geometry, d / "other_0000.nii.gz")
        write_image(image[1], geometry, d / "other_0001.nii.gz")
        return d / "case_0000.nii.gz"
    elif change == "3D for two channels":
        (d / "case_0000.nii.gz").unlink()
        write_image(image[0], geometry, d / "single.nii.gz")
        write_image(image, geometry, d / "both.nii.gz")
        return d / "single.nii.gz"
    return second


@pytest.mark.parametrize("change, fragment", [
    ("spacing", "spacing (9, 9, 9) mm (z,y,x) differs from the channel 0 file"),
    ("size", "differs from the channel 0 file"),
    ("origin", "origin (40, 0, 0) mm (x,y,z) differs from the channel 0 file"),
    ("missing", "case case has channel files [0], the model expects [0, 1]"),
    ("3D for two channels", "3D image (1 channel), but the model expects 2 channels"),
])
def test_channels_of_one_case_must_agree(two_channels, tmp_path, capsys, change, fragment):
    ws, name, raw = two_channels
    images = tmp_path / "in"
    images.mkdir()
    bad_file = _channel_files(images, raw, change)
    out = tmp_path / "out"
    assert _run(["predict", name, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "3d_fullres", "-f", "0",
                 "--no-tta"]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad_file}: " in err and fragment in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("where, fragment", [
    ("file", "output path is an existing file"),
    ("inside", "output folder is inside the input folder"),
    ("under a file", "is a file, so the output folder"),
])
def test_output_location_is_checked_before_work(one_channel, tmp_path, capsys, where, fragment):
    ws, name, raw = one_channel
    images, _ = _inputs(tmp_path, raw, None)
    out = {"file": tmp_path / "taken", "inside": images / "predictions",
           "under a file": tmp_path / "taken" / "out"}[where]
    (tmp_path / "taken").write_text("a file the user cares about\n")
    assert _run(["predict", name, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "3d_fullres", "-f", "0",
                 "--no-tta"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "a file the user cares about\n"
    assert sorted(p.name for p in images.iterdir()) == ["README.txt", "good.nii.gz"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere, so permissions cannot be tested as root")
def test_output_folder_not_writable(one_channel, tmp_path, capsys):
    ws, name, raw = one_channel
    images, _ = _inputs(tmp_path, raw, None)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert _run(["predict", name, "-w", str(ws), "-i", str(images), "-o", str(locked / "out"), "-c",
                     "3d_fullres", "-f", "0", "--no-tta"]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_output_folder_not_writable_as_any_user(one_channel, tmp_path, capsys, monkeypatch):
    """The same check where the suite runs as root: the permission test is the file system's (os.access)."""
    import autoseg.inference.run as run

    ws, name, raw = one_channel
    images, _ = _inputs(tmp_path, raw, None)
    monkeypatch.setattr(run.os, "access", lambda path, mode: Path(path) != tmp_path)
    assert _run(["predict", name, "-w", str(ws), "-i", str(images), "-o", str(tmp_path / "out"), "-c",
                 "3d_fullres", "-f", "0", "--no-tta"]) == 2
    assert f"{tmp_path}: not writable (permission denied)" in capsys.readouterr().err


def test_empty_or_missing_input_folder(one_channel, tmp_path, capsys):
    ws, name, _ = one_channel
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("no images\n")
    for folder, fragment in ((tmp_path / "empty", "no .nii.gz images in the folder"),
                             (tmp_path / "missing", "input folder not found")):
        assert _run(["predict", name, "-w", str(ws), "-i", str(folder), "-o", str(tmp_path / "out"), "-c",
                     "3d_fullres", "-f", "0"]) == 2
        assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_python_predictor_checks_arrays(one_channel):
    ws, name, raw = one_channel
    predictor = api.load_predictor(ws, name, "3d_fullres", ["0"], mirror=False)
    image, geometry = _good(raw)
    assert predictor.predict(image, geometry).segmentation.shape == image.shape[1:]
    bad = image.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(AutosegError, match="1 NaN voxel values"):
        predictor.predict(bad, geometry)
    with pytest.raises(AutosegError, match="2 channel"):
        predictor.predict(np.concatenate([image, image]), geometry)
    with pytest.raises(AutosegError, match="expected \\(C, z, y, x\\)"):
        predictor.predict(image[0, 0], geometry)
    with pytest.raises(AutosegError, match="must be positive"):
        predictor.segment(image[0], (1.0, 0.0, 1.0))
