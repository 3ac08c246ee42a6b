"""DICOM series as autoseg images: a folder of slices (or one enhanced multi-frame object) -> ``(1, z, y, x)``.

:mod:`autoseg.io.dicom_series` finds the image series of a folder (its names are importable from here too); this
module checks that a series forms one regular voxel grid and reads it with the same geometry as SimpleITK's GDCM
series reader:

* slices are ordered by their ``ImagePositionPatient`` projected on the slice normal (the cross product of the row
  and column cosines of ``ImageOrientationPatient``), never by file name or ``InstanceNumber``;
* axis ``z`` runs along the normal, ``y`` down the rows, ``x`` along the columns (``Rows x Columns`` is ``y x x``);
* spacing ``(z, y, x)`` mm is (mean step between sorted positions, ``PixelSpacing[0]``, ``PixelSpacing[1]``);
* origin ``(x, y, z)`` mm is the position of the first slice in that order; direction is the ITK ``(x, y, z)``
  row-major 3x3 whose columns are the row cosine, the column cosine and the normal;
* voxel values are ``stored * RescaleSlope + RescaleIntercept`` (per slice, as the scanners write it), float32.

A series that does not form one regular grid is refused with one line naming the series and the problem (see
:func:`read_series_layout`); nothing is guessed. pydicom is an optional dependency (``pip install
'autoseg[dicom]'``), imported only when a function needs it; :func:`is_dicom_folder` works without it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import AutosegError, require_extra
from autoseg.io.dicom_series import (SeriesInfo, as_series, error_reason, find_series, is_dicom_folder,
                                     read_header, select_series)
from autoseg.io.image import Geometry

__all__ = ["SeriesInfo", "DicomSlice", "SeriesLayout", "find_series", "select_series", "is_dicom_folder",
           "read_series_layout", "read_series", "read_series_folder", "functional_item", "ORIENTATION_TOLERANCE",
           "SPACING_TOLERANCE", "GAP_FACTOR", "TILT_TOLERANCE_DEG"]

#: Compressed transfer syntax -> (the extra that installs its decoder, the decoder package)
_DECODER_EXTRAS = {
    "1.2.840.10008.1.2.4.50": ("dicom", "Pillow"),  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": ("dicom-jpeg", "pylibjpeg-libjpeg"),  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57": ("dicom-jpeg", "pylibjpeg-libjpeg"),  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": ("dicom-jpeg", "pylibjpeg-libjpeg"),  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": ("dicom", "pyjpegls"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("dicom", "pyjpegls"),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("dicom", "pylibjpeg-openjpeg"),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("dicom", "pylibjpeg-openjpeg"),  # JPEG 2000
    "1.2.840.10008.1.2.4.201": ("dicom", "pylibjpeg-openjpeg"),  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": ("dicom", "pylibjpeg-openjpeg"),  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": ("dicom", "pylibjpeg-openjpeg"),  # HTJ2K
}
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between two instances' direction cosines that still counts as one orientation."""
SPACING_TOLERANCE = (0.01, 0.01)
"""Slice steps may differ from their median by this much, (mm, fraction of the median), whichever is larger."""
GAP_FACTOR = 1.5
"""A step larger than this many median steps is a gap: missing slices."""
TILT_TOLERANCE_DEG = 0.1
"""Largest angle (degrees) between the slice normal and the steps between slice positions (gantry tilt)."""


