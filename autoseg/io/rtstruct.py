"""RTSTRUCT annotations: their ROI names, the series they reference, and their contours as a label map.

A radiotherapy structure set draws each region of interest (ROI) as closed planar contours, polygons in patient
coordinates ``(x, y, z)`` mm, one or more per slice. :func:`rasterise_rtstruct` puts them on the voxel grid of the
referenced series (:class:`autoseg.io.dicom.SeriesLayout`) with this module's own scan-line fill (numpy only, no
further package):

* a voxel is inside a polygon when its centre is (even-odd rule, on the slice the polygon lies in); an edge through
  a voxel centre counts it on the polygon's lower-``x`` / lower-``y`` side only, so a contour traced along voxel
  edges (half a voxel outside the centres) gives back exactly the voxels it encloses;
* several contours of one ROI on one slice combine by the even-odd rule too: a contour inside another is a hole;
* a contour must lie on a slice of the series (within a tenth of a slice step) and inside it; else it is refused
  with one line naming the file and the ROI;
* only ``CLOSED_PLANAR`` contours have an inside: ``POINT`` and ``OPEN_PLANAR`` ones are left out.

pydicom is an optional dependency (``pip install 'autoseg[rtstruct]'``), imported only when a function needs it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from autoseg.errors import AutosegError, require_extra
from autoseg.io.dicom import SeriesLayout

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: a contour may lie this fraction of a slice step off the nearest slice (planning systems round positions)
SLICE_TOLERANCE = 0.1


def rtstruct_references(ds) -> tuple[str, ...]:
    """SeriesInstanceUIDs an RTSTRUCT data set references (ReferencedFrameOfReferenceSequence ->
    RTReferencedStudySequence -> RTReferencedSeriesSequence), in order, without repeats."""
    found = []
    for frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                found.append(str(series.get("SeriesInstanceUID", "")))
    return tuple(dict.fromkeys(u for u in found if u))


def rtstruct_rois(ds) -> tuple[tuple[int, str], ...]:
    """``(ROI number, ROI name)`` of every ROI of an RTSTRUCT data set (StructureSetROISequence), by number."""
    rois = [(int(item.ROINumber), str(item.get("ROIName", "")).strip())
            for item in ds.get("StructureSetROISequence") or []]
    return tuple(sorted(rois))


def _to_voxels(points: np.ndarray, layout: SeriesLayout) -> np.ndarray:
    """Patient coordinates ``(n, 3)`` ``(x, y, z)`` mm -> continuous voxel indices ``(n, 3)`` as ``(x, y, z)``
    (column, row, slice)."""
    g = layout.geometry
    direction = np.asarray(g.direction, dtype=float).reshape(3, 3)  # columns: row cosine, column cosine, normal
    steps = np.array([g.spacing[2], g.spacing[1], g.spacing[0]])  # (x, y, z) order
    return ((points - np.asarray(g.origin)) @ direction) / steps


def fill_polygon(shape: tuple[int, int], cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The pixels of a ``(y, x)`` grid whose centres lie inside a polygon (even-odd rule).

    Parameters
    ----------
    shape
        ``(rows, columns)`` of the slice.
    cols, rows
        The polygon's vertices in pixel indices (``x`` along the columns, ``y`` down the rows; pixel ``(j, i)``
        has its centre at ``x = i, y = j``), in drawing order; the last vertex joins the first.

    Returns
    -------
    np.ndarray
        ``shape`` bool mask.

    Examples
    --------
    >>> fill_polygon((4, 5), np.array([0.5, 3.5, 3.5, 0.5]), np.array([-0.5, -0.5, 1.5, 1.5])).astype(int)
    array([[0, 1, 1, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0]])
    """
    mask = np.zeros(shape, dtype=bool)
    x0, y0 = np.asarray(cols, float), np.asarray(rows, float)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first, last = max(0, math.ceil(y0.min())), min(shape[0] - 1, math.floor(y0.max()))
    for j in range(first, last + 1):
        crossing = (y0 <= j) != (y1 <= j)  # half-open: a vertex on the scan line is counted once
        xs = np.sort(x0[crossing] + (j - y0[crossing]) * (x1 - x0)[crossing] / (y1 - y0)[crossing])
        for a, b in zip(xs[::2], xs[1::2]):
            lo, hi = max(math.ceil(a), 0), min(math.ceil(b), shape[1])  # centres i with a <= i < b
            if lo < hi:
                mask[j, lo:hi] = True
    return mask


def _roi_mask(roi_contours, layout: SeriesLayout, path: Path, name: str) -> np.ndarray:
    """One ROI's closed contours as a ``(z, y, x)`` bool mask (even-odd within each slice)."""
    mask = np.zeros(layout.shape, dtype=bool)
    for contour in roi_contours.get("ContourSequence") or []:
        if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
            continue  # a point or an open line encloses no voxel
        points = np.asarray([float(v) for v in contour.ContourData], dtype=float).reshape(-1, 3)
        voxels = _to_voxels(points, layout)
        k = float(np.mean(voxels[:, 2]))
        z = int(round(k))
        if np.abs(voxels[:, 2] - z).max() > SLICE_TOLERANCE or not 0 <= z < layout.shape[0]:
            raise AutosegError(f"{path}: ROI '{name}' has a contour at z = {points[0, 2]:.3f} mm that lies on no "
                               f"slice of {layout.series.name()}")
        mask[z] ^= fill_polygon(layout.shape[1:], voxels[:, 0], voxels[:, 1])
    return mask


def rasterise_rtstruct(path: Path | str, layout: SeriesLayout, value_of: Mapping[int, int]) -> np.ndarray:
    """An RTSTRUCT's ROIs as one label map on a series' voxel grid (see the module notes).

    Parameters
    ----------
    path
        The RTSTRUCT file.
    layout
        The referenced series' layout (:func:`autoseg.io.dicom.read_series_layout`).
    value_of
        ROI number -> label value written where the ROI is (ROIs not listed are left out).

    Returns
    -------
    np.ndarray
        ``(z, y, x)`` label map (uint8, uint16 past 255 labels), in :func:`autoseg.io.dicom.read_series`'s order.

    Raises
    ------
    AutosegError
        The file cannot be read, a contour lies on no slice of the series, or two ROIs overlap (one line naming
        the file and both ROIs).
    """
    pydicom = require_extra("pydicom", "rtstruct", "reading RTSTRUCT")
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:  # damaged files raise many types
        raise AutosegError(f"{path}: cannot be read as DICOM, truncated or corrupt file "
                           f"({' '.join(str(e).split())[:200]})") from None
    names = dict(rtstruct_rois(ds))
    out = np.zeros(layout.shape, dtype=np.uint8 if max(value_of.values(), default=0) < 256 else np.uint16)
    owner = {}  # label value -> ROI name, to name both ROIs of an overlap
    for item in ds.get("ROIContourSequence") or []:
        number = int(item.ReferencedROINumber)
        if number not in value_of:
            continue
        name = names.get(number, str(number))
        mask = _roi_mask(item, layout, path, name)
        taken = out[mask]
        if taken.any():
            other = owner[int(taken[taken != 0][0])]
            raise AutosegError(f"{path}: ROIs '{other}' and '{name}' overlap; a label map holds one label per "
                               f"voxel, remove one of them (or the overlap) from the structure set")
        out[mask] = value_of[number]
        owner[value_of[number]] = name
    return out
