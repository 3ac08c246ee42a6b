"""Target spacing, axis transpose and resampled shapes (numpy axis order, mm)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   anisotropy_threshold: float = 3.0) -> tuple[float, ...]:
    """Full-resolution target spacing of a dataset.

    The per-axis median, except for strongly anisotropic data: when the coarsest axis is more than
    ``anisotropy_threshold`` times coarser than the others *and* has that many times fewer voxels, the median would
    throw away most of the through-plane resolution of the finer cases, so its 10th percentile is used instead (but
    never finer than the finest other axis).

    Parameters
    ----------
    spacings
        Per case spacing ``(z, y, x)`` in mm.
    shapes
        Per case shape after cropping to the nonzero region ``(z, y, x)`` in voxels.
    anisotropy_threshold
        Ratio that makes an axis "anisotropic" (nnU-Net: 3).

    Returns
    -------
    tuple of float
        Target spacing ``(z, y, x)`` in mm.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > anisotropy_threshold * max(target[i] for i in others)
    aniso_voxels = median_size[worst] * anisotropy_threshold < min(median_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        finest_other = max(target[i] for i in others)
        tenth = float(np.percentile(spacings[:, worst], 10))
        if tenth < finest_other:
            # the small offset keeps the axis strictly the coarsest, so the transpose stays the same
            tenth = finest_other + 1e-5
        target[worst] = tenth
    return tuple(float(s) for s in target)


def transpose_axes(spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Axis permutation that puts the coarsest axis first (2D slices are then taken across it).

    Returns
    -------
    forward, backward
        ``array.transpose(forward)`` reorders a ``(z, y, x)`` array; ``backward`` undoes it.
    """
    coarsest = int(np.argmax(spacing))
    forward = (coarsest,) + tuple(i for i in range(len(spacing)) if i != coarsest)
    backward = tuple(forward.index(i) for i in range(len(spacing)))
    return forward, backward


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape in voxels of an array of ``shape`` at ``spacing`` once resampled to ``new_spacing`` (same axis order)."""
    return tuple(int(round(sp / nsp * n)) for n, sp, nsp in zip(shape, spacing, new_spacing))
