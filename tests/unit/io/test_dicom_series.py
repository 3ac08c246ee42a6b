"""DICOM series in: finding series in a folder, reading one with SimpleITK's geometry, and refusing bad ones with
one line that names the series (or file) and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")  # the 'dicom' extra, part of the 'test' extra

import SimpleITK as sitk  # noqa: E402

import _dicom_fixtures as fx  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.io.dicom import read_series, read_series_folder, read_series_layout  # noqa: E402
from autoseg.io.dicom_series import find_series, is_dicom_folder, select_series  # noqa: E402


def _sitk_read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_matches_sitk(array: np.ndarray, geometry, folder: Path) -> None:
    img = _sitk_read(folder)
    np.testing.assert_allclose(geometry.spacing, img.GetSpacing()[::-1], atol=1e-6)
    np.testing.assert_allclose(geometry.origin, img.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(geometry.direction, img.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(array[0], sitk.GetArrayFromImage(img).astype(np.float32))


@pytest.mark.parametrize("grid", [fx.Grid(), fx.oblique_grid()], ids=["axial", "oblique"])
def test_ct_series_reads_in_hu_with_simpleitk_geometry(tmp_path, grid):
    stored = fx.ct_volume()
    files = fx.write_series(tmp_path, stored, grid, rescale=(1.0, -1024.0))
    assert [f.name for f in files] != sorted(f.name for f in files)  # the names on disk do not follow the slices
    array, geometry = read_series(files[::-1])
    assert array.shape == (1, *stored.shape) and array.dtype == np.float32
    np.testing.assert_array_equal(array[0], stored.astype(np.float32) - 1024)
    np.testing.assert_allclose(geometry.spacing, grid.spacing, atol=1e-6)
    np.testing.assert_allclose(geometry.origin, grid.origin, atol=1e-6)
    _assert_matches_sitk(array, geometry, tmp_path)


@pytest.mark.parametrize("grid", [fx.Grid(), fx.oblique_grid()], ids=["axial", "oblique"])
def test_mr_series_uint16_with_rescale(tmp_path, grid):
    stored = fx.mr_volume()
    stored[0, 0, 0] = 65000  # past int16: the unsigned pixel representation must be honoured
    fx.write_series(tmp_path, stored, grid, modality="MR")
    array, geometry = read_series(select_series(tmp_path))
    np.testing.assert_array_equal(array[0], stored.astype(np.float32))
    _assert_matches_sitk(array, geometry, tmp_path)


def test_ct_rescale_slope_is_applied_per_slice(tmp_path):
    stored = fx.ct_volume()
    files = fx.write_series(tmp_path, stored, rescale=(0.5, -1000.0))
    array, _ = read_series(files)
    np.testing.assert_allclose(array[0], stored * 0.5 - 1000.0)
    _assert_matches_sitk(array, read_series_layout(files).geometry, tmp_path)


def test_slices_are_ordered_by_position_along_the_normal(tmp_path):
    """A normal pointing to -z (feet first): z index 0 is the slice furthest along the normal's start."""
    grid = fx.Grid(row=(-1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0))  # normal = row x col = (0, 0, -1)
    stored = fx.ct_volume()
    files = fx.write_series(tmp_path, stored, grid)
    layout = read_series_layout(files)
    assert [s.file for s in layout.slices] == files  # the fixture returns the files in slice order
    assert layout.geometry.direction[2::3] == pytest.approx((0.0, 0.0, -1.0))
    _assert_matches_sitk(read_series(files)[0], layout.geometry, tmp_path)


def test_multiframe_enhanced_object_reads_like_the_single_frame_series(tmp_path):
    stored, grid = fx.mr_volume(), fx.oblique_grid()
    path = fx.write_multiframe(tmp_path / "mf" / "enhanced.dcm", stored, grid, frame_order=[3, 0, 4, 2, 1],
                               rescale=(2.0, 5.0))
    array, geometry = read_series([path])
    np.testing.assert_array_equal(array[0], stored * 2.0 + 5.0)
    fx.write_series(tmp_path / "single", stored, grid, modality="MR")
    _, single = read_series_folder(tmp_path / "single")
    np.testing.assert_allclose(geometry.spacing, single.spacing, atol=1e-9)
    np.testing.assert_allclose(geometry.origin, single.origin, atol=1e-9)
    np.testing.assert_allclose(geometry.direction, single.direction, atol=1e-12)
    assert [s.frame for s in read_series_layout([path]).slices] == [1, 4, 3, 0, 2]


def test_find_series_groups_by_uid_and_skips_non_images(tmp_path):
    study = fx.Study.new()
    fx.write_series(tmp_path / "p1" / "ct", fx.ct_volume(), study=study, description="venous")
    fx.write_series(tmp_path / "p1" / "ct", fx.ct_volume(shape=(4, 10, 12)), study=study, description="arterial",
                    seed=5, prefix="AR")
    fx.write_non_image(tmp_path / "report.dcm", "SR", study)
    fx.write_non_image(tmp_path / "p1" / "pr.dcm", "PR", study)
    (tmp_path / "README.txt").write_text("not DICOM")
    series = find_series(tmp_path)
    assert sorted((s.description, s.modality, s.n_instances) for s in series) == [("arterial", "CT", 4),
                                                                                  ("venous", "CT", 6)]
    assert all(s.folder == tmp_path for s in series)
    chosen = select_series(tmp_path, series[1].uid)
    assert chosen == series[1] and read_series(chosen)[0].shape[1] == chosen.n_instances


