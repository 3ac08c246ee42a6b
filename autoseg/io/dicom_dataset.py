"""``autoseg convert`` of a DICOM folder: image series and their DICOM-SEG / RTSTRUCT annotations -> a raw dataset.

Every image series below the source folder (at any depth, :func:`autoseg.io.dicom_series.find_series`) is one
case, named as ``autoseg predict`` names DICOM input (:mod:`autoseg.io.dicom_case_ids`). Every DICOM-SEG and
RTSTRUCT below it is an annotation, matched to its image series by the SeriesInstanceUID it references (SEG:
``ReferencedSeriesSequence``; RTSTRUCT: ``ReferencedFrameOfReferenceSequence`` -> ``RTReferencedStudySequence`` ->
``RTReferencedSeriesSequence``); file names and folders play no part in the matching.

Output (nnU-Net v2 raw layout, readable by nnU-Net too):

* ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` for every annotated series, both with the series'
  geometry (:func:`autoseg.io.dicom.read_series`: voxel values with the rescale applied, int16 where they are
  whole numbers that fit, else float32);
* ``imagesTs/<case>_0000.nii.gz`` for every series without an annotation (to predict, not to train on);
* ``dataset.json``: ``channel_names`` the series' modality (``CT`` selects CT normalisation), ``labels`` named
  from the annotations, ``file_ending`` ``.nii.gz``, and under ``autoseg_convert`` each case's SeriesInstanceUID
  and annotation file.

Labels: a SEG segment is named by its SegmentDescription (its full name), else its SegmentLabel; an RTSTRUCT ROI by
its ROIName. Equal names are one label in every case: values are given 1, 2, ... in the order names first occur
(cases by id, segments by number), background 0. Refused (one line each, exit 2, nothing written, nothing on disk
replaced):

* an annotation referencing no series of the folder, or several; two annotations for one series;
* a SEG not on its series' grid (size, orientation, pixel spacing or frame positions), or not BINARY;
* overlapping segments (or ROIs) in one annotation: a label map holds one label per voxel, and which segment
  should win is not the converter's to guess; the line names the file and both segments;
* label name conflicts: an annotation without segments, a segment without a name, two segments of one annotation with one name, a segment named
  ``background``, names that differ only in case or spaces (``Liver`` and ``liver ``) across files;
* no image series, no annotation at all, series of several modalities (one channel has one);
* any series the image reader refuses (:func:`autoseg.io.dicom.read_series_layout`).

RTSTRUCT contours are rasterised by :mod:`autoseg.io.rtstruct` (optional extra ``[rtstruct]``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autoseg.errors import AutosegError, option, require_extra
from autoseg.io.convert import check_folders, publish_dataset
from autoseg.io.dicom import SeriesLayout, read_series, read_series_layout
from autoseg.io.dicom_case_ids import find_series_cases
from autoseg.io.dicom_series import SeriesInfo, files_under, sniff, is_dicom_folder, read_header
from autoseg.io.image import write_image
from autoseg.progress import wrap

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
ENDING = ".nii.gz"


@dataclass(frozen=True)
class DicomConvertSpec:
    """How a DICOM folder is converted (the rest comes from the headers).

    Attributes
    ----------
    name
        Dataset name; default the output folder's name.
    """

    name: str | None = None


@dataclass(frozen=True)
class Annotation:
    """A DICOM-SEG or RTSTRUCT found in the source folder, from its header.

    Attributes
    ----------
    path
        The file.
    kind
        ``"SEG"`` or ``"RTSTRUCT"``.
    referenced
        SeriesInstanceUIDs it references.
    segments
        ``(segment or ROI number, name)`` of each segment, by number.
    """

    path: Path
    kind: str
    referenced: tuple[str, ...]
    segments: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class DicomCase:
    """One image series and its annotation (None: a test case, written to ``imagesTs``)."""

    case_id: str
    series: SeriesInfo
    annotation: Annotation | None


def convert_dicom(source: Path, out_dir: Path, spec: DicomConvertSpec | None = None, progress: bool = True) -> Path:
    """Write ``out_dir`` (an nnU-Net v2 raw dataset) from the DICOM series and annotations below ``source``.

    Parameters
    ----------
    source
        Folder searched at any depth (see the module notes).
    out_dir
        Dataset folder to create (absent or empty).
    spec
        Options (default :class:`DicomConvertSpec`).
    progress
        Print progress lines.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    AutosegError
        Every problem found (one line each, see the module notes); nothing is written then.
    """
    source, out_dir, spec = Path(source), Path(out_dir), spec or DicomConvertSpec()
    check_folders(source, out_dir)
    if not is_dicom_folder(source):
        raise AutosegError(f"{source}: holds no DICOM file; for image files give the patterns "
                           f"({option('images')}, {option('labels')})")
    cases = matched_cases(source)
    values = label_values(cases)
    modality = _one_modality(cases)
    _check_label_maps(cases, values, progress)

    def write(tmp: Path) -> None:
        _write_cases(tmp, cases, values, progress)
        meta = _dataset_json(source, out_dir, spec, cases, values, modality)
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return publish_dataset(out_dir, write)


# --- finding and matching ---------------------------------------------------------------------------------------

def _annotation(path: Path, ds) -> Annotation | None:
    """The annotation a header describes, or None for any other object."""
    from autoseg.io.rtstruct import rtstruct_references, rtstruct_rois

    sop, modality = str(ds.get("SOPClassUID", "")), str(ds.get("Modality", "")).upper()
    if sop == SEG_STORAGE or modality == "SEG":
        referenced = tuple(dict.fromkeys(str(i.get("SeriesInstanceUID", ""))
                                         for i in ds.get("ReferencedSeriesSequence") or []))
        segments = sorted((int(s.SegmentNumber), _segment_name(s)) for s in ds.get("SegmentSequence") or [])
        return Annotation(path, "SEG", tuple(u for u in referenced if u), tuple(segments))
    if sop == RTSTRUCT_STORAGE or modality == "RTSTRUCT":
        return Annotation(path, "RTSTRUCT", rtstruct_references(ds), rtstruct_rois(ds))
    return None


def _segment_name(item) -> str:
    """A SEG segment's name: its description (the full name), else its label (at most 64 characters)."""
    return str(item.get("SegmentDescription") or item.get("SegmentLabel") or "").strip()


