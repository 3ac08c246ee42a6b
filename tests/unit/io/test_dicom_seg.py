"""DICOM-SEG out: label maps written as SEG objects that reference their source series, read back identically,
valid by dciodvfy where it is installed."""

from __future__ import annotations

import doctest
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")  # the 'dicom' extra, part of the 'test' extra

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

import _dicom_fixtures as fx  # noqa: E402
import autoseg.io.dicom_seg as dicom_seg  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.io.dicom import read_series_layout  # noqa: E402
from autoseg.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402

ALGORITHM = {"version": "0.1.0", "dataset": "Dataset003_Liver", "configuration": "3d_fullres",
             "folds": [0, 1, 2, 3, 4]}
NAMES = {0: "background", 1: "liver", 2: "liver tumour", 3: "Anterior"}


def _labels(shape, seed=0) -> np.ndarray:
    """Label 1 a block, label 2 inside it, label 3 absent (an empty segment), some slices empty."""
    labels = np.zeros(shape, np.uint8)
    z, y, x = shape
    labels[1:z - 1, 2:y - 2, 3:x - 2] = 1
    labels[2, 3:5, 4:6] = 2
    labels[z // 2, 0, 0] = 1
    return labels


def _written(tmp_path, grid) -> tuple[list[Path], np.ndarray, Path]:
    files = fx.write_series(tmp_path / "ct", fx.ct_volume(), grid, rescale=(1.0, -1024.0))
    labels = _labels((6, 10, 12))
    out = write_dicom_seg(labels, files[::-1], NAMES, ALGORITHM, tmp_path / "out" / "seg.dcm")
    return files, labels, out


@pytest.mark.parametrize("grid", [fx.Grid(), fx.oblique_grid()], ids=["axial", "oblique"])
def test_round_trip_is_identical_and_references_each_instance(tmp_path, grid):
    files, labels, out = _written(tmp_path, grid)
    assert [p.name for p in out.parent.iterdir()] == ["seg.dcm"]  # no temporary left beside it
    np.testing.assert_array_equal(read_dicom_seg(out, files), labels)
    layout = read_series_layout(files)
    seg = hd.seg.segread(out)  # highdicom's reader, by source instance references, agrees
    by_reference = seg.get_pixels_by_source_instance([s.sop_instance_uid for s in layout.slices],
                                                     combine_segments=True)
    np.testing.assert_array_equal(by_reference, labels)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == layout.series.uid
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
        {s.sop_instance_uid for s in layout.slices}
    assert seg.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID


def test_round_trip_of_a_multiframe_source(tmp_path):
    stored = fx.mr_volume()
    source = fx.write_multiframe(tmp_path / "mr" / "enhanced.dcm", stored, fx.oblique_grid(),
                                 frame_order=[2, 0, 4, 1, 3])
    labels = np.zeros(stored.shape, np.uint8)
    labels[0, 1:3, 2:5] = 1
    labels[3, 4:7, 1:9] = 1
    out = write_dicom_seg(labels, [source], {1: "left atrium"}, ALGORITHM, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_dicom_seg(out, [source]), labels)


def test_segments_codes_and_algorithm(tmp_path):
    _, _, out = _written(tmp_path, fx.Grid())
    seg = pydicom.dcmread(out)
    segments = seg.SegmentSequence
    assert [s.SegmentNumber for s in segments] == [1, 2, 3]  # label 3 is absent, its segment is there
    assert [s.SegmentLabel for s in segments] == ["liver", "liver tumour", "Anterior"]
    kinds = [(s.SegmentedPropertyCategoryCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
             for s in segments]
    assert kinds == [("91723000", "10200004"), ("49755003", "108369006"), ("85756007", "85756007")]
    algorithm = segments[0].SegmentationAlgorithmIdentificationSequence[0]
    assert segments[0].SegmentAlgorithmType == "AUTOMATIC"
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("autoseg", "0.1.0")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert "Dataset003_Liver" in algorithm.AlgorithmParameters and "0,1,2,3,4" in algorithm.AlgorithmParameters
    assert (seg.SegmentationType, seg.Manufacturer, seg.SoftwareVersions) == ("BINARY", "autoseg", "0.1.0")
    frames_of = {s.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                 for s in seg.PerFrameFunctionalGroupsSequence}
    assert frames_of == {1, 2}  # the empty segment has no frames


def test_empty_label_map_round_trips(tmp_path):
    files = fx.write_series(tmp_path / "ct", fx.ct_volume())
    out = write_dicom_seg(np.zeros((6, 10, 12), np.int64), files, {1: "spleen"}, ALGORITHM, tmp_path / "e.dcm")
    assert read_dicom_seg(out, files).max() == 0


def _dciodvfy(path: Path) -> str:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    output = r.stdout + r.stderr
    print(f"dciodvfy {path.name}:\n{output}")  # lands in the test log
    return output


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
@pytest.mark.parametrize("source", ["series", "multiframe", "empty"])
def test_dciodvfy_finds_no_error(tmp_path, source):
    if source == "multiframe":
        files = [fx.write_multiframe(tmp_path / "mr" / "mf.dcm", fx.mr_volume(), fx.oblique_grid())]
        labels = _labels((5, 9, 11))
    else:
        files = fx.write_series(tmp_path / "ct", fx.ct_volume(), fx.oblique_grid())
        labels = _labels((6, 10, 12)) * (source != "empty")
    out = write_dicom_seg(labels, files, NAMES, ALGORITHM, tmp_path / "seg.dcm")
    output = _dciodvfy(out)
    assert "Segmentation" in output.splitlines()[0]  # it recognised the IOD it checked
    assert [line for line in output.splitlines() if line.startswith("Error")] == []


def test_dciodvfy_would_see_an_error(tmp_path):
    """The check above is not vacuous: a missing Type 1 attribute is reported."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) not installed")
    _, _, out = _written(tmp_path, fx.Grid())
    ds = pydicom.dcmread(out)
    del ds.SegmentSequence[0].SegmentLabel
    ds.save_as(tmp_path / "broken.dcm")
    assert any(line.startswith("Error") for line in _dciodvfy(tmp_path / "broken.dcm").splitlines())


def test_de_identified_source_without_patient_attributes(tmp_path):
    def strip(k, ds):
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "StudyTime"):
            delattr(ds, keyword)
        return ds
    files = fx.write_series(tmp_path / "ct", fx.ct_volume(), edit=strip)
    labels = _labels((6, 10, 12))
    out = write_dicom_seg(labels, files, NAMES, ALGORITHM, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_dicom_seg(out, files), labels)
    assert pydicom.dcmread(out).PatientBirthDate == "" and "PatientSex" not in pydicom.dcmread(files[0])
    if shutil.which("dciodvfy"):
        assert not [line for line in _dciodvfy(out).splitlines() if line.startswith("Error")]


def test_existing_file_is_replaced_and_a_failed_write_leaves_it(tmp_path):
    files, labels, out = _written(tmp_path, fx.Grid())
    first = out.read_bytes()
    write_dicom_seg(labels, files, NAMES, ALGORITHM, out)
    assert out.read_bytes() != first  # new UIDs: replaced
    second = out.read_bytes()
    with pytest.raises(AutosegError, match="does not match the series' voxel grid"):
        write_dicom_seg(labels[:5], files, NAMES, ALGORITHM, out)
    assert out.read_bytes() == second and [p.name for p in out.parent.iterdir()] == ["seg.dcm"]


@pytest.mark.parametrize("case", fx.LAYOUT_CASES)
def test_bad_source_series_writes_nothing(tmp_path, monkeypatch, case):
    folder = tmp_path / "case"
    expected = fx.BAD_SERIES[case](folder, monkeypatch)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with pytest.raises(AutosegError) as err:
        write_dicom_seg(np.zeros((6, 10, 12), np.uint8), files, NAMES, ALGORITHM, tmp_path / "out" / "seg.dcm")
    assert len(err.value.problems) == 1 and all(text in str(err.value) for text in expected)
    assert not (tmp_path / "out").exists()


def test_source_without_frame_of_reference_is_refused(tmp_path):
    def strip(k, ds):
        del ds.FrameOfReferenceUID
        return ds
    files = fx.write_series(tmp_path / "ct", fx.ct_volume(), edit=strip)
    with pytest.raises(AutosegError, match="no FrameOfReferenceUID"):
        write_dicom_seg(_labels((6, 10, 12)), files, NAMES, ALGORITHM, tmp_path / "out" / "seg.dcm")
    assert not (tmp_path / "out").exists()


def test_label_names_and_values_are_checked(tmp_path):
    files = fx.write_series(tmp_path / "ct", fx.ct_volume())
    with pytest.raises(ValueError, match="1..K"):
        write_dicom_seg(np.zeros((6, 10, 12), np.uint8), files, {1: "a", 3: "b"}, ALGORITHM, tmp_path / "s.dcm")
    with pytest.raises(ValueError, match=r"values \[4\]"):
        write_dicom_seg(np.full((6, 10, 12), 4, np.uint8), files, NAMES, ALGORITHM, tmp_path / "s.dcm")
    with pytest.raises(ValueError, match="integer"):
        write_dicom_seg(np.zeros((6, 10, 12), np.float32), files, NAMES, ALGORITHM, tmp_path / "s.dcm")
    assert not (tmp_path / "s.dcm").exists()


def test_seg_of_another_series_is_refused(tmp_path):
    _, _, out = _written(tmp_path, fx.Grid())
    other = fx.write_series(tmp_path / "other", fx.ct_volume(seed=3))
    with pytest.raises(AutosegError, match="references series"):
        read_dicom_seg(out, other)


def test_property_codes_agree_with_pydicoms_snomed_table():
    for _, category, kind in dicom_seg.PROPERTY_CODES:
        for value, scheme, meaning in (category, kind):
            keyword = "".join(w[:1].upper() + w[1:] for w in meaning.split())
            assert getattr(codes.SCT, keyword).value == value, meaning
    assert dicom_seg.property_codes("Hepatic vessel")[1][2] == "Blood vessel"
    assert dicom_seg.property_codes("non-enhancing tumor")[1][2] == "Neoplasm"
    assert dicom_seg.property_codes("Left Atrium")[1][2] == "Left atrium"
    assert dicom_seg.property_codes("PZ") == (dicom_seg.GENERIC_CODE, dicom_seg.GENERIC_CODE)


def test_docstring_examples():
    assert doctest.testmod(dicom_seg).failed == 0