@dataclass(frozen=True)
class DicomSlice:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file.

    Attributes
    ----------
    file
        The file holding it.
    frame
        0-based frame index in a multi-frame file; None for a single-frame file.
    sop_instance_uid
        SOPInstanceUID of the file.
    position
        ImagePositionPatient ``(x, y, z)`` mm: the centre of the first pixel.
    orientation
        ImageOrientationPatient: row cosine then column cosine, ``(x, y, z)`` each.
    pixel_spacing
        ``(y, x)`` mm: PixelSpacing (between rows, between columns).
    size
        ``(Rows, Columns)``, i.e. ``(y, x)`` pixels.
    rescale
        ``(slope, intercept)``: physical value = stored * slope + intercept.
    localizer
        ImageType contains LOCALIZER (a scout image).
    """

    file: Path
    frame: int | None
    sop_instance_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    size: tuple[int, int]
    rescale: tuple[float, float]
    localizer: bool


@dataclass(frozen=True)
class SeriesLayout:
    """A checked series without its pixel data: its voxel grid and which slice is which ``z`` index.

    Attributes
    ----------
    series
        The series.
    geometry
        Spacing ``(z, y, x)`` mm, origin and direction in ITK ``(x, y, z)`` order.
    shape
        ``(z, y, x)`` voxels.
    slices
        The slices in ``z`` order: ``slices[k]`` is the image at ``z == k``.
    """

    series: SeriesInfo
    geometry: Geometry
    shape: tuple[int, int, int]
    slices: tuple[DicomSlice, ...]

def _pydicom():
    return require_extra("pydicom", "dicom", "reading DICOM")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _floats(ds, keyword: str, n: int, where: str) -> tuple[float, ...]:
    value = ds.get(keyword) if ds is not None else None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n:
        raise AutosegError(f"{where}: no valid {keyword} ({n} numbers expected, found {value!r})")
    return out


def _rescale(ds) -> tuple[float, float]:
    slope, intercept = ds.get("RescaleSlope", 1.0), ds.get("RescaleIntercept", 0.0)
    return float(slope if slope not in (None, "") else 1.0), float(intercept if intercept not in (None, "") else 0.0)


def functional_item(frame_group, shared, keyword: str):
    """The first item of an enhanced object's functional group macro ``keyword`` (``PlanePositionSequence`` ...)
    for one frame: from the frame's own group, else the shared one; None when neither has it."""
    for group in (frame_group, shared):
        if group is not None and keyword in group and len(group[keyword].value):
            return group[keyword].value[0]
    return None


