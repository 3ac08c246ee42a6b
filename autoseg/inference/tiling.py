"""Sliding-window geometry without torch: tile start positions, Gaussian importance weights, padding.

All shapes are in numpy axis order. A patch has one entry per spatial axis it tiles; for an image with more
axes (channels, or the slice axis of a 2D configuration on a 3D volume) only the trailing axes are tiled/padded.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import numpy as np


def tile_starts(image_shape: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> list[list[int]]:
    """Start index of every tile, per axis (the nnU-Net rule).

    On an axis of size ``n`` with patch ``p`` the number of tiles is ``ceil((n - p) / (p * step)) + 1``; the
    starts are spread evenly from ``0`` to ``n - p`` (rounded), so the first tile touches the start, the last
    tile the end, and neighbours overlap by at least ``1 - step`` of a patch.

    Parameters
    ----------
    image_shape
        Spatial shape to tile, voxels; every entry must be >= the patch's (pad first, see :func:`pad_to_patch`).
    patch_size
        Tile shape, voxels, same length as ``image_shape``.
    step
        Largest distance between neighbouring starts, as a fraction of the patch, in ``(0, 1]``.

    Returns
    -------
    list of list of int
        Sorted starts per axis.
    """
    if len(image_shape) != len(patch_size):
        raise ValueError(f"image shape {tuple(image_shape)} and patch size {tuple(patch_size)} differ in length")
    if not 0 < step <= 1:
        raise ValueError(f"step {step} must be in (0, 1]")
    starts = []
    for n, p in zip(image_shape, patch_size):
        if p < 1 or n < p:
            raise ValueError(f"image shape {tuple(image_shape)} is smaller than patch {tuple(patch_size)}; "
                             f"pad it first (pad_to_patch)")
        num = math.ceil((n - p) / (p * step)) + 1
        if num == 1:
            starts.append([0])
            continue
        stride = (n - p) / (num - 1)
        starts.append([int(round(stride * i)) for i in range(num)])
    return starts


def tile_slices(image_shape: Sequence[int], patch_size: Sequence[int],
                step: float = 0.5) -> Iterator[tuple[slice, ...]]:
    """Every tile as a tuple of slices over ``image_shape`` (C order: the last axis varies fastest)."""
    starts = tile_starts(image_shape, patch_size, step)
    for corner in itertools.product(*starts):
        yield tuple(slice(s, s + p) for s, p in zip(corner, patch_size))


def num_tiles(image_shape: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> int:
    """Number of tiles :func:`tile_slices` yields."""
    return math.prod(len(s) for s in tile_starts(image_shape, patch_size, step))


def _gaussian_1d(n: int, sigma: float) -> np.ndarray:
    """A unit-peak Gaussian centred on ``n // 2``, zero beyond 4 sigma.

    This is what ``scipy.ndimage.gaussian_filter`` (truncate 4.0, constant mode) makes of a unit impulse, up to
    a constant factor, which the peak normalisation removes.
    """
    x = np.arange(n, dtype=np.float64) - n // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g[np.abs(x) > int(4.0 * sigma + 0.5)] = 0.0
    return g


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                        value_scaling: float = 10.0) -> np.ndarray:
    """Per-voxel weights of a tile's prediction: high in the centre, low at the borders.

    Predictions near a tile's border see less context and are less reliable; weighting overlapping tiles with a
    Gaussian removes the seams of the sliding window.

    Parameters
    ----------
    patch_size
        Tile shape, voxels.
    sigma_scale
        Standard deviation per axis as a fraction of the patch along that axis.
    value_scaling
        Value of the peak. Only ratios matter for a weighted mean; a peak above 1 keeps the smallest weights away
        from underflow in low-precision accumulators.

    Returns
    -------
    np.ndarray
        float32 of shape ``patch_size``, maximum ``value_scaling``, no zeros (zeros from the 4-sigma truncation are
        replaced by the smallest nonzero weight, so every voxel of a tile counts and no division by zero occurs).
    """
    w = np.ones((), dtype=np.float64)
    for p in patch_size:
        w = np.multiply.outer(w, _gaussian_1d(int(p), float(p) * sigma_scale))
    w = (w / w.max() * value_scaling).astype(np.float32)
    nonzero = w > 0
    if not nonzero.all():
        w[~nonzero] = w[nonzero].min()
    return w


def padding_for(shape: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """Zero padding ``(before, after)`` per trailing axis that makes ``shape`` at least ``patch_size``.

    The padding is centred (``before = missing // 2``) so the image sits in the middle of the first tile.
    Leading axes of ``shape`` beyond ``len(patch_size)`` get ``(0, 0)``.
    """
    lead = len(shape) - len(patch_size)
    if lead < 0:
        raise ValueError(f"shape {tuple(shape)} has fewer axes than patch {tuple(patch_size)}")
    pads = [(0, 0)] * lead
    for n, p in zip(shape[lead:], patch_size):
        missing = max(int(p) - int(n), 0)
        pads.append((missing // 2, missing - missing // 2))
    return pads


def pad_to_patch(image: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the trailing axes of ``image`` with zeros up to ``patch_size`` where it is smaller.

    Parameters
    ----------
    image
        ``(..., *spatial)``, e.g. ``(C, z, y, x)``; the last ``len(patch_size)`` axes are padded.
    patch_size
        Minimum spatial shape, voxels.

    Returns
    -------
    padded
        ``image`` itself when no axis is smaller than the patch, else a padded copy.
    unpad
        Slices over every axis of ``padded`` that recover the original extent: ``padded[unpad]`` has the shape
        of ``image`` (also valid for an array of predictions whose leading axis differs, e.g. classes).
    """
    pads = padding_for(image.shape, patch_size)
    unpad = tuple(slice(b, b + n) for (b, _), n in zip(pads, image.shape))
    unpad = (slice(None),) * (image.ndim - len(patch_size)) + unpad[image.ndim - len(patch_size):]
    if not any(b or a for b, a in pads):
        return image, unpad
    return np.pad(image, pads, mode="constant", constant_values=0), unpad