def find_annotations(source: Path) -> list[Annotation]:
    """Every DICOM-SEG and RTSTRUCT below ``source``, from the headers (no pixel data is read).

    Raises
    ------
    AutosegError
        A DICOM file is truncated or corrupt (one line naming it).
    """
    found = []
    for path in files_under(source):
        kind = sniff(path)
        header = read_header(path, kind) if kind else None
        try:
            annotation = _annotation(path, header.ds) if header is not None else None
        except (AttributeError, TypeError, ValueError):  # a segment or ROI without a (numeric) number
            raise AutosegError(f"{path}: {header.ds.get('Modality', 'DICOM')} object with a segment or ROI "
                               f"without a valid number (SegmentNumber, ROINumber)") from None
        if annotation is not None:
            found.append(annotation)
    return found


def matched_cases(source: Path) -> list[DicomCase]:
    """Every image series below ``source`` with its annotation (or None), sorted by case id.

    Raises
    ------
    AutosegError
        No image series; an annotation referencing no series of the folder, or several; two annotations for one
        series; no annotation at all (one line each).
    """
    series = find_series_cases(source)
    by_uid = {s.uid: s for _, s in series}
    problems: list[str] = []
    claimed: dict[str, list[Annotation]] = {}
    for a in find_annotations(source):
        hits = [u for u in a.referenced if u in by_uid]
        if not hits:
            shown = ", ".join(a.referenced) or "none (no referenced series in its header)"
            problems.append(f"{a.path}: {a.kind} references series {shown}, which is not in {source}")
        elif len(hits) > 1:
            problems.append(f"{a.path}: {a.kind} references {len(hits)} series of {source} ({', '.join(hits)}); "
                            f"an annotation must reference one")
        else:
            claimed.setdefault(hits[0], []).append(a)
    for uid, annotations in claimed.items():
        if len(annotations) > 1:
            files = ", ".join(str(a.path) for a in annotations)
            problems.append(f"{by_uid[uid].name()}: {len(annotations)} annotations ({files}); keep one per series")
    if not claimed and not problems:
        problems.append(f"{source}: no DICOM-SEG or RTSTRUCT annotation found, nothing to train on")
    if problems:
        raise AutosegError(*problems)
    return [DicomCase(cid, s, claimed.get(s.uid, [None])[0]) for cid, s in series]