def _slices_of(path: Path, ds, series: SeriesInfo) -> list[DicomSlice]:
    """The 2D images of one file of the series (one, or one per frame of an enhanced multi-frame object)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise AutosegError(f"{series.name()}: {path.name}: colour images are not supported "
                           f"(SamplesPerPixel {ds.SamplesPerPixel})")
    size = (int(ds.Rows), int(ds.Columns))
    uid = str(ds.get("SOPInstanceUID", ""))
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)  # VM 1 reads as a str
    localizer = "LOCALIZER" in [str(v).upper() for v in image_type]
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        if frames > 1:
            raise AutosegError(f"{series.name()}: {path}: multi-frame object without per-frame positions "
                               f"(no PerFrameFunctionalGroupsSequence), not a volume")
        where = f"{series.name()}: {path.name}"
        return [DicomSlice(path, None, uid, _floats(ds, "ImagePositionPatient", 3, where),
                           _floats(ds, "ImageOrientationPatient", 6, where),
                           _floats(ds, "PixelSpacing", 2, where), size, _rescale(ds), localizer)]
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != frames:
        raise AutosegError(f"{path}: {len(per_frame)} per-frame functional groups for {frames} frames, "
                           f"truncated or corrupt file")
    out = []
    for i, group in enumerate(per_frame):
        where = f"{series.name()}: {path.name} frame {i + 1}"
        rescale_item = functional_item(group, shared, "PixelValueTransformationSequence")
        out.append(DicomSlice(
            path, i, uid,
            _floats(functional_item(group, shared, "PlanePositionSequence"), "ImagePositionPatient", 3, where),
            _floats(functional_item(group, shared, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, where),
            _floats(functional_item(group, shared, "PixelMeasuresSequence"), "PixelSpacing", 2, where),
            size, _rescale(rescale_item if rescale_item is not None else ds), localizer))
    return out


def _check_sizes(slices: list[DicomSlice], series: SeriesInfo) -> None:
    sizes = Counter(s.size for s in slices)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd = next(s for s in slices if s.size != common)
        raise AutosegError(f"{series.name()}: instances of different sizes (Rows x Columns): "
                           + ", ".join(f"{r}x{c} ({_count(n, 'image')})" for (r, c), n in sizes.most_common())
                           + f", e.g. {odd.file.name} is {odd.size[0]}x{odd.size[1]}")
    spacings = np.array([s.pixel_spacing for s in slices])
    if np.abs(spacings - spacings[0]).max() > 1e-4 * max(1.0, float(spacings[0].max())):
        raise AutosegError(f"{series.name()}: instances of different PixelSpacing, from "
                           f"{tuple(spacings.min(0))} to {tuple(spacings.max(0))} mm")


def _check_orientation(slices: list[DicomSlice], series: SeriesInfo) -> None:
    """One orientation for all images; a localizer (scout) mixed into the series is refused, named."""
    orient = np.array([s.orientation for s in slices])
    keys = [tuple(np.round(o, 3)) for o in orient]
    ref = orient[keys.index(Counter(keys).most_common(1)[0][0])]  # the majority's orientation
    odd = [s for s, o in zip(slices, orient) if np.abs(o - ref).max() > ORIENTATION_TOLERANCE]
    if odd:
        what = _count(len(odd), "localizer image" if all(s.localizer for s in odd) else "image")
        them = "it" if len(odd) == 1 else "them"
        raise AutosegError(f"{series.name()}: {what} with another orientation than the other "
                           f"{len(slices) - len(odd)}, e.g. {odd[0].file.name}; remove {them} from the folder")
    r, c = orient[0, :3], orient[0, 3:]
    if abs(np.linalg.norm(r) - 1) > 0.01 or abs(np.linalg.norm(c) - 1) > 0.01 or abs(r @ c) > 0.01:
        raise AutosegError(f"{series.name()}: ImageOrientationPatient {tuple(orient[0])} is not two orthogonal "
                           f"unit vectors")


def _direction(orientation: tuple[float, ...]) -> np.ndarray:
    """Columns (row cosine, column cosine, normal), made exactly orthonormal (the header's values are rounded)."""
    r = np.asarray(orientation[:3], dtype=float)
    r /= np.linalg.norm(r)
    c = np.asarray(orientation[3:], dtype=float)
    c -= (c @ r) * r
    c /= np.linalg.norm(c)
    return np.column_stack([r, c, np.cross(r, c)])


def _check_steps(positions: np.ndarray, normal: np.ndarray, slices: list[DicomSlice], series: SeriesInfo) -> float:
    """Check the sorted slice positions form one regular stack along ``normal``; returns the mean step (mm)."""
    along = positions @ normal
    steps = np.diff(along)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise AutosegError(f"{series.name()}: duplicate slice positions: {dup.size + 1} images share a position, "
                           f"e.g. {a.file.name} and {b.file.name} at {along[dup[0]]:.3f} mm along the normal "
                           f"(several volumes in one series: echoes, phases or repeats?)")
    median = float(np.median(steps))
    gap = int(np.argmax(steps))
    if steps[gap] > GAP_FACTOR * median:
        raise AutosegError(f"{series.name()}: missing slices: a gap of {steps[gap]:.3f} mm between "
                           f"{slices[gap].file.name} and {slices[gap + 1].file.name} (slice spacing "
                           f"{median:.3f} mm, about {_count(round(steps[gap] / median) - 1, 'slice')} missing)")
    if np.abs(steps - median).max() > max(SPACING_TOLERANCE[0], SPACING_TOLERANCE[1] * median):
        raise AutosegError(f"{series.name()}: non-uniform slice spacing: steps from {steps.min():.3f} to "
                           f"{steps.max():.3f} mm")
    offsets = np.diff(positions, axis=0)
    lateral = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    tilt = float(np.degrees(np.arctan2(lateral, steps)).max())
    if tilt > TILT_TOLERANCE_DEG:
        raise AutosegError(f"{series.name()}: gantry tilt: slice positions step at {tilt:.2f} deg to the slice "
                           f"normal; tilted series are not supported (the voxel grid would be sheared), resample "
                           f"it to an untilted grid first")
    return float((along[-1] - along[0]) / (len(along) - 1))


def _single_slice_spacing(path: Path) -> float:
    ds = read_header(path).ds
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def read_series_layout(series: SeriesInfo | Sequence[Path | str]) -> SeriesLayout:
    """Check a series' headers and give its voxel grid, without reading pixel data.

    Refused (one line naming the series, or the file, and the problem), never guessed:

    * instances of different sizes (Rows x Columns) or PixelSpacing;
    * images of another orientation mixed in, such as a localizer (scout) image: remove it from the folder (a
      localizer is refused rather than dropped, so the result never depends on which images a rule left out);
    * duplicate slice positions (several volumes in one series);
    * missing slices: a step between sorted positions larger than :data:`GAP_FACTOR` x the median step;
    * non-uniform slice spacing: steps differing from the median by more than :data:`SPACING_TOLERANCE`;
    * gantry tilt: positions that step at more than :data:`TILT_TOLERANCE_DEG` degrees to the slice normal (the
      grid would be sheared; resample such a series to an untilted grid with a DICOM tool first);
    * files that are not readable, or lack ImagePositionPatient / ImageOrientationPatient / PixelSpacing.

    Parameters
    ----------
    series
        A series from :func:`find_series`, or its files in any order.

    Returns
    -------
    SeriesLayout
        The geometry (see the module docstring), the shape ``(z, y, x)`` and the slices in ``z`` order.

    Raises
    ------
    AutosegError
        The series is not one regular voxel grid, or a file is unreadable; pydicom is not installed.
    """
    info = as_series(series)
    slices = [s for path in info.files for s in _slices_of(path, read_header(path).ds, info)]
    _check_sizes(slices, info)
    _check_orientation(slices, info)
    direction = _direction(slices[0].orientation)
    order = np.argsort(np.array([s.position for s in slices]) @ direction[:, 2], kind="stable")
    slices = [slices[i] for i in order]
    positions = np.array([s.position for s in slices])
    dz = _check_steps(positions, direction[:, 2], slices, info) if len(slices) > 1 \
        else _single_slice_spacing(slices[0].file)
    dy, dx = slices[0].pixel_spacing
    geometry = Geometry((float(dz), float(dy), float(dx)), tuple(float(v) for v in positions[0]),
                        tuple(float(v) for v in direction.ravel()))
    return SeriesLayout(info, geometry, (len(slices), *slices[0].size), tuple(slices))


def _check_decoder(ds, path: Path) -> None:
    """Name the extra that adds a missing pixel-data decoder, before pydicom fails with a long message."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:  # pydicom has no decoder for it at all (video, JPEG XL ...)
        raise AutosegError(f"{path}: pixel data compressed as {syntax.name} ({syntax}) cannot be decoded by "
                           f"pydicom; convert the series to an uncompressed transfer syntax first") from None
    if not available:
        extra, package = _DECODER_EXTRAS.get(str(syntax), ("dicom", "pylibjpeg"))
        raise AutosegError(f"{path}: pixel data compressed as {syntax.name} ({syntax}) needs a decoder that is not "
                           f"installed: pip install 'autoseg[{extra}]' (adds {package})")


def _frames(path: Path, layout: SeriesLayout) -> np.ndarray:
    """A file's decoded stored values, ``(frames, y, x)``."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # damaged files raise many types
        raise AutosegError(f"{path}: cannot be read as DICOM, truncated or corrupt file ({error_reason(e)})") from None
    if "PixelData" not in ds:
        raise AutosegError(f"{layout.series.name()}: {path}: no pixel data, truncated or corrupt file")
    _check_decoder(ds, path)
    try:
        pixels = ds.pixel_array
    except Exception as e:  # pydicom's decoders raise ValueError, RuntimeError ... for damaged data
        raise AutosegError(f"{path}: pixel data cannot be decoded, truncated or corrupt file ({error_reason(e)})") \
            from None
    return pixels.reshape(-1, *layout.shape[1:])


def read_series(series: SeriesInfo | Sequence[Path | str]) -> tuple[np.ndarray, Geometry]:
    """Read a DICOM series as an autoseg image.

    Parameters
    ----------
    series
        A series from :func:`find_series` / :func:`select_series`, or its files in any order (single-frame files,
        or one enhanced multi-frame object with per-frame positions).

    Returns
    -------
    array
        ``(1, z, y, x)`` float32, rescale slope and intercept applied (CT in HU).
    geometry
        Spacing ``(z, y, x)`` mm; origin and direction in ITK ``(x, y, z)`` order, as SimpleITK's GDCM series
        reader gives them.

    Raises
    ------
    AutosegError
        One line naming the series or file: see :func:`read_series_layout` for what is refused; besides, pixel
        data that is corrupt or compressed with a codec whose decoder is not installed (the line names the extra).
    """
    layout = read_series_layout(series)
    volume = np.empty(layout.shape, dtype=np.float32)
    multi_frame: dict[Path, np.ndarray] = {}  # decoded once: a multi-frame file's frames need not be in z order
    for z, s in enumerate(layout.slices):
        if s.frame is None:
            frame = _frames(s.file, layout)[0]
        else:
            if s.file not in multi_frame:
                multi_frame[s.file] = _frames(s.file, layout)
            frame = multi_frame[s.file][s.frame]
        slope, intercept = s.rescale
        volume[z] = frame.astype(np.float64) * slope + intercept  # float64 then float32, as ITK does
    return volume[None], layout.geometry


def read_series_folder(folder: Path | str, series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """:func:`read_series` of the one image series in ``folder`` (or the one with ``series_uid``).

    Raises
    ------
    AutosegError
        As :func:`select_series` and :func:`read_series`.
    """
    return read_series(select_series(folder, series_uid))