def test_is_dicom_folder(tmp_path):
    fx.write_series(tmp_path / "deep" / "er", fx.ct_volume(shape=(2, 4, 4)))
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "case.nii.gz").write_bytes(b"\x1f\x8b" + bytes(400))
    assert is_dicom_folder(tmp_path) and is_dicom_folder(tmp_path / "deep")
    assert not is_dicom_folder(tmp_path / "nifti")
    assert not is_dicom_folder(next((tmp_path / "deep" / "er").iterdir()))  # a file is not a folder
    assert not is_dicom_folder(tmp_path / "missing")


def test_file_without_preamble_is_read(tmp_path):
    files = fx.write_series(tmp_path, fx.ct_volume())
    files[0].write_bytes(files[0].read_bytes()[132:])  # the 128-byte preamble and 'DICM' dropped
    (tmp_path / "looks_like_dicom.bin").write_bytes(b"\x08\x00\x05\x00" + bytes(200))  # but holds no data set
    assert read_series(select_series(tmp_path))[0].shape == (1, 6, 10, 12)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", sorted(fx.BAD_SERIES))
def test_bad_series_is_refused_with_one_line_naming_it(tmp_path, monkeypatch, case):
    folder = tmp_path / "case"
    expected = fx.BAD_SERIES[case](folder, monkeypatch)
    before = _listing(tmp_path)
    with pytest.raises(AutosegError) as err:
        read_series_folder(folder)
    print(f"{case}: {err.value}")
    assert len(err.value.problems) == 1 and "\n" not in str(err.value)
    for text in expected:
        assert text in str(err.value)
    assert _listing(tmp_path) == before  # nothing written


def test_single_slice_takes_its_thickness_as_spacing(tmp_path):
    files = fx.write_series(tmp_path, fx.ct_volume(shape=(1, 5, 6)))
    array, geometry = read_series(files)
    assert array.shape == (1, 1, 5, 6) and geometry.spacing == pytest.approx((2.5, 0.8, 0.7))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"],
                         ids=["rle", "jpeg2000-lossless", "jpeg-ls"])
def test_compressed_series_reads(tmp_path, syntax):
    from pydicom.pixels import get_encoder

    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder installed for {syntax}")
    stored = fx.mr_volume(shape=(3, 32, 32))  # JPEG 2000's default 6 resolution levels need 32 pixels

    def compress(k, ds):
        ds.compress(syntax)
        return ds
    files = fx.write_series(tmp_path, stored, modality="MR", edit=compress)
    np.testing.assert_array_equal(read_series(files)[0][0], stored)


def test_missing_decoder_names_the_extra_for_real(tmp_path):
    """The JPEG Lossless decoders really missing: pylibjpeg (and gdcm) blocked before pydicom is imported."""
    with pytest.MonkeyPatch.context() as patch:  # the builder's in-process patch, undone at once: unused here
        fx.BAD_SERIES["missing_decoder"](tmp_path, patch)
    code = ("import sys; sys.modules['pylibjpeg'] = None; sys.modules['gdcm'] = None\n"
            "from autoseg.errors import AutosegError\nfrom autoseg.io.dicom import read_series_folder\n"
            f"try:\n    read_series_folder({str(tmp_path)!r})\nexcept AutosegError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "needs a decoder that is not installed: pip install 'autoseg[dicom-jpeg]'" in r.stdout


def test_imports_without_pydicom_and_names_the_extra_when_called(tmp_path):
    files = fx.write_series(tmp_path, fx.ct_volume(shape=(2, 4, 4)))
    code = ("import sys; sys.modules['pydicom'] = None; sys.modules['highdicom'] = None\n"
            "import numpy as np\nimport autoseg.io.dicom, autoseg.io.dicom_seg\n"
            "from autoseg.errors import AutosegError\n"
            f"print(autoseg.io.dicom.is_dicom_folder({str(tmp_path)!r}))\n"
            "for call in (lambda: autoseg.io.dicom.read_series([sys.argv[1]]),\n"
            "             lambda: autoseg.io.dicom_seg.write_dicom_seg(np.zeros((2, 4, 4), np.uint8), [sys.argv[1]],\n"
            "                                                          {1: 'liver'}, {'version': '1'}, 'x.dcm')):\n"
            "    try:\n        call()\n    except AutosegError as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(files[0])], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1] == "reading DICOM needs the optional package 'pydicom': pip install 'autoseg[dicom]'"
    assert lines[2] == "writing DICOM-SEG needs the optional package 'highdicom': pip install 'autoseg[dicom]'"
    assert not (tmp_path / "x.dcm").exists()


def test_finding_and_reading_are_importable_from_one_module():
    """autoseg.io.dicom keeps every public name of the DICOM input, its finding half (dicom_series) included."""
    import autoseg.io.dicom as dicom
    import autoseg.io.dicom_series as dicom_series

    for name in ("find_series", "select_series", "is_dicom_folder", "SeriesInfo"):
        assert getattr(dicom, name) is getattr(dicom_series, name)
    assert set(dicom.__all__) <= set(dir(dicom))