# --- labels -------------------------------------------------------------------------------------------------------

def _key(name: str) -> str:
    """What makes two names the same label up to spelling: case and runs of spaces."""
    return " ".join(name.split()).casefold()


def _segment_problems(a: Annotation) -> list[str]:
    """What one annotation's segments cannot be: none at all, unnamed, ``background``, one name twice."""
    if not a.segments:
        return [f"{a.path}: {a.kind} without segments (no SegmentSequence / StructureSetROISequence items)"]
    problems = []
    seen: dict[str, int] = {}
    for number, name in a.segments:
        if not name:
            problems.append(f"{a.path}: segment {number} has no name (SegmentLabel, SegmentDescription or "
                            f"ROIName), so it cannot be matched to a label")
        elif _key(name) == "background":
            problems.append(f"{a.path}: segment {number} is named '{name}'; background is label 0, the voxels no "
                            f"segment covers")
        elif _key(name) in seen:
            problems.append(f"{a.path}: segments {seen[_key(name)]} and {number} are both named '{name}'; one name "
                            f"is one label")
        else:
            seen[_key(name)] = number
    return problems


def label_values(cases: Sequence[DicomCase]) -> dict[str, int]:
    """Label name -> value over all annotations: 1, 2, ... in the order names first occur (cases by id, segments
    by number).

    Raises
    ------
    AutosegError
        Label name conflicts (see the module notes), one line each.
    """
    problems: list[str] = []
    values: dict[str, int] = {}
    spelled: dict[str, tuple[str, Path]] = {}  # key -> the first spelling and its file
    for c in cases:
        if c.annotation is None:
            continue
        bad = _segment_problems(c.annotation)
        problems.extend(bad)
        for _, name in ([] if bad else c.annotation.segments):
            first, where = spelled.setdefault(_key(name), (name, c.annotation.path))
            if first != name:
                problems.append(f"{c.annotation.path}: segment '{name}' and '{first}' of {where} differ only in "
                                f"case or spaces; spell them alike (one label) or differently (two)")
            values.setdefault(first, len(values) + 1)
    if problems:
        raise AutosegError(*problems)
    return values


def _value_of(annotation: Annotation, values: Mapping[str, int]) -> dict[int, int]:
    """Segment number -> label value."""
    return {number: values[name] for number, name in annotation.segments}


def _one_modality(cases: Sequence[DicomCase]) -> str:
    """The series' one modality, the channel's name (``CT`` selects CT normalisation); ``image`` when unnamed."""
    modality_of = {c.case_id: c.series.modality.upper() or "image" for c in cases}
    counts = Counter(modality_of.values())
    if len(counts) > 1:
        example = {m: next(c.series.name() for c in cases if modality_of[c.case_id] == m) for m in counts}
        raise AutosegError("series of several modalities (" + "; ".join(
            f"{m}: {n}, e.g. {example[m]}" for m, n in counts.most_common()) + "); a dataset's channel has one")
    return counts.most_common(1)[0][0]


# --- label maps ---------------------------------------------------------------------------------------------------

def read_label_map(case: DicomCase, layout: SeriesLayout, values: Mapping[str, int]) -> np.ndarray:
    """A case's annotation as a ``(z, y, x)`` label map of label values on its series' grid.

    Raises
    ------
    AutosegError
        The annotation is not on the series' grid, cannot be read, or has overlapping segments.
    """
    value_of = _value_of(case.annotation, values)
    if case.annotation.kind == "RTSTRUCT":
        from autoseg.io.rtstruct import rasterise_rtstruct

        return rasterise_rtstruct(case.annotation.path, layout, value_of)
    from autoseg.io.dicom_seg import read_dicom_seg

    numbers = read_dicom_seg(case.annotation.path, layout)
    _check_seg_overlap(case.annotation, layout)
    lut = np.zeros(max([int(numbers.max()), *value_of]) + 1, dtype=np.uint8 if len(values) < 256 else np.uint16)
    for number, value in value_of.items():
        lut[number] = value
    return lut[numbers]


