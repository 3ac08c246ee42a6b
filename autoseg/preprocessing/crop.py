"""Crop a case to the nonzero region of its image channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_fill_holes

from autoseg.fingerprint.case import nonzero_bbox
from autoseg.schema.dataset import IGNORE  # noqa: F401 (the other special label value, beside OUTSIDE)

#: Label value of voxels inside the crop box but outside the nonzero region ("outside": background in training).
OUTSIDE = -1


@dataclass(frozen=True)
class CropResult:
    """A case cropped to its nonzero region.

    Attributes
    ----------
    image
        ``(C, z, y, x)``: a view into the input image (no copy).
    label
        ``(z, y, x)`` int8 copy, background voxels outside the nonzero mask set to :data:`OUTSIDE`; ``None`` without
        a label.
    mask
        ``(z, y, x)`` bool: nonzero in any channel, holes filled.
    bbox
        One ``slice`` per spatial axis into the uncropped arrays.
    """

    image: np.ndarray
    label: np.ndarray | None
    mask: np.ndarray
    bbox: tuple[slice, ...]


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None) -> CropResult:
    """Crop ``image`` (and ``label``) to the bounding box of the voxels nonzero in any channel.

    Parameters
    ----------
    image
        ``(C, z, y, x)``.
    label
        ``(z, y, x)`` integer labels (values must fit int8), or ``None``.

    Returns
    -------
    CropResult
        The whole image when it is zero everywhere (then the mask is all False).
    """
    nonzero = np.any(image != 0, axis=0)
    bbox = nonzero_bbox(image, nonzero)
    # Filling holes in the crop only is equivalent to filling the whole image: everything outside the box is
    # background connected to the image border, so a region touching the box border is never a hole.
    mask = binary_fill_holes(nonzero[bbox])
    cropped_label = None
    if label is not None:
        cropped_label = label[bbox].astype(np.int8, copy=True)
        cropped_label[(cropped_label == 0) & ~mask] = OUTSIDE
    return CropResult(image[(slice(None),) + bbox], cropped_label, mask, bbox)


def uncrop(array: np.ndarray, bbox: tuple[tuple[int, int], ...], shape: tuple[int, ...],
           fill: float | int | np.ndarray = 0) -> np.ndarray:
    """Place a cropped array back into an array of the uncropped spatial ``shape``.

    Parameters
    ----------
    array
        ``(z, y, x)`` or ``(C, z, y, x)`` in the cropped geometry.
    bbox
        ``(start, stop)`` per spatial axis.
    shape
        Uncropped spatial shape ``(z, y, x)``.
    fill
        Value outside the box; for ``(C, ...)`` arrays also a length-C sequence (one value per channel).

    Returns
    -------
    ndarray
        Same dtype as ``array``.
    """
    lead = array.shape[:-len(shape)]
    out = np.empty(lead + tuple(shape), dtype=array.dtype)
    fill = np.asarray(fill, dtype=array.dtype)
    out[...] = fill.reshape(fill.shape + (1,) * len(shape)) if fill.ndim else fill
    out[(Ellipsis,) + tuple(slice(a, b) for a, b in bbox)] = array
    return out
