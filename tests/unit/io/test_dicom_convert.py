"""``autoseg convert`` of a DICOM folder: image series with DICOM-SEG (and RTSTRUCT) annotations become a raw
dataset that ``autoseg verify`` passes, with the label maps the annotations hold on the series' grids; every bad
folder is one line, exit 2, and nothing is written."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")  # the 'dicom' extra, part of the 'test' extra

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pydicom.valuerep import format_number_as_ds  # noqa: E402

import _dicom_fixtures as fx  # noqa: E402
import autoseg.io.rtstruct as rtstruct  # noqa: E402
from autoseg.cli import main  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.inference.dicom_input import find_dicom_series  # noqa: E402
from autoseg.io.convert import convert  # noqa: E402
from autoseg.io.dicom import read_series  # noqa: E402
from autoseg.io.dicom_dataset import DicomConvertSpec, convert_dicom  # noqa: E402
from autoseg.io.dicom_seg import write_dicom_seg  # noqa: E402
from autoseg.io.image import read_image  # noqa: E402

ALGORITHM = {"version": "0.1.0", "dataset": "tests"}


def _blocks(shape, seed) -> np.ndarray:
    """Labels 1 and 2 as disjoint blocks, placed by ``seed``."""
    labels = np.zeros(shape, np.uint8)
    s = seed % 2
    labels[1:4, 1 + s:5 + s, 2:6] = 1
    labels[2:5, 6:9, 7 + s:10 + s] = 2
    return labels


def _annotated_folder(root: Path) -> dict:
    """p1 (axial) and p2 (oblique) with SEGs in a folder of their own, numbering the same names differently;
    p3 without annotation. Returns case id -> (series files, label map in dataset values)."""
    study = fx.Study.new()
    p1 = fx.write_series(root / "p1" / "CT", fx.ct_volume(), fx.Grid(), rescale=(1.0, -1024.0), study=study)
    p2 = fx.write_series(root / "p2" / "CT", fx.ct_volume(seed=2), fx.oblique_grid(), rescale=(1.0, -1024.0))
    p3 = fx.write_series(root / "p3" / "CT", fx.ct_volume(seed=3), rescale=(1.0, -1024.0))
    a = _blocks((6, 10, 12), 0)
    write_dicom_seg(a, p1, {1: "liver", 2: "liver tumour"}, ALGORITHM, root / "segs" / "first.dcm")
    b = _blocks((6, 10, 12), 1)  # segment 1 'liver tumour', 2 'liver', 3 'spleen' (empty)
    write_dicom_seg(b, p2, {1: "liver tumour", 2: "liver", 3: "spleen"}, ALGORITHM, root / "segs" / "second.dcm")
    b_values = np.array([0, 2, 1], np.uint8)[b]
    return {"p1_CT": (p1, a), "p2_CT": (p2, b_values), "p3_CT": (p3, None)}


def test_dicom_folder_converts_to_a_raw_dataset_that_verifies(tmp_path, capsys):
    expected = _annotated_folder(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "raw")]) == 0
    raw = tmp_path / "raw"
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "liver tumour": 2, "spleen": 3}
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 2
    assert meta["autoseg_convert"]["cases"]["p1_CT"]["annotation"] == "segs/first.dcm"
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == ["p1_CT_0000.nii.gz", "p2_CT_0000.nii.gz"]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == ["p1_CT.nii.gz", "p2_CT.nii.gz"]
    assert sorted(p.name for p in (raw / "imagesTs").iterdir()) == ["p3_CT_0000.nii.gz"]
    for case, (files, labels) in expected.items():
        volume, geometry = read_series(files)
        where = "imagesTs" if labels is None else "imagesTr"
        image, image_geometry = read_image([raw / where / f"{case}_0000.nii.gz"])
        np.testing.assert_array_equal(image, volume)  # HU, whole numbers: stored as int16, unchanged
        assert np.allclose(image_geometry.origin, geometry.origin, atol=1e-4)
        assert np.allclose(image_geometry.direction, geometry.direction, atol=1e-5)
        if labels is not None:
            written, label_geometry = read_image([raw / "labelsTr" / f"{case}.nii.gz"])
            np.testing.assert_array_equal(written[0], labels)
            assert np.allclose(label_geometry.direction, geometry.direction, atol=1e-5)
    capsys.readouterr()
    assert main(["verify", str(raw)]) == 0


def test_case_ids_are_those_predict_gives(tmp_path):
    _annotated_folder(tmp_path / "src")
    out = convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    cases = json.loads((out / "dataset.json").read_text())["autoseg_convert"]["cases"]
    assert {c: v["series"] for c, v in cases.items()} == \
        {c: s.uid for c, s in find_dicom_series(tmp_path / "src")}


def test_name_option_and_the_python_spec(tmp_path):
    _annotated_folder(tmp_path / "src")
    convert_dicom(tmp_path / "src", tmp_path / "raw", DicomConvertSpec(name="Liver"), progress=False)
    assert json.loads((tmp_path / "raw" / "dataset.json").read_text())["name"] == "Liver"


# --- refused folders: each builder writes a source folder and returns what the one line must name ------------------

def _overlapping_seg(files: list[Path], path: Path) -> Path:
    """A SEG (made with highdicom directly) whose segments 'liver' and 'lesion' share a voxel."""
    masks = np.zeros((len(files), 10, 12, 2), bool)
    masks[1:3, 2:5, 2:5, 0] = True
    masks[2, 4:7, 4:7, 1] = True  # overlaps at z 2, (4, 4)
    category = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
    segments = [hd.seg.SegmentDescription(number, name, category, category, "MANUAL")
                for number, name in ((1, "liver"), (2, "lesion"))]
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(f) for f in files], pixel_array=masks, segmentation_type="BINARY",
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="tests", manufacturer_model_name="tests", software_versions="0",
        device_serial_number="0")
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def bad_reference(src: Path, tmp: Path) -> tuple[str, ...]:
    elsewhere = fx.write_series(tmp / "elsewhere", fx.ct_volume())
    fx.write_series(src / "p1", fx.ct_volume(seed=2))
    seg = write_dicom_seg(_blocks((6, 10, 12), 0), elsewhere, {1: "a", 2: "b"}, ALGORITHM, src / "seg.dcm")
    return str(seg), fx.read(elsewhere[0]).SeriesInstanceUID, "which is not in"


def bad_two_annotations(src: Path, tmp: Path) -> tuple[str, ...]:
    files = fx.write_series(src / "p1", fx.ct_volume())
    write_dicom_seg(_blocks((6, 10, 12), 0), files, {1: "a", 2: "b"}, ALGORITHM, src / "one.dcm")
    write_dicom_seg(_blocks((6, 10, 12), 1), files, {1: "a", 2: "b"}, ALGORITHM, src / "two.dcm")
    return fx.read(files[0]).SeriesInstanceUID, "2 annotations", "one.dcm", "two.dcm", "keep one per series"


def bad_grid(src: Path, tmp: Path) -> tuple[str, ...]:
    uid = generate_uid()
    other = fx.write_series(tmp / "other_grid", fx.ct_volume(), fx.Grid(spacing=(2.5, 0.5, 0.5)), series_uid=uid)
    seg = write_dicom_seg(_blocks((6, 10, 12), 0), other, {1: "a", 2: "b"}, ALGORITHM, src / "seg.dcm")
    fx.write_series(src / "p1", fx.ct_volume(), fx.Grid(), series_uid=uid)  # same series, other pixel spacing
    return str(seg), "not on the voxel grid", uid


def bad_name_case(src: Path, tmp: Path) -> tuple[str, ...]:
    a = fx.write_series(src / "p1", fx.ct_volume())
    b = fx.write_series(src / "p2", fx.ct_volume(seed=2))
    write_dicom_seg(_blocks((6, 10, 12), 0), a, {1: "Liver", 2: "b"}, ALGORITHM, src / "a.dcm")
    write_dicom_seg(_blocks((6, 10, 12), 0), b, {1: "liver", 2: "b"}, ALGORITHM, src / "b.dcm")
    return "'liver' and 'Liver'", "differ only in case or spaces", "b.dcm"


def bad_name_twice(src: Path, tmp: Path) -> tuple[str, ...]:
    a = fx.write_series(src / "p1", fx.ct_volume())
    write_dicom_seg(_blocks((6, 10, 12), 0), a, {1: "liver", 2: "liver"}, ALGORITHM, src / "a.dcm")
    return "a.dcm", "segments 1 and 2 are both named 'liver'"


def bad_background_name(src: Path, tmp: Path) -> tuple[str, ...]:
    a = fx.write_series(src / "p1", fx.ct_volume())
    write_dicom_seg(_blocks((6, 10, 12), 0), a, {1: "Background", 2: "b"}, ALGORITHM, src / "a.dcm")
    return "a.dcm", "segment 1 is named 'Background'"


def bad_overlap(src: Path, tmp: Path) -> tuple[str, ...]:
    files = fx.write_series(src / "p1", fx.ct_volume())
    seg = _overlapping_seg(files, src / "seg.dcm")
    return str(seg), "segments 1 'liver' and 2 'lesion' overlap"


def bad_no_image_series(src: Path, tmp: Path) -> tuple[str, ...]:
    files = fx.write_series(tmp / "elsewhere", fx.ct_volume())
    write_dicom_seg(_blocks((6, 10, 12), 0), files, {1: "a", 2: "b"}, ALGORITHM, src / "seg.dcm")
    return str(src), "only non-image DICOM objects (1 SEG)"


def bad_no_annotation(src: Path, tmp: Path) -> tuple[str, ...]:
    fx.write_series(src / "p1", fx.ct_volume())
    return str(src), "no DICOM-SEG or RTSTRUCT annotation"


def bad_modalities(src: Path, tmp: Path) -> tuple[str, ...]:
    a = fx.write_series(src / "p1", fx.ct_volume())
    fx.write_series(src / "p2", fx.mr_volume(shape=(6, 10, 12)), modality="MR")
    write_dicom_seg(_blocks((6, 10, 12), 0), a, {1: "a", 2: "b"}, ALGORITHM, src / "a.dcm")
    return "several modalities", "CT: 1", "MR: 1"


def bad_rtstruct_reference(src: Path, tmp: Path) -> tuple[str, ...]:
    elsewhere = fx.write_series(tmp / "elsewhere", fx.ct_volume())
    fx.write_series(src / "p1", fx.ct_volume(seed=2))
    rt = write_rtstruct(src / "rt.dcm", elsewhere, {1: ("Prostate", [_contour(fx.Grid(), 2, (3, 5), (3, 5))])})
    return str(rt), "RTSTRUCT references series", fx.read(elsewhere[0]).SeriesInstanceUID, "which is not in"


BAD = {f.__name__[4:]: f for f in (bad_reference, bad_rtstruct_reference, bad_two_annotations, bad_grid,
                                    bad_name_case, bad_name_twice, bad_background_name, bad_overlap,
                                    bad_no_image_series, bad_no_annotation, bad_modalities)}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_folders_are_one_line_and_nothing_is_written(tmp_path, name):
    src = tmp_path / "src"
    src.mkdir()
    needles = BAD[name](src, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(AutosegError) as e:
        convert(src, tmp_path / "raw", None, progress=False)
    assert len(e.value.problems) == 1, e.value.problems
    line = e.value.problems[0]
    assert "\n" not in line and all(n in line for n in needles), line
    assert sorted(tmp_path.rglob("*")) == before  # no output, no temporary left beside it


def test_the_cli_exits_2_and_keeps_what_is_on_disk(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    bad_overlap(src, tmp_path)
    assert main(["convert", str(src), str(tmp_path / "raw")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not progress
    assert len(err) == 1 and "overlap" in err[0]
    assert not (tmp_path / "raw").exists()
    _annotated_folder(tmp_path / "good")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert main(["convert", str(tmp_path / "good"), str(tmp_path / "kept")]) == 2
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]


# --- RTSTRUCT -----------------------------------------------------------------------------------------------------

def _contour(grid: fx.Grid, k: int, rows: tuple[int, int], cols: tuple[int, int]) -> list[str]:
    """The closed contour around voxels ``rows[0]..rows[1]-1`` x ``cols[0]..cols[1]-1`` of slice ``k``, along the
    voxel edges (half a voxel outside the centres), in patient coordinates."""
    corner = np.array([float(v) for v in grid.position(k)])
    row, col = np.array(grid.row, float), np.array(grid.col, float)
    dy, dx = grid.spacing[1], grid.spacing[2]
    points = [corner + (c - 0.5) * dx * row + (r - 0.5) * dy * col
              for r, c in ((rows[0], cols[0]), (rows[0], cols[1]), (rows[1], cols[1]), (rows[1], cols[0]))]
    return [format_number_as_ds(float(v)) for p in points for v in p]


def write_rtstruct(path: Path, files: list[Path], rois: dict[int, tuple[str, list[list[str]]]]) -> Path:
    """A minimal RTSTRUCT on the series of ``files``: ROI number -> (name, contours)."""
    source = fx.read(files[0])
    ds = Dataset()
    fx._common(ds, fx.Study(source.StudyInstanceUID, source.FrameOfReferenceUID), rtstruct.RTSTRUCT_STORAGE,
               "RTSTRUCT")
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 9, 1
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "tests", "20240102", "101500"
    series, study, frame = Dataset(), Dataset(), Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = source.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.FrameOfReferenceUID = source.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, contours) in rois.items():
        roi, item = Dataset(), Dataset()
        roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "MANUAL"
        roi.ReferencedFrameOfReferenceUID = source.FrameOfReferenceUID
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence()
        for data in contours:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints, c.ContourData = "CLOSED_PLANAR", len(data) // 3, data
            item.ContourSequence.append(c)
        ds.StructureSetROISequence.append(roi)
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("grid", [fx.Grid(), fx.oblique_grid()], ids=["axial", "oblique"])
def test_rtstruct_contours_become_the_voxels_they_enclose(tmp_path, grid):
    files = fx.write_series(tmp_path / "src" / "p1", fx.ct_volume(), grid)
    expected = np.zeros((6, 10, 12), np.uint8)
    expected[1, 2:8, 3:10] = 1
    expected[1, 4:6, 5:7] = 0  # a hole: the inner contour of the same ROI
    expected[2, 2:8, 3:10] = 1
    expected[3, 0:3, 0:2] = 2
    write_rtstruct(tmp_path / "src" / "rt.dcm", files, {
        7: ("Bladder", [_contour(grid, 1, (2, 8), (3, 10)), _contour(grid, 1, (4, 6), (5, 7)),
                        _contour(grid, 2, (2, 8), (3, 10))]),
        3: ("Rectum", [_contour(grid, 3, (0, 3), (0, 2))])})
    out = convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Rectum": 1, "Bladder": 2}  # by ROI number
    written, _ = read_image([out / "labelsTr" / "p1.nii.gz"])
    np.testing.assert_array_equal(written[0], np.array([0, 2, 1], np.uint8)[expected])


def test_rtstruct_overlap_and_off_slice_contours_are_refused(tmp_path):
    grid = fx.Grid()
    files = fx.write_series(tmp_path / "src" / "p1", fx.ct_volume(), grid)
    rt = write_rtstruct(tmp_path / "src" / "rt.dcm", files, {
        1: ("Body", [_contour(grid, 2, (0, 10), (0, 12))]), 2: ("Prostate", [_contour(grid, 2, (3, 5), (3, 5))])})
    with pytest.raises(AutosegError, match="ROIs 'Body' and 'Prostate' overlap"):
        convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    off = _contour(grid, 2, (3, 5), (3, 5))
    off[2::3] = [format_number_as_ds(float(v) + 1.0) for v in off[2::3]]  # 1 mm off a 2.5 mm slice step
    rt.unlink()
    write_rtstruct(tmp_path / "src" / "rt.dcm", files, {1: ("Prostate", [off])})
    with pytest.raises(AutosegError, match="ROI 'Prostate' has a contour at z = .* that lies on no slice"):
        convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    assert not (tmp_path / "raw").exists()


def test_rtstruct_doctests():
    assert doctest.testmod(rtstruct).failed == 0


def test_seg_and_rtstruct_cases_share_label_values(tmp_path):
    grid = fx.Grid()
    a = fx.write_series(tmp_path / "src" / "a", fx.ct_volume(), grid)
    b = fx.write_series(tmp_path / "src" / "b", fx.ct_volume(seed=2), fx.oblique_grid())
    write_rtstruct(tmp_path / "src" / "a_rt.dcm", a, {1: ("kidney", [_contour(grid, 1, (2, 4), (2, 4))]),
                                                      2: ("liver", [_contour(grid, 3, (5, 9), (6, 11))])})
    labels = _blocks((6, 10, 12), 0)
    write_dicom_seg(labels, b, {1: "liver", 2: "spleen"}, ALGORITHM, tmp_path / "src" / "b_seg.dcm")
    out = convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    assert json.loads((out / "dataset.json").read_text())["labels"] == \
        {"background": 0, "kidney": 1, "liver": 2, "spleen": 3}
    written, _ = read_image([out / "labelsTr" / "b.nii.gz"])
    np.testing.assert_array_equal(written[0], np.array([0, 2, 3], np.uint8)[labels])


def test_an_enhanced_multiframe_series_with_its_seg_converts(tmp_path):
    mr = fx.write_multiframe(tmp_path / "src" / "b" / "enhanced.dcm", fx.mr_volume(), fx.oblique_grid(),
                             frame_order=[2, 0, 4, 1, 3])
    labels = np.zeros((5, 9, 11), np.uint8)
    labels[1, 2:5, 3:7] = 1
    labels[3, 0:2, 0:3] = 1
    write_dicom_seg(labels, [mr], {1: "left atrium"}, ALGORITHM, tmp_path / "src" / "b_seg.dcm")
    out = convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"} and meta["labels"] == {"background": 0, "left atrium": 1}
    written, _ = read_image([out / "labelsTr" / "b.nii.gz"])
    np.testing.assert_array_equal(written[0], labels)


def test_a_folder_without_dicom_needs_patterns(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"not dicom")
    with pytest.raises(AutosegError, match="holds no DICOM file; for image files give the patterns"):
        convert(tmp_path / "src", tmp_path / "raw", None, progress=False)
    assert not (tmp_path / "raw").exists()
