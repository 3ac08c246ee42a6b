"""Label maps as DICOM-SEG objects that reference their source series, and back.

A PACS shows a segmentation on its image only as a DICOM-SEG that references the image's series and instances.
:func:`write_dicom_seg` writes one, with highdicom: segmentation type BINARY, one segment per foreground label of
the dataset, segment number = label value. Every label of ``label_names`` gets its segment even when the label map
holds none of it, so the segment numbers, labels and codes are the same in every SEG of one model (a viewer's
colours and a reader's mapping stay put; empty segments simply have no frames).

Segmented property category and type are SNOMED CT codes chosen from the label name by :data:`PROPERTY_CODES`: the
first entry one of whose terms occurs in the name as a whole word (case-insensitive, a plural 's' allowed) wins, so
'liver tumour' is a neoplasm and 'hepatic vessel' a blood vessel. Names that match no entry get the generic
category and type :data:`GENERIC_CODE` (SCT 85756007 "Tissue" for both, as 3D Slicer's default). The algorithm is
identified as AUTOMATIC, family DCM 123110 "Artificial Intelligence", with the model's name, version and
parameters (dataset, configuration, folds).

pydicom and highdicom are optional dependencies (``pip install 'autoseg[dicom]'``), imported only when called.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.errors import AutosegError, require_extra
from autoseg.io.dicom import SeriesLayout, functional_item, read_series_layout
from autoseg.io.dicom_series import SeriesInfo
from autoseg.schema.base import atomic_path

Code = tuple[str, str, str]
"""A coded concept: (code value, coding scheme designator, code meaning)."""

ANATOMICAL_STRUCTURE: Code = ("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE: Code = ("49755003", "SCT", "Morphologically Abnormal Structure")
GENERIC_CODE: Code = ("85756007", "SCT", "Tissue")
"""Category and type of a label whose name matches no entry of :data:`PROPERTY_CODES`."""
AI_FAMILY: Code = ("123110", "DCM", "Artificial Intelligence")

#: (terms, segmented property category, segmented property type), the first matching entry wins: abnormal
#: structures come first, so a 'kidney tumour' is a neoplasm, not a kidney.
PROPERTY_CODES: tuple[tuple[tuple[str, ...], Code, Code], ...] = (
    (("tumour", "tumor", "neoplasm", "cancer", "carcinoma", "metastasis", "metastases"), ABNORMAL_STRUCTURE,
     ("108369006", "SCT", "Neoplasm")),
    (("edema", "oedema"), ABNORMAL_STRUCTURE, ("79654002", "SCT", "Edema")),
    (("necrosis",), ABNORMAL_STRUCTURE, ("6574001", "SCT", "Necrosis")),
    (("cyst",), ABNORMAL_STRUCTURE, ("367643001", "SCT", "Cyst")),
    (("lesion",), ABNORMAL_STRUCTURE, ("52988006", "SCT", "Lesion")),
    (("left atrium",), ANATOMICAL_STRUCTURE, ("82471001", "SCT", "Left atrium")),
    (("adrenal gland",), ANATOMICAL_STRUCTURE, ("23451007", "SCT", "Adrenal gland")),
    (("heart",), ANATOMICAL_STRUCTURE, ("80891009", "SCT", "Heart")),
    (("liver",), ANATOMICAL_STRUCTURE, ("10200004", "SCT", "Liver")),
    (("spleen",), ANATOMICAL_STRUCTURE, ("78961009", "SCT", "Spleen")),
    (("kidney",), ANATOMICAL_STRUCTURE, ("64033007", "SCT", "Kidney")),
    (("hippocampus",), ANATOMICAL_STRUCTURE, ("5366008", "SCT", "Hippocampus")),
    (("brain",), ANATOMICAL_STRUCTURE, ("12738006", "SCT", "Brain")),
    (("lung",), ANATOMICAL_STRUCTURE, ("39607008", "SCT", "Lung")),
    (("pancreas",), ANATOMICAL_STRUCTURE, ("15776009", "SCT", "Pancreas")),
    (("prostate",), ANATOMICAL_STRUCTURE, ("41216001", "SCT", "Prostate")),
    (("aorta",), ANATOMICAL_STRUCTURE, ("15825003", "SCT", "Aorta")),
    (("stomach",), ANATOMICAL_STRUCTURE, ("69695003", "SCT", "Stomach")),
    (("gallbladder",), ANATOMICAL_STRUCTURE, ("28231008", "SCT", "Gallbladder")),
    (("esophagus", "oesophagus"), ANATOMICAL_STRUCTURE, ("32849002", "SCT", "Esophagus")),
    (("colon",), ANATOMICAL_STRUCTURE, ("71854001", "SCT", "Colon")),
    (("duodenum",), ANATOMICAL_STRUCTURE, ("38848004", "SCT", "Duodenum")),
    (("bone",), ANATOMICAL_STRUCTURE, ("272673000", "SCT", "Bone")),
    (("vessel", "blood vessel"), ANATOMICAL_STRUCTURE, ("59820001", "SCT", "Blood vessel")),
)
_LO = 64  # the longest value of a DICOM LO (long string) element: labels, names, versions
#: Type 2 patient and study attributes the SEG copies from its source: de-identified series often lack them, and
#: an empty value is what they mean then
_COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                 "AccessionNumber", "ReferringPhysicianName")


def property_codes(label_name: str) -> tuple[Code, Code]:
    """Segmented property (category, type) for a label name, from :data:`PROPERTY_CODES`.

    Examples
    --------
    >>> property_codes("Liver Tumour")[1]
    ('108369006', 'SCT', 'Neoplasm')
    >>> property_codes("kidneys")[1]
    ('64033007', 'SCT', 'Kidney')
    >>> property_codes("Anterior")
    (('85756007', 'SCT', 'Tissue'), ('85756007', 'SCT', 'Tissue'))
    """
    words = " " + " ".join(re.findall(r"[a-z]+", label_name.lower())) + " "
    for terms, category, kind in PROPERTY_CODES:
        if any(f" {t} " in words or f" {t}s " in words or f" {t}es " in words for t in terms):
            return category, kind
    return GENERIC_CODE, GENERIC_CODE


def _concept(hd, code: Code):
    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def _check_label_names(label_names: Mapping[int, str]) -> dict[int, str]:
    """The foreground labels, which must be numbered 1..K: DICOM numbers segments from 1 in steps of 1."""
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"label_names must number the foreground labels 1..K, found {sorted(names)}")
    if not names:
        raise ValueError("label_names names no foreground label")
    return names


def _check_labels(labels: np.ndarray, layout: SeriesLayout, names: dict[int, str]) -> np.ndarray:
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be an integer label map, found dtype {labels.dtype}")
    if labels.shape != layout.shape:
        raise AutosegError(f"{layout.series.name()}: label map of shape {labels.shape} does not match the "
                           f"series' voxel grid (z, y, x) = {layout.shape}")
    unknown = sorted(set(np.unique(labels).tolist()) - set(names) - {0})
    if unknown:
        raise ValueError(f"labels holds values {unknown} that label_names does not name")
    return labels.astype(np.uint8 if len(names) < 256 else np.uint16)


def _check_source(layout: SeriesLayout, first) -> None:
    """What a SEG cannot reference: a source without frame of reference (``first``: the header of its first
    file), or several multi-frame files."""
    if "FrameOfReferenceUID" not in first:
        raise AutosegError(f"{layout.series.name()}: no FrameOfReferenceUID, which a DICOM-SEG needs to lie on "
                           f"the same grid")
    files = set(s.file for s in layout.slices)
    if any(s.frame is not None for s in layout.slices) and len(files) > 1:
        raise AutosegError(f"{layout.series.name()}: {len(files)} multi-frame files; a DICOM-SEG can reference "
                           f"one multi-frame source image")


def check_seg_source(source: SeriesLayout | SeriesInfo | Sequence[Path | str]) -> None:
    """Raise what :func:`write_dicom_seg` would refuse about a source series, before any label map exists (so a
    folder of series is checked before anything is written).

    Raises
    ------
    AutosegError
        As :func:`autoseg.io.dicom.read_series_layout`; no FrameOfReferenceUID; several multi-frame files.
    """
    pydicom = require_extra("pydicom", "dicom", "writing DICOM-SEG")
    layout = source if isinstance(source, SeriesLayout) else read_series_layout(source)
    _check_source(layout, pydicom.dcmread(layout.slices[0].file, stop_before_pixels=True, force=True))


def _sources(layout: SeriesLayout, labels: np.ndarray):
    """The source datasets (headers) and the label map in their frame order, as highdicom takes them."""
    pydicom = require_extra("pydicom", "dicom", "writing DICOM-SEG")
    files = list(dict.fromkeys(s.file for s in layout.slices))
    datasets = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in files]
    _check_source(layout, datasets[0])
    for ds in datasets:
        for keyword in _COPIED_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")  # in memory only: the source files are not touched
    if all(s.frame is None for s in layout.slices):
        return datasets, labels  # one source instance per z index, already in z order
    by_frame = np.empty_like(labels)
    for z, s in enumerate(layout.slices):
        by_frame[s.frame] = labels[z]  # a multi-frame source's frames need not be in z order
    return datasets, by_frame


def _algorithm(hd, algorithm: Mapping[str, object]):
    folds = algorithm.get("folds", ())
    folds = ",".join(str(f) for f in folds) if isinstance(folds, (list, tuple)) else str(folds)
    parameters = {k: str(v) for k, v in (("dataset", algorithm.get("dataset", "")),
                                         ("configuration", algorithm.get("configuration", "")),
                                         ("folds", folds)) if str(v)}
    return hd.AlgorithmIdentificationSequence(
        name=str(algorithm.get("name", "autoseg"))[:_LO], family=_concept(hd, AI_FAMILY),
        version=str(algorithm["version"])[:_LO], parameters=parameters or None)


def _segments(hd, names: dict[int, str], algorithm_id) -> list:
    out = []
    for number, name in sorted(names.items()):
        category, kind = property_codes(name)
        segment = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:_LO], segmented_property_category=_concept(hd, category),
            segmented_property_type=_concept(hd, kind), algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm_id)
        segment.SegmentDescription = name  # the full name: the label is cut to 64 characters
        out.append(segment)
    return out


def write_dicom_seg(labels: np.ndarray, source_files: SeriesInfo | Sequence[Path | str],
                    label_names: Mapping[int, str], algorithm: Mapping[str, object], path: Path | str) -> Path:
    """Write a label map as one DICOM-SEG that references its source series, atomically.

    Parameters
    ----------
    labels
        ``(z, y, x)`` integer label map on the source series' voxel grid, in the order :func:`autoseg.io.dicom.
        read_series` returns (slices sorted by position along the normal), 0 = background.
    source_files
        The source series' files in any order (or its :class:`~autoseg.io.dicom.SeriesInfo`): single-frame
        images, or one enhanced multi-frame image.
    label_names
        Label value -> name, as in the dataset's ``labels`` (background 0 may be included and is skipped); the
        foreground labels must be 1..K. Each becomes segment number = label value, named by its label, even when
        ``labels`` holds none of it.
    algorithm
        ``version`` (required), ``name`` (default 'autoseg'), ``dataset``, ``configuration``, ``folds`` (a list or
        a string): the algorithm identification and the equipment (manufacturer 'autoseg', software version,
        model name '<dataset> <configuration>').
    path
        The file to write; a temporary file beside it is renamed into place when complete.

    Patient and study attributes are copied from the source; those a de-identified source lacks are written empty
    (they are Type 2: present, possibly empty).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    AutosegError
        The source series is refused by :func:`autoseg.io.dicom.read_series_layout` or has no frame of reference,
        or ``labels`` does not match its grid (nothing is written).
    ValueError
        ``labels`` is not an integer map of named labels, or ``label_names`` does not number its labels 1..K.
    """
    hd = require_extra("highdicom", "dicom", "writing DICOM-SEG")
    if "version" not in algorithm:
        raise ValueError("algorithm must give the model's 'version'")
    path = Path(path)
    layout = read_series_layout(source_files)
    names = _check_label_names(label_names)
    labels = _check_labels(labels, layout, names)
    datasets, pixels = _sources(layout, labels)
    dataset, configuration = str(algorithm.get("dataset", "")), str(algorithm.get("configuration", ""))
    model = " ".join(p for p in (dataset, configuration) if p) or "autoseg"
    number = datasets[0].get("SeriesNumber")
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=_segments(hd, names, _algorithm(hd, algorithm)), series_instance_uid=hd.UID(),
        series_number=1000 + (int(number) if number not in (None, "") else 0), sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="autoseg", manufacturer_model_name=model[:_LO],
        software_versions=str(algorithm["version"])[:_LO], device_serial_number=(dataset or "autoseg")[:_LO],
        content_label="AUTOSEG", content_description=f"autoseg segmentation ({model})"[:_LO],
        series_description=f"autoseg {model}"[:_LO],
        omit_empty_frames=bool(pixels.any()))  # an empty map keeps all its frames (highdicom would say so)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


def _referenced_series(seg) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence") or []}


def frame_positions(seg, path: Path) -> tuple[np.ndarray, list[int]]:
    """Each frame's ImagePositionPatient ``(x, y, z)`` and segment number."""
    shared = _shared(seg)
    positions, segments = [], []
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        try:
            plane = functional_item(group, shared, "PlanePositionSequence")
            segment = functional_item(group, shared, "SegmentIdentificationSequence")
            positions.append([float(v) for v in plane.ImagePositionPatient])
            segments.append(int(segment.ReferencedSegmentNumber))
        except (AttributeError, TypeError, ValueError):
            raise AutosegError(f"{path}: SEG frame {i + 1} has no plane position or segment number") from None
    return np.array(positions).reshape(-1, 3), segments


def _shared(seg):
    shared = seg.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None


def _check_grid(seg, layout: SeriesLayout, path: Path) -> None:
    first, shared = seg.PerFrameFunctionalGroupsSequence[0], _shared(seg)
    try:
        orientation = np.array([float(v) for v in functional_item(first, shared, "PlaneOrientationSequence")
                                .ImageOrientationPatient])
        spacing = np.array([float(v) for v in functional_item(first, shared, "PixelMeasuresSequence").PixelSpacing])
    except (AttributeError, TypeError, ValueError):
        raise AutosegError(f"{path}: DICOM-SEG without plane orientation or pixel spacing") from None
    source = layout.slices[0]
    if ((int(seg.Rows), int(seg.Columns)) != source.size
            or np.abs(orientation - np.array(source.orientation)).max() > 1e-3
            or np.abs(spacing - np.array(source.pixel_spacing)).max() > 1e-4 * max(1.0, spacing.max())):
        raise AutosegError(f"{path}: DICOM-SEG is not on the voxel grid of {layout.series.name()} "
                           f"(size, orientation or pixel spacing differ)")


def read_dicom_seg(path: Path | str, source: SeriesLayout | SeriesInfo | Sequence[Path | str]) -> np.ndarray:
    """Read a BINARY DICOM-SEG back as a label map on its source series' voxel grid.

    Frames are placed by their plane positions (so single- and multi-frame sources work alike); a voxel takes the
    segment number of the segment covering it (the last one where segments overlap).

    Parameters
    ----------
    path
        The DICOM-SEG file.
    source
        The source series (layout, series, or files), as :func:`autoseg.io.dicom.read_series_layout` takes it.

    Returns
    -------
    np.ndarray
        ``(z, y, x)`` label map (uint8, uint16 past 255 segments), in :func:`autoseg.io.dicom.read_series`'s
        order; value = segment number (= label value for SEGs from :func:`write_dicom_seg`), 0 elsewhere.

    Raises
    ------
    AutosegError
        The file is not a readable BINARY SEG, references another series, or is not on the source's grid.
    """
    pydicom = require_extra("pydicom", "dicom", "reading DICOM-SEG")
    path = Path(path)
    layout = source if isinstance(source, SeriesLayout) else read_series_layout(source)
    try:
        seg = pydicom.dcmread(path)
        frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns)) if "PixelData" in seg else None
    except Exception as e:  # damaged files raise many types
        raise AutosegError(f"{path}: cannot be read as DICOM, truncated or corrupt file "
                           f"({' '.join(str(e).split())[:200]})") from None
    if seg.get("Modality") != "SEG" or seg.get("SegmentationType") != "BINARY":
        raise AutosegError(f"{path}: not a BINARY DICOM-SEG (Modality {seg.get('Modality')}, "
                           f"SegmentationType {seg.get('SegmentationType')})")
    referenced = _referenced_series(seg)
    if referenced and layout.series.uid not in referenced:
        raise AutosegError(f"{path}: DICOM-SEG references series {', '.join(sorted(referenced))}, not "
                           f"{layout.series.name()}")
    n_segments = len(seg.get("SegmentSequence") or [])
    out = np.zeros(layout.shape, dtype=np.uint8 if n_segments < 256 else np.uint16)
    if frames is None:
        return out
    _check_grid(seg, layout, path)
    positions, segments = frame_positions(seg, path)
    _place(out, frames, positions, segments, layout, path)
    return out


def _place(out: np.ndarray, frames: np.ndarray, positions: np.ndarray, segments: list[int],
           layout: SeriesLayout, path: Path) -> None:
    """Write each frame's segment into the slice at its position."""
    origin = np.asarray(layout.geometry.origin)
    normal = np.asarray(layout.geometry.direction).reshape(3, 3)[:, 2]
    source = np.array([s.position for s in layout.slices])
    for frame, position, segment in zip(frames, positions, segments):
        z = int(round(float((position - origin) @ normal) / layout.geometry.spacing[0]))
        if not 0 <= z < len(source) or np.linalg.norm(position - source[z]) > 0.01:
            raise AutosegError(f"{path}: a DICOM-SEG frame at {tuple(position)} mm lies on no slice of "
                               f"{layout.series.name()}")
        out[z][frame.astype(bool)] = segment
