"""Malformed raw datasets: every problem is reported on a line naming the offending file, and nothing is written.

Each variant starts from a small valid synthetic dataset (built here with ``write_image``: a few 12x16x16 cases
with a cube label) and breaks one thing. The same variants are checked twice: directly through
``read_dataset_spec`` + ``load_and_check_case``, and through the CLI (``autoseg verify`` / ``autoseg plan``), which
must exit with code 2, print the problem lines without a traceback, and leave the workspace untouched.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import DatasetError
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.io.image import Geometry, write_image
from autoseg.io.verify import load_and_check_case

SHAPE = (12, 16, 16)
GEOM = Geometry(spacing=(2.0, 1.0, 1.0), origin=(10.0, -5.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
CASES = ("case_000", "case_001", "case_002")


# ---------------------------------------------------------------------------------------------------------------
# a minimal valid dataset generator (independent of autoseg.synthetic on purpose)


def _image(seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(100, 20, (channels,) + SHAPE)).astype(np.float32)


def _label(seed: int) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    o = 2 + seed % 3
    lab[o:o + 5, o:o + 6, o:o + 6] = 1
    lab[o + 5:o + 7, o:o + 6, o:o + 6] = 2
    return lab


def make_dataset(root: Path, layout: str = "msd", channels: int = 1, with_test: bool = True) -> Path:
    """A valid dataset: 3 training cases (+1 test), labels background/a/b, ``channels`` MRI-like channels.

    ``msd``: one file per case (4D when ``channels > 1``), listed in dataset.json. ``nnunetv2``: one file per
    channel, ``<case>_<cccc>.nii.gz``, discovered from the folders.
    """
    root.mkdir(parents=True, exist_ok=True)
    names = [f"mod{c}" for c in range(channels)]
    for i, cid in enumerate(CASES + (("test_000",) if with_test else ())):
        img = _image(i, channels)
        sub = "imagesTs" if cid.startswith("test") else "imagesTr"
        if layout == "msd":
            write_image(img[0] if channels == 1 else img, GEOM, root / sub / f"{cid}.nii.gz")
        else:
            for c in range(channels):
                write_image(img[c], GEOM, root / sub / f"{cid}_{c:04d}.nii.gz")
        if sub == "imagesTr":
            write_image(_label(i), GEOM, root / "labelsTr" / f"{cid}.nii.gz")
    if layout == "msd":
        data = {
            "name": "Tiny", "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": {str(c): n for c, n in enumerate(names)},
            "labels": {"0": "background", "1": "a", "2": "b"},
            "numTraining": len(CASES),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in CASES],
            "test": ["./imagesTs/test_000.nii.gz"] if with_test else [],
        }
    else:
        data = {
            "channel_names": {str(c): n for c, n in enumerate(names)},
            "labels": {"background": 0, "a": 1, "b": 2},
            "numTraining": len(CASES),
            "file_ending": ".nii.gz",
        }
    (root / "dataset.json").write_text(json.dumps(data, indent=2))
    return root


# ---------------------------------------------------------------------------------------------------------------
# the variants: (base layout, channels, how to break it, expected file name in the line, problem keyword)


def _edit_json(root: Path, fn: Callable[[dict], None]) -> None:
    data = json.loads((root / "dataset.json").read_text())
    fn(data)
    (root / "dataset.json").write_text(json.dumps(data, indent=2))


def _rewrite_label(root: Path, arr: np.ndarray | None = None, **geom) -> None:
    g = Geometry(**{**GEOM.__dict__, **geom})
    write_image(_label(1) if arr is None else arr, g, root / "labelsTr" / "case_001.nii.gz")


def _rewrite_image(root: Path, arr: np.ndarray) -> None:
    write_image(arr, GEOM, root / "imagesTr" / "case_001.nii.gz")


def _nan_image(root: Path) -> None:
    a = _image(1)[0]
    a[3, 4, 5:9] = np.nan
    _rewrite_image(root, a)


def _inf_image(root: Path) -> None:
    a = _image(1)[0]
    a[0, 0, 0] = np.inf
    a[1, 1, 1] = -np.inf
    _rewrite_image(root, a)


def _truncated_gzip(root: Path) -> None:
    p = root / "imagesTr" / "case_001.nii.gz"
    b = p.read_bytes()
    p.write_bytes(b[: len(b) * 2 // 3])  # the gzip stream is cut off; the header is still intact


def _truncated_payload(root: Path) -> None:
    p = root / "imagesTr" / "case_001.nii.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # a valid gzip holding half of the voxels


def _truncated_gzip_integer(root: Path) -> None:
    _rewrite_image(root, _image(1)[0].astype(np.int16))  # integer voxels: ITK would zero-fill the cut-off part
    _truncated_gzip(root)


def _truncated_nii(root: Path) -> None:
    """The image as an uncompressed .nii, cut inside its voxel data."""
    p = root / "imagesTr" / "case_001.nii"
    write_image(_image(1)[0], GEOM, p)
    p.write_bytes(p.read_bytes()[:-100])
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    _edit_json(root, lambda d: d["training"][1].update(image="./imagesTr/case_001.nii"))


def _nan_in_scaled_image(root: Path) -> None:
    """NaN voxels in a float image whose header asks for intensity scaling (scl_slope/scl_inter)."""
    _nan_image(root)
    p = root / "imagesTr" / "case_001.nii.gz"
    data = bytearray(gzip.decompress(p.read_bytes()))
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(data))
    hdr["scl_slope"], hdr["scl_inter"] = 2.0, -50.0
    data[:hdr.sizeof_hdr] = hdr.binaryblock
    p.write_bytes(gzip.compress(bytes(data)))


def _zero_spacing(root: Path) -> None:
    # NIfTI cannot carry a zero spacing through ITK (it reads pixdim 0 as 1), MetaImage can: list an .mha image
    img = sitk.GetImageFromArray(_image(1)[0])
    sitk.WriteImage(img, str(root / "imagesTr" / "case_001.mha"))
    p = root / "imagesTr" / "case_001.mha"
    p.write_bytes(p.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 1 0"))
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    _edit_json(root, lambda d: d["training"][1].update(image="./imagesTr/case_001.mha"))


VARIANTS: dict[str, tuple[str, int, Callable[[Path], None], str, str]] = {
    "no_dataset_json": ("msd", 1, lambda r: (r / "dataset.json").unlink(), "dataset.json", "not found"),
    "invalid_json": ("msd", 1, lambda r: (r / "dataset.json").write_text('{"name": "Tiny", "labels": {'),
                     "dataset.json", "not valid JSON"),
    "missing_labels_key": ("msd", 1, lambda r: _edit_json(r, lambda d: d.pop("labels")), "dataset.json",
                           "missing key 'labels'"),
    "non_consecutive_labels": ("msd", 1, lambda r: _edit_json(
        r, lambda d: d.update(labels={"0": "background", "1": "a", "3": "b"})), "dataset.json", "consecutive"),
    "no_foreground_label": ("msd", 1, lambda r: _edit_json(r, lambda d: d.update(labels={"0": "background"})),
                            "dataset.json", "foreground"),
    "duplicate_label_value": ("msd", 1, lambda r: (r / "dataset.json").write_text(
        (r / "dataset.json").read_text().replace('"2": "b"', '"2": "b", "2": "c"')), "dataset.json",
        "more than once"),
    "region_labels": ("nnunetv2", 1, lambda r: _edit_json(
        r, lambda d: d.update(labels={"background": 0, "a": 1, "whole": [1, 2]})), "dataset.json", "region"),
    "empty_channel_names": ("nnunetv2", 1, lambda r: _edit_json(r, lambda d: d.update(channel_names={})),
                            "dataset.json", "empty"),
    "empty_training": ("msd", 1, lambda r: _edit_json(r, lambda d: d.update(training=[])), "dataset.json",
                       "empty"),
    "duplicate_case_ids": ("msd", 1, lambda r: _edit_json(r, lambda d: d["training"].append(d["training"][1])),
                           "dataset.json", "unique"),
    "num_training_mismatch": ("msd", 1, lambda r: _edit_json(r, lambda d: d.update(numTraining=7)),
                              "dataset.json", "numTraining"),
    "listed_image_missing": ("msd", 1, lambda r: (r / "imagesTr" / "case_001.nii.gz").unlink(),
                             "imagesTr/case_001.nii.gz", "not found"),
    "listed_label_missing": ("msd", 1, lambda r: (r / "labelsTr" / "case_001.nii.gz").unlink(),
                             "labelsTr/case_001.nii.gz", "not found"),
    "listed_test_image_missing": ("msd", 1, lambda r: (r / "imagesTs" / "test_000.nii.gz").unlink(),
                                  "imagesTs/test_000.nii.gz", "not found"),
    "corrupt_image_garbage": ("msd", 1, lambda r: (r / "imagesTr" / "case_001.nii.gz").write_bytes(
        bytes(range(256)) * 8), "imagesTr/case_001.nii.gz", "cannot be read"),
    "not_an_image": ("msd", 1, lambda r: (r / "labelsTr" / "case_002.nii.gz").write_text("hello"),
                     "labelsTr/case_002.nii.gz", "cannot be read"),
    "truncated_gzip": ("msd", 1, _truncated_gzip, "imagesTr/case_001.nii.gz", "truncated"),
    "truncated_payload": ("msd", 1, _truncated_payload, "imagesTr/case_001.nii.gz", "truncated"),
    "truncated_gzip_integer": ("msd", 1, _truncated_gzip_integer, "imagesTr/case_001.nii.gz", "truncated"),
    "truncated_nii": ("msd", 1, _truncated_nii, "imagesTr/case_001.nii", "truncated"),
    "size_mismatch": ("msd", 1, lambda r: _rewrite_label(r, _label(1)[:, :, :15]), "labelsTr/case_001.nii.gz",
                      "size"),
    "spacing_mismatch": ("msd", 1, lambda r: _rewrite_label(r, spacing=(3.0, 1.0, 1.0)),
                         "labelsTr/case_001.nii.gz", "spacing"),
    "origin_mismatch": ("msd", 1, lambda r: _rewrite_label(r, origin=(10.0, -5.0, 5.0)),
                        "labelsTr/case_001.nii.gz", "origin"),
    "direction_mismatch": ("msd", 1, lambda r: _rewrite_label(r, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
                           "labelsTr/case_001.nii.gz", "direction"),
    "undeclared_label_value": ("msd", 1, lambda r: _rewrite_label(r, np.where(_label(1) == 2, 5, _label(1))
                                                                .astype(np.uint8)),
                               "labelsTr/case_001.nii.gz", "not declared"),
    "non_integer_label": ("msd", 1, lambda r: _rewrite_label(r, _label(1).astype(np.float32) * 0.5),
                          "labelsTr/case_001.nii.gz", "not integers"),
    "label_4d": ("msd", 1, lambda r: write_image(np.stack([_label(1)] * 2), GEOM,
                                                 r / "labelsTr" / "case_001.nii.gz"),
                 "labelsTr/case_001.nii.gz", "4D"),
    "nan_in_image": ("msd", 1, _nan_image, "imagesTr/case_001.nii.gz", "NaN"),
    "inf_in_image": ("msd", 1, _inf_image, "imagesTr/case_001.nii.gz", "infinite"),
    "nan_in_scaled_image": ("msd", 1, _nan_in_scaled_image, "imagesTr/case_001.nii.gz", "NaN"),
    "nan_in_test_image": ("msd", 1, lambda r: write_image(np.full(SHAPE, np.nan, np.float32), GEOM,
                                                          r / "imagesTs" / "test_000.nii.gz"),
                          "imagesTs/test_000.nii.gz", "NaN"),
    "4d_wrong_channel_count": ("msd", 2, lambda r: _rewrite_image(r, _image(1, 3)), "imagesTr/case_001.nii.gz",
                               "3 channels"),
    "3d_where_4d_declared": ("msd", 2, lambda r: _rewrite_image(r, _image(1)[0]), "imagesTr/case_001.nii.gz",
                             "expected one 4D file"),
    "nnunetv2_missing_channel": ("nnunetv2", 2, lambda r: (r / "imagesTr" / "case_001_0001.nii.gz").unlink(),
                                 "imagesTr/case_001_0001.nii.gz", "missing"),
    "nnunetv2_missing_label": ("nnunetv2", 1, lambda r: (r / "labelsTr" / "case_002.nii.gz").unlink(),
                               "labelsTr/case_002.nii.gz", "missing"),
    "nnunetv2_channel_size_mismatch": ("nnunetv2", 2, lambda r: write_image(
        _image(1)[0][:, :14], GEOM, r / "imagesTr" / "case_001_0001.nii.gz"),
        "imagesTr/case_001_0001.nii.gz", "size"),
    "zero_spacing": ("msd", 1, _zero_spacing, "imagesTr/case_001.mha", "spacing"),
}


@pytest.fixture(params=sorted(VARIANTS))
def broken(request, tmp_path) -> tuple[Path, str, str]:
    layout, channels, breaker, filename, keyword = VARIANTS[request.param]
    raw = make_dataset(tmp_path / "Task99_Tiny", layout, channels)
    breaker(raw)
    return raw, filename, keyword


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _direct_problems(raw: Path) -> list[str]:
    """Every problem that ``read_dataset_spec`` + ``load_and_check_case`` report for the dataset."""
    try:
        spec = read_dataset_spec(raw)
    except DatasetError as e:
        return list(e.problems)
    problems = []
    for case in spec.training + spec.test:
        problems.extend(load_and_check_case(raw, spec, case).problems)
    return problems


def _cli():
    try:
        from autoseg.cli import main
    except ImportError as e:  # pragma: no cover - the CLI is written concurrently
        pytest.skip(f"autoseg.cli not importable yet ({e})")
    return main


# ---------------------------------------------------------------------------------------------------------------


def test_valid_base_datasets_pass(tmp_path):
    for layout, channels in (("msd", 1), ("msd", 2), ("nnunetv2", 1), ("nnunetv2", 2)):
        raw = make_dataset(tmp_path / f"{layout}{channels}", layout, channels)
        assert _direct_problems(raw) == [], (layout, channels)


def test_variant_count():
    assert len(VARIANTS) >= 14


def test_variant_reported_directly(broken):
    raw, filename, keyword = broken
    before = _snapshot(raw)
    problems = _direct_problems(raw)
    assert problems, "no problem reported"
    hits = [p for p in problems if filename in p.split(": ", 1)[0] and keyword.lower() in p.lower()]
    assert hits, f"no line names {filename} with '{keyword}':\n" + "\n".join(problems)
    assert all("\n" not in p for p in problems)
    assert _snapshot(raw) == before, "verification changed the raw folder"


def test_variant_reported_by_cli_verify(broken, capsys):
    main = _cli()
    raw, filename, keyword = broken
    before = _snapshot(raw)
    rc = main(["verify", str(raw), "-j", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert any(filename in line and keyword.lower() in line.lower() for line in err.splitlines()), err
    assert _snapshot(raw) == before


def test_variant_reported_by_cli_plan_and_nothing_written(broken, capsys, tmp_path):
    main = _cli()
    raw, filename, keyword = broken
    ws = tmp_path / "ws"
    rc = main(["plan", str(raw), "-w", str(ws), "--no-preprocess", "-j", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert any(filename in line and keyword.lower() in line.lower() for line in err.splitlines()), err
    assert not ws.exists() or not any(ws.rglob("*")), sorted(ws.rglob("*"))


def test_all_problems_reported_together(tmp_path):
    raw = make_dataset(tmp_path / "Tiny")
    _nan_image(raw)
    _rewrite_label(raw, spacing=(3.0, 1.0, 1.0))
    (raw / "labelsTr" / "case_002.nii.gz").write_text("not an image")
    problems = _direct_problems(raw)
    assert any("case_001.nii.gz" in p and "NaN" in p for p in problems)
    assert any("case_001.nii.gz" in p and "spacing" in p for p in problems)
    assert any("case_002.nii.gz" in p and "cannot be read" in p for p in problems)


def test_harmless_quirks_pass(tmp_path, capsys):
    """uint8 images and float32 labels holding integer values are accepted (as in the real Hippocampus data)."""
    raw = make_dataset(tmp_path / "Tiny")
    _rewrite_image(raw, np.clip(_image(1)[0], 0, 255).astype(np.uint8))
    _rewrite_label(raw, _label(1).astype(np.float32))
    assert _direct_problems(raw) == []
    spec = read_dataset_spec(raw)
    loaded = load_and_check_case(raw, spec, spec.training[1])
    assert loaded.image.dtype == np.float32 and loaded.label.dtype == np.int16
    assert set(np.unique(loaded.label)) == {0, 1, 2}
    main = _cli()
    assert main(["verify", str(raw), "-j", "1"]) == 0, capsys.readouterr().err


def test_missing_raw_dir_is_one_line(tmp_path, capsys):
    main = _cli()
    rc = main(["verify", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "Traceback" not in err


def test_copy_of_real_hippocampus_with_broken_label(tmp_path):
    """A real file, broken: an undeclared value in a copy of hippocampus_003's float32 label."""
    src = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "Task04_Hippocampus"
    if not src.is_dir():
        pytest.skip(f"real data not found at {src}")
    raw = tmp_path / "Task04_Hippocampus"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for sub in ("imagesTr", "labelsTr"):
        shutil.copy(src / sub / "hippocampus_003.nii.gz", raw / sub)
    lab = sitk.ReadImage(str(raw / "labelsTr" / "hippocampus_003.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    arr[0, 0, 0] = 7
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(lab)
    sitk.WriteImage(out, str(raw / "labelsTr" / "hippocampus_003.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "tensorImageSize": "3D", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": [{"image": "./imagesTr/hippocampus_003.nii.gz", "label": "./labelsTr/hippocampus_003.nii.gz"}],
        "test": []}))
    problems = _direct_problems(raw)
    assert problems == [f"{raw / 'labelsTr' / 'hippocampus_003.nii.gz'}: label values {{7}} not declared in "
                        f"dataset.json labels (0-2)"]