def _check_seg_overlap(annotation: Annotation, layout: SeriesLayout) -> None:
    """Refuse a SEG two of whose segments cover one voxel, naming both (its frames lie on the grid: checked by
    :func:`autoseg.io.dicom_seg.read_dicom_seg` before)."""
    from autoseg.io.dicom_seg import frame_positions  # the reader's own frame walk, so both agree

    pydicom = require_extra("pydicom", "dicom", "reading DICOM-SEG")

    seg = pydicom.dcmread(annotation.path)
    if "PixelData" not in seg:
        return
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)).astype(bool)
    positions, segments = frame_positions(seg, annotation.path)
    normal = np.asarray(layout.geometry.direction).reshape(3, 3)[:, 2]
    slices = np.rint((positions - np.asarray(layout.geometry.origin)) @ normal / layout.geometry.spacing[0])
    names = dict(annotation.segments)
    on_slice: dict[int, list[tuple[int, np.ndarray]]] = {}
    for frame, z, segment in zip(frames, slices.astype(int), segments):
        for other, mask in on_slice.get(int(z), []):
            if other != segment and (mask & frame).any():
                a, b = sorted((other, segment))
                raise AutosegError(f"{annotation.path}: segments {a} '{names.get(a, a)}' and {b} '{names.get(b, b)}' "
                                   f"overlap; a label map holds one label per voxel, remove the overlap (or one "
                                   f"segment) from the SEG")
        on_slice.setdefault(int(z), []).append((segment, frame))


def _check_label_maps(cases: Sequence[DicomCase], values: Mapping[str, int], progress: bool) -> None:
    """Read every series' layout and every annotation once before anything is written; one line per problem."""
    problems: list[str] = []
    for c in wrap(list(cases), len(cases), "check annotations", "case", progress):
        try:
            layout = read_series_layout(c.series)
            if c.annotation is not None:
                read_label_map(c, layout, values)
        except AutosegError as e:
            problems.extend(e.problems)
    if problems:
        raise AutosegError(*problems)


# --- writing ------------------------------------------------------------------------------------------------------

def _compact(volume: np.ndarray) -> np.ndarray:
    """Voxel values as int16 where they are whole numbers that fit (CT in HU, most MR), else float32."""
    if volume.size and np.array_equal(volume, np.rint(volume)) and volume.min() >= -32768 and volume.max() <= 32767:
        return volume.astype(np.int16)
    return volume.astype(np.float32)


def _write_cases(tmp: Path, cases: Sequence[DicomCase], values: Mapping[str, int], progress: bool) -> None:
    (tmp / "imagesTr").mkdir()
    (tmp / "labelsTr").mkdir()
    if any(c.annotation is None for c in cases):
        (tmp / "imagesTs").mkdir()
    for c in wrap(list(cases), len(cases), "convert", "case", progress):
        layout = read_series_layout(c.series)
        volume, geometry = read_series(c.series)
        images = "imagesTs" if c.annotation is None else "imagesTr"
        write_image(_compact(volume[0]), geometry, tmp / images / f"{c.case_id}_0000{ENDING}")
        if c.annotation is not None:
            write_image(read_label_map(c, layout, values), geometry, tmp / "labelsTr" / f"{c.case_id}{ENDING}")


def _dataset_json(source: Path, out_dir: Path, spec: DicomConvertSpec, cases: Sequence[DicomCase],
                  values: Mapping[str, int], modality: str) -> dict[str, Any]:
    """nnU-Net v2 keys, and where each case came from."""
    return {
        "name": spec.name or out_dir.name,
        "description": f"converted by autoseg convert from the DICOM folder {source.resolve()}",
        "channel_names": {"0": modality},
        "labels": {"background": 0, **values},
        "numTraining": sum(c.annotation is not None for c in cases),
        "file_ending": ENDING,
        "autoseg_convert": {
            "source": str(source.resolve()), "format": "dicom",
            "cases": {c.case_id: {"series": c.series.uid, "set": "Ts" if c.annotation is None else "Tr",
                                  "annotation": None if c.annotation is None else
                                  str(c.annotation.path.resolve().relative_to(source.resolve()))}
                      for c in cases}},
    }
