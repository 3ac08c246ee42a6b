"""Resampling of ``(C, z, y, x)`` images and ``(z, y, x)`` label maps to a new spacing or shape.

Interpolation is separable, so it is done one axis at a time with a small ``(n_out, n_in)`` matrix per axis applied
by a BLAS matrix product. The matrices are built by :func:`scipy.ndimage.zoom` itself (on an identity matrix, with
``grid_mode=True, mode="nearest"``), so the result equals ``zoom`` / ``skimage.transform.resize(mode="edge",
anti_aliasing=False)`` (nnU-Net's resampler) up to float32 rounding, at a fraction of the cost for cubic splines
(12 instead of 64 multiply-adds per voxel and BLAS speed): about 30x faster on a 140x170x140 volume.

Rules (nnU-Net's):

- images: B-spline ``order`` (3), clipped to the input channel's range (as ``resize`` does); one channel at a time;
- labels: each label value (including -1, "outside") as a one-hot mask interpolated with ``order`` (1), then the
  value with the largest interpolated weight wins (ties: the higher value);
- when ``max(spacing) / min(spacing) > anisotropy_threshold`` for the source spacing (else for the target spacing)
  and one axis is the unique coarsest, that axis is resampled with nearest neighbour (order 0) and only the other
  axes with ``order``: interpolating across thick slices smears structures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi


# Spline weights below this are dropped: they change no float32 result, and float32 denormals in the matrices would
# make the products ~15x slower.
_TINY_WEIGHT = 1e-7


def separate_z_axis(current_spacing: Sequence[float], new_spacing: Sequence[float],
                    anisotropy_threshold: float) -> int | None:
    """The axis to resample with nearest neighbour, or ``None`` for plain interpolation on every axis.

    The source spacing decides when it is anisotropic (``max / min > anisotropy_threshold``), else the target
    spacing. An anisotropic spacing whose coarsest value is shared by two axes gives ``None``.
    """
    for spacing in (current_spacing, new_spacing):
        sp = np.asarray(spacing, dtype=np.float64)
        if sp.max() / sp.min() > anisotropy_threshold:
            coarsest = np.flatnonzero(sp == sp.max())
            return int(coarsest[0]) if coarsest.size == 1 else None
    return None


def axis_operator(n_in: int, n_out: int, order: int) -> np.ndarray:
    """Resampling operator of one axis from ``n_in`` to ``n_out`` samples (voxel centres aligned as in ``zoom``).

    Returns
    -------
    ndarray
        ``order == 0``: int64 ``(n_out,)`` source index of each output sample. Otherwise float32 ``(n_out, n_in)``
        interpolation matrix (spline prefilter included).
    """
    if order == 0:
        src = ndi.zoom(np.arange(n_in, dtype=np.float64), n_out / n_in, order=0, mode="nearest", grid_mode=True)
        if src.shape != (n_out,):
            raise AssertionError(f"zoom gave {src.shape[0]} samples for {n_in} -> {n_out}")
        return np.rint(src).astype(np.int64)
    w = ndi.zoom(np.eye(n_in, dtype=np.float64), (n_out / n_in, 1.0), order=order, mode="nearest",
                 grid_mode=True)
    if w.shape != (n_out, n_in):
        raise AssertionError(f"zoom gave {w.shape} for {n_in} -> {n_out}")
    w[np.abs(w) < _TINY_WEIGHT] = 0.0
    return w.astype(np.float32)


def _operators(shape: Sequence[int], new_shape: Sequence[int], order: int,
               nearest_axis: int | None) -> list[np.ndarray | None]:
    return [None if n == m else axis_operator(int(n), int(m), 0 if a == nearest_axis else order)
            for a, (n, m) in enumerate(zip(shape, new_shape))]


def _apply(x: np.ndarray, axis: int, op: np.ndarray) -> np.ndarray:
    """Apply one axis operator to a C-contiguous 3D array; returns a new C-contiguous array."""
    if op.ndim == 1:
        return np.take(x, op, axis=axis)
    n = x.shape[axis]
    if axis == 0:
        return (op @ x.reshape(n, -1)).reshape((op.shape[0],) + x.shape[1:])
    if axis == x.ndim - 1:
        return (x.reshape(-1, n) @ op.T).reshape(x.shape[:-1] + (op.shape[0],))
    return np.matmul(op, x)  # middle axis of (z, y, x): a batch of (y, x) products


def _apply_all(x: np.ndarray, ops: Sequence[np.ndarray | None]) -> np.ndarray:
    # shrinking axes first keeps the intermediate arrays (and the work on the later axes) small
    order = sorted((a for a, op in enumerate(ops) if op is not None),
                   key=lambda a: ops[a].shape[0] / x.shape[a])
    out = np.ascontiguousarray(x, dtype=np.float32)
    for a in order:
        out = _apply(out, a, ops[a])
    return out


def resample_data(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                  new_spacing: Sequence[float], order: int = 3, anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample an image to ``new_shape``.

    Parameters
    ----------
    data
        ``(C, z, y, x)``.
    new_shape
        Spatial output shape ``(z, y, x)``, voxels.
    current_spacing, new_spacing
        ``(z, y, x)`` mm; they only decide the separate-z rule (see module docstring).
    order
        Spline order on the (non-separate) axes: 3 for images, 1 for probabilities.
    anisotropy_threshold
        Spacing ratio above which the coarsest axis is resampled with nearest neighbour.

    Returns
    -------
    ndarray
        ``(C, *new_shape)`` float32; ``data`` itself (as float32) when the shape does not change.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data.astype(np.float32, copy=False)
    ops = _operators(data.shape[1:], new_shape, order,
                     separate_z_axis(current_spacing, new_spacing, anisotropy_threshold))
    out = np.empty((data.shape[0],) + new_shape, dtype=np.float32)
    for c in range(data.shape[0]):  # one channel at a time bounds the temporaries
        out[c] = _apply_all(data[c], ops)
        if order > 1 and data[c].size:  # splines overshoot at edges: keep the input range, as resize(clip=True)
            np.clip(out[c], data[c].min(), data[c].max(), out=out[c])
    return out


def resample_labels(seg: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                    new_spacing: Sequence[float], order: int = 1, anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample a label map by interpolating each label's one-hot mask.

    Parameters
    ----------
    seg
        ``(z, y, x)`` integer labels fitting int8; -1 ("outside") is a label value like any other.
    new_shape
        Spatial output shape, voxels.
    current_spacing, new_spacing
        ``(z, y, x)`` mm (separate-z rule only).
    order
        Interpolation order of the one-hot masks (1); 0 is plain nearest neighbour.
    anisotropy_threshold
        Spacing ratio above which the coarsest axis is resampled with nearest neighbour.

    Returns
    -------
    ndarray
        ``new_shape`` int8.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(seg.shape) == new_shape:
        return seg.astype(np.int8, copy=True)
    ops = _operators(seg.shape, new_shape, order, separate_z_axis(current_spacing, new_spacing,
                                                                  anisotropy_threshold))
    if order == 0:
        out = seg
        for a, op in enumerate(ops):
            if op is not None:
                out = np.take(out, op, axis=a)
        return out.astype(np.int8, copy=False)

    values, counts = np.unique(seg, return_counts=True)
    # The most frequent value is never interpolated: the one-hot weights sum to 1 everywhere (order >= 1
    # interpolation reproduces constants), so its weight is 1 - the sum of the others.
    big = int(values[np.argmax(counts)])
    shifted = seg.astype(np.int16) - int(values[0]) + 1  # find_objects wants labels 1..n
    boxes = ndi.find_objects(shifted)
    del shifted
    best = np.full(new_shape, -np.inf, dtype=np.float32)
    total = np.zeros(new_shape, dtype=np.float32)
    out = np.full(new_shape, big, dtype=np.int8)
    for v in values:  # ascending, and `>=` below: on a tie the higher value wins
        v = int(v)
        box = boxes[v - int(values[0])]
        if v == big or box is None:
            continue
        src, dst, sub_ops = [], [], []
        for a, op in enumerate(ops):
            c0, c1 = box[a].start, box[a].stop
            if op is None:
                r0, r1, sub = c0, c1, None
            elif op.ndim == 1:  # nearest: output samples whose source index falls in the box
                r0, r1 = int(np.searchsorted(op, c0)), int(np.searchsorted(op, c1))
                sub = op[r0:r1] - c0
            else:  # interpolation: output samples with any weight on the box
                rows = np.flatnonzero(op[:, c0:c1].any(axis=1))
                r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
                sub = op[r0:r1, c0:c1]
            if r1 <= r0:
                break  # the label falls between output samples: it disappears
            src.append(slice(c0, c1))
            dst.append(slice(r0, r1))
            sub_ops.append(sub)
        else:
            weight = _apply_all((seg[tuple(src)] == v).astype(np.float32), sub_ops)
            dst_t = tuple(dst)
            total[dst_t] += weight
            wins = weight >= best[dst_t]
            best[dst_t][wins] = weight[wins]
            out[dst_t][wins] = v
    big_weight = np.subtract(1.0, total, out=total)
    wins = (big_weight > best) | ((big_weight == best) & (out < big))
    out[wins] = big
    return out


def resample_to_shape(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                      new_spacing: Sequence[float], is_label: bool = False, order: int | None = None,
                      anisotropy_threshold: float = 3.0) -> np.ndarray:
    """Resample ``(C, z, y, x)`` data or a ``(z, y, x)`` label map to ``new_shape`` (used to revert predictions).

    ``current_spacing`` / ``new_spacing`` (mm) only decide the separate-z rule; ``order`` defaults to 3 for data and
    1 for labels (use 1 for probabilities and logits).
    """
    if is_label:
        return resample_labels(data, new_shape, current_spacing, new_spacing, 1 if order is None else order,
                               anisotropy_threshold)
    return resample_data(data, new_shape, current_spacing, new_spacing, 3 if order is None else order,
                         anisotropy_threshold)
