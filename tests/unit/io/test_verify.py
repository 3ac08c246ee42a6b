"""load_and_check_case: arrays read once, checks, tolerances; the real data's quirks pass."""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.io.dataset_json import read_dataset_spec
from autoseg.io.image import Geometry, read_image, read_label, write_image
from autoseg.io.verify import LoadedCase, load_and_check_case
from autoseg.schema.dataset import CaseSpec, DatasetSpec

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
SHAPE = (6, 7, 8)
GEOM = Geometry((2.0, 1.0, 0.5), (100.0, -50.0, 20.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _spec(raw: Path, channels=("MRI",), labels=("background", "a", "b")) -> DatasetSpec:
    return DatasetSpec(name="t", raw_dir=str(raw), layout="msd", channel_names=tuple(channels),
                       labels=tuple(labels), file_ending=".nii.gz", training=())


def check_test_case(raw: Path, spec: DatasetSpec, case: CaseSpec) -> LoadedCase:
    """A test case as ``verify`` checks it: :func:`load_and_check_case` with no label."""
    return load_and_check_case(raw, spec, dataclasses.replace(case, label=None))


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:4, 2:5, 2:6] = 1
    lab[4, 2:5, 2:6] = 2
    return lab


def _case(tmp_path: Path, image: np.ndarray, label: np.ndarray | None = None, label_geom: Geometry = GEOM,
          ending: str = ".nii.gz") -> CaseSpec:
    write_image(image, GEOM, tmp_path / "imagesTr" / f"c{ending}")
    if label is None:
        return CaseSpec("c", (f"imagesTr/c{ending}",), None)
    write_image(label, label_geom, tmp_path / "labelsTr" / "c.nii.gz")
    return CaseSpec("c", (f"imagesTr/c{ending}",), "labelsTr/c.nii.gz")


def _rand(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


def _edit_nifti_header(path: Path, **fields) -> None:
    """Set NIfTI-1 header fields (e.g. ``scl_slope``) in place, the voxel bytes untouched.

    nibabel's writer would choose its own scaling, so the header block is rewritten directly.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = bytearray(fh.read())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(data))
    for key, value in fields.items():
        hdr[key] = value
    data[:hdr.sizeof_hdr] = hdr.binaryblock
    with opener(path, "wb") as fh:
        fh.write(data)


# ---------------------------------------------------------------------------------------------------------------
# valid cases


def test_valid_case_arrays_and_geometry(tmp_path):
    img = _rand()
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, img, _label()))
    assert isinstance(loaded, LoadedCase) and loaded.ok and loaded.problems == ()
    assert loaded.image.shape == (1,) + SHAPE and loaded.image.dtype == np.float32
    np.testing.assert_array_equal(loaded.image[0], img)
    assert loaded.image.flags.writeable
    assert loaded.label.dtype == np.int16
    np.testing.assert_array_equal(loaded.label, _label())
    assert loaded.geometry == GEOM


def test_nnunetv2_channels_in_order(tmp_path):
    for c in range(3):
        write_image(np.full(SHAPE, c + 1, np.int16), GEOM, tmp_path / "imagesTr" / f"c_{c:04d}.nii.gz")
    write_image(_label(), GEOM, tmp_path / "labelsTr" / "c.nii.gz")
    case = CaseSpec("c", tuple(f"imagesTr/c_{c:04d}.nii.gz" for c in range(3)), "labelsTr/c.nii.gz")
    loaded = load_and_check_case(tmp_path, _spec(tmp_path, ("a", "b", "c")), case)
    assert loaded.ok, loaded.problems
    assert loaded.image.shape == (3,) + SHAPE and loaded.image.dtype == np.float32
    assert [float(loaded.image[c].mean()) for c in range(3)] == [1.0, 2.0, 3.0]


def test_msd_4d_channels_in_order(tmp_path):
    img = np.stack([np.full(SHAPE, 5, np.float32), np.full(SHAPE, 7, np.float32)])
    loaded = load_and_check_case(tmp_path, _spec(tmp_path, ("FLAIR", "T1c")), _case(tmp_path, img, _label()))
    assert loaded.ok, loaded.problems
    assert loaded.image.shape == (2,) + SHAPE and loaded.image[1].max() == 7
    assert loaded.geometry == GEOM


def test_4d_file_with_one_channel_accepted_for_one_channel(tmp_path):
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, _rand()[None], _label()))
    assert loaded.ok and loaded.image.shape == (1,) + SHAPE


def test_quirks_pass(tmp_path):
    """uint8 image + float32 label with integer values: harmless, converted."""
    case = _case(tmp_path, np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE), _label().astype(np.float32))
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.ok, loaded.problems
    assert loaded.image.dtype == np.float32 and loaded.label.dtype == np.int16
    assert loaded.image.max() == 255  # wrapped uint8 ramp, values kept


def test_check_test_case_ignores_label(tmp_path):
    case = _case(tmp_path, _rand(), _label())
    (tmp_path / "labelsTr" / "c.nii.gz").unlink()
    loaded = check_test_case(tmp_path, _spec(tmp_path), case)
    assert loaded.ok and loaded.label is None and loaded.image is not None


@pytest.mark.parametrize("field, value, ok", [
    # origin, per axis: 1e-3 mm + 1e-4 * |origin| -> 0.011 mm at 100 mm, 0.003 mm at 20 mm
    ("origin", (100.0005, -50.0, 20.0), True),
    ("origin", (100.008, -50.0, 20.0), True),
    ("origin", (100.02, -50.0, 20.0), False),
    ("origin", (100.0, -50.0, 20.0025), True),
    ("origin", (100.0, -50.0, 20.0035), False),
    ("spacing", (2.001, 1.0, 0.5), True),  # rtol 1e-3
    ("spacing", (2.01, 1.0, 0.5), False),
    ("direction", (0.99999987, 0.0005, 0, -0.0005, 0.99999987, 0, 0, 0, 1), True),  # atol 1e-3
    ("direction", (0.995, 0.0998, 0, -0.0998, 0.995, 0, 0, 0, 1), False),
])
def test_geometry_tolerances(tmp_path, field, value, ok):
    geom = dataclasses.replace(GEOM, **{field: value})
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, _rand(), _label(), label_geom=geom))
    assert loaded.ok == ok, loaded.problems
    if not ok:
        assert len(loaded.problems) == 1 and field in loaded.problems[0]
        assert loaded.problems[0].startswith(str(tmp_path / "labelsTr" / "c.nii.gz"))


# ---------------------------------------------------------------------------------------------------------------
# problems


def test_nan_found_in_nifti_although_itk_zeroes_it(tmp_path):
    img = _rand()
    img[0, 0, :3] = np.nan
    case = _case(tmp_path, img, _label())
    assert not np.isnan(read_image([tmp_path / case.images[0]])[0]).any()  # ITK's NIfTI reader hides it
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.problems == (f"{tmp_path / case.images[0]}: image contains 3 NaN voxel values (of "
                               f"{np.prod(SHAPE)}); intensities must be finite",)


def test_nan_found_in_other_formats(tmp_path):
    img = _rand()
    img[1, 1, 1] = np.inf
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, img, _label(), ending=".mha"))
    assert len(loaded.problems) == 1 and "1 infinite" in loaded.problems[0]


def test_nan_in_float_label(tmp_path):
    lab = _label().astype(np.float32)
    lab[0, 0, 0] = np.nan
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, _rand(), lab))
    assert loaded.label is None and "NaN" in loaded.problems[0]


def test_undeclared_and_negative_label_values(tmp_path):
    lab = _label().astype(np.int16)
    lab[0, 0, 0], lab[0, 0, 1] = -1, 9
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, _rand(), lab))
    assert loaded.problems == (f"{tmp_path / 'labelsTr/c.nii.gz'}: label values {{-1, 9}} not declared in "
                               f"dataset.json labels (0-2)",)


def test_label_too_large_for_int16(tmp_path):
    lab = _label().astype(np.int32)
    lab[0, 0, 0] = 70000
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), _case(tmp_path, _rand(), lab))
    assert loaded.label is None and "70000" in loaded.problems[0]


def test_truncated_integer_nifti(tmp_path):
    """Non-float files go through ITK, which zero-fills a short file: caught by the gzip trailer check."""
    case = _case(tmp_path, (_rand() * 10).astype(np.int16), _label())
    p = tmp_path / case.images[0]
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-40]))
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.image is None and "truncated" in loaded.problems[0] and loaded.label is not None


def test_unreadable_files_give_none_arrays(tmp_path):
    case = _case(tmp_path, _rand(), _label())
    (tmp_path / case.images[0]).write_bytes(b"\x00" * 1000)
    (tmp_path / case.label).write_text("nope")
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.image is None and loaded.label is None and loaded.geometry is None
    assert len(loaded.problems) == 2 and all("cannot be read as an image" in p for p in loaded.problems)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_truncated_nii_inside_voxel_data(tmp_path, dtype):
    """An uncompressed .nii cut short: the line gives the byte counts (ITK would zero-fill the rest)."""
    case = _case(tmp_path, (_rand() * 100).astype(dtype), _label(), ending=".nii")
    p = tmp_path / case.images[0]
    size = p.stat().st_size
    p.write_bytes(p.read_bytes()[:-40])
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.problems == (f"{p}: file is truncated: {size - 40} bytes, the NIfTI header promises {size}",)
    assert loaded.image is None and loaded.label is not None


@pytest.mark.parametrize("shape", [(4, 4, 4), (20, 30, 40)], ids=["within-first-kb", "within-voxels"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_nii_gz_cut_mid_stream(tmp_path, shape, dtype):
    """A .nii.gz whose gzip stream is cut off: one line naming the file, whichever voxel type and wherever the cut.

    A file under 1 KB is cut within the first KB, where nibabel.load only says it cannot identify the file; in a
    larger one the stream ends inside the voxel data, which nibabel's read reports.
    """
    case = _case(tmp_path, (_rand(shape) * 100).astype(dtype))
    p = tmp_path / case.images[0]
    b = p.read_bytes()
    p.write_bytes(b[: len(b) * 2 // 3])
    loaded = check_test_case(tmp_path, _spec(tmp_path), case)
    assert loaded.problems == (f"{p}: truncated or corrupt compressed file (Compressed file ended before the "
                               f"end-of-stream marker was reached)",)
    assert loaded.image is None


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_scaled_float_nifti_nan_found(tmp_path, ending):
    """scl_slope/scl_inter on float voxels: NaN still found (ITK hides it here too)."""
    img = _rand()
    img[2, 3, 4:6] = np.nan
    case = _case(tmp_path, img, _label(), ending=ending)
    p = tmp_path / case.images[0]
    _edit_nifti_header(p, scl_slope=2.0, scl_inter=10.0)
    assert not np.isnan(read_image([p])[0]).any()
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.problems == (f"{p}: image contains 2 NaN voxel values (of {np.prod(SHAPE)}); intensities must "
                               f"be finite",)


@pytest.mark.parametrize("dtype, slope, inter", [(np.float32, 2.0, 10.0), (np.int16, 0.3, -7.1),
                                                 (np.uint8, 1.5, 0.0), (np.float64, 0.25, 3.0)])
def test_scaled_nifti_equals_itk(tmp_path, dtype, slope, inter):
    """Scaled images come out as ITK reads them, voxel for voxel (float32, or float64 for float64 voxels)."""
    raw = (np.abs(_rand()) * 100).astype(dtype)
    case = _case(tmp_path, raw, _label())
    p = tmp_path / case.images[0]
    _edit_nifti_header(p, scl_slope=slope, scl_inter=inter)
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.ok, loaded.problems
    np.testing.assert_array_equal(loaded.image, read_image([p])[0])
    np.testing.assert_allclose(loaded.image[0], raw * slope + inter, rtol=1e-6, atol=1e-4)


def test_big_endian_float_nifti(tmp_path):
    img = _rand()
    p = tmp_path / "imagesTr" / "c.nii.gz"
    p.parent.mkdir()
    nib.save(nib.Nifti1Image(img.T.astype(">f4"), np.eye(4), nib.Nifti1Header(endianness=">")), p)
    case = CaseSpec("c", ("imagesTr/c.nii.gz",), None)
    loaded = check_test_case(tmp_path, _spec(tmp_path), case)
    assert loaded.ok, loaded.problems
    assert loaded.image.dtype == np.float32 and loaded.image.dtype.isnative
    np.testing.assert_array_equal(loaded.image[0], img)
    img[0, 1, 2] = np.inf
    nib.save(nib.Nifti1Image(img.T.astype(">f4"), np.eye(4), nib.Nifti1Header(endianness=">")), p)
    assert "1 infinite" in check_test_case(tmp_path, _spec(tmp_path), case).problems[0]


def test_nibabel_header_fixes_not_logged(tmp_path, caplog):
    """nibabel's notes on header fields it fixes for its own affine (unused here) do not reach the output."""
    case = _case(tmp_path, _rand(), _label())
    p = tmp_path / case.images[0]
    _edit_nifti_header(p, qform_code=77)
    with caplog.at_level(logging.DEBUG, logger="nibabel.global"):
        nib.load(p)
        assert any("qform_code" in r.getMessage() for r in caplog.records)  # nibabel does complain
        caplog.clear()
        loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
        assert loaded.ok, loaded.problems
        assert not caplog.records
        assert logging.getLogger("nibabel.global").level == logging.DEBUG  # restored after the load


def test_file_deleted_after_parsing(tmp_path):
    case = _case(tmp_path, _rand(), _label())
    (tmp_path / case.label).unlink()
    loaded = load_and_check_case(tmp_path, _spec(tmp_path), case)
    assert loaded.problems == (f"{tmp_path / case.label}: file not found",)


def test_channel_geometry_must_agree(tmp_path):
    write_image(_rand(), GEOM, tmp_path / "imagesTr" / "c_0000.nii.gz")
    write_image(_rand(), dataclasses.replace(GEOM, spacing=(3.0, 1.0, 0.5)), tmp_path / "imagesTr" / "c_0001.nii.gz")
    case = CaseSpec("c", ("imagesTr/c_0000.nii.gz", "imagesTr/c_0001.nii.gz"), None)
    loaded = load_and_check_case(tmp_path, _spec(tmp_path, ("a", "b")), case)
    assert len(loaded.problems) == 1
    assert loaded.problems[0].startswith(str(tmp_path / "imagesTr/c_0001.nii.gz"))
    assert "differs from the channel 0 file (c_0000.nii.gz)" in loaded.problems[0]


# ---------------------------------------------------------------------------------------------------------------
# the real data


def _real(name: str) -> tuple[Path, DatasetSpec]:
    raw = DATA / name
    if not (raw / "dataset.json").is_file():
        pytest.skip(f"real dataset not found at {raw}")
    return raw, read_dataset_spec(raw)


@pytest.mark.parametrize("case_id, image_dtype, label_dtype", [
    ("hippocampus_003", "32-bit float", "32-bit float"),   # float32 label with integer values
    ("hippocampus_243", None, "32-bit float"),
    ("hippocampus_001", "8-bit unsigned integer", None),   # uint8 image
])
def test_real_hippocampus_quirks_pass(case_id, image_dtype, label_dtype):
    raw, spec = _real("Task04_Hippocampus")
    case = next(c for c in spec.training if c.case_id == case_id)
    for rel, expected in ((case.images[0], image_dtype), (case.label, label_dtype)):
        if expected is not None:
            r = sitk.ImageFileReader()
            r.SetFileName(str(raw / rel))
            r.ReadImageInformation()
            assert sitk.GetPixelIDValueAsString(r.GetPixelID()) == expected
    loaded = load_and_check_case(raw, spec, case)
    assert loaded.problems == ()
    assert loaded.image.dtype == np.float32 and loaded.image.ndim == 4 and loaded.image.shape[0] == 1
    assert loaded.label.dtype == np.int16 and set(np.unique(loaded.label)) <= {0, 1, 2}
    # same arrays as the plain ITK readers (NaN-free data): reading the bytes directly changes nothing
    img, geom = read_image([raw / case.images[0]])
    np.testing.assert_array_equal(loaded.image, img)
    np.testing.assert_array_equal(loaded.label, read_label(raw / case.label)[0])
    assert loaded.geometry == geom


def test_real_hippocampus_test_case():
    raw, spec = _real("Task04_Hippocampus")
    loaded = check_test_case(raw, spec, spec.test[0])
    assert loaded.ok and loaded.label is None and loaded.image.shape[0] == 1


def test_real_brats_case_loads_as_two_channels():
    raw, spec = _real("BraTS2015_DeepMedicSubset")
    loaded = load_and_check_case(raw, spec, spec.training[0])
    assert loaded.problems == ()
    assert loaded.image.shape == (2, 155, 240, 240) and loaded.image.dtype == np.float32
    assert loaded.label.shape == (155, 240, 240) and set(np.unique(loaded.label)) <= set(range(5))
    assert loaded.geometry.spacing == (1.0, 1.0, 1.0)
