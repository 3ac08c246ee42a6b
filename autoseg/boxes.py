"""Bounding boxes of masks (numpy only: the bottom layer, next to :mod:`autoseg.errors`)."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every nonzero voxel of ``mask``, grown by ``margin`` voxels, clipped to the array.

    Parameters
    ----------
    mask
        Array of any dimensionality and dtype (nonzero / True voxels are inside); the axis order is the array's own,
        ``(z, y, x)`` for the volumes of this project.
    margin
        Voxels added on both sides of every axis (clipped to the array).

    Returns
    -------
    tuple of slice or None
        One ``slice(start, stop)`` per axis of ``mask``, in its axis order (``mask[box]`` is the crop); ``None``
        when ``mask`` has no nonzero voxel.

    Notes
    -----
    One pass over the array: the outermost axis in memory is reduced first, then the projection of the remaining
    axes inside its range, and so on (several times faster than ``np.argwhere`` or one reduction per axis).

    Examples
    --------
    >>> mask = np.zeros((4, 5, 6), dtype=bool)
    >>> mask[1, 2:4, 3] = True
    >>> bounding_box(mask)
    (slice(1, 2, None), slice(2, 4, None), slice(3, 4, None))
    >>> bounding_box(mask, margin=2)
    (slice(0, 4, None), slice(0, 5, None), slice(1, 6, None))
    >>> mask[bounding_box(mask)].shape
    (1, 2, 1)
    >>> bounding_box(np.zeros((3, 3))) is None
    True
    """
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return () if mask else None
    # visit the axes from the largest stride to the smallest: each reduction then reads memory in order
    order = sorted(range(mask.ndim), key=lambda a: -abs(mask.strides[a]))
    m = mask.transpose(order)
    box: list[slice] = [slice(0)] * mask.ndim
    for axis in order:
        hits = np.flatnonzero(m.any(axis=tuple(range(1, m.ndim))) if m.ndim > 1 else m)
        if hits.size == 0:
            return None
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        box[axis] = slice(max(0, lo - margin), min(mask.shape[axis], hi + margin))
        if m.ndim > 1:
            m = m[lo:hi].any(axis=0)
    return tuple(box)
