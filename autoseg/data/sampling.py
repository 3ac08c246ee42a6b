"""Training patch sampling: the pre-augmentation patch, cropping with padding, foreground oversampling.

Axis order is numpy order after the plans' ``transpose_forward``: a case holds data ``(C, Z, Y, X)`` float32 and a
segmentation ``(1, Z, Y, X)`` int8 in which ``-1`` marks voxels outside the nonzero region and ``-2``
(:data:`autoseg.schema.dataset.IGNORE`) voxels whose label does not count (the ignore label, outside a region of
interest); random patches of such a case are centred on its annotated voxels (location key 0). Patch sizes are in voxels.

A 3D configuration samples ``(C, Z, Y, X)`` boxes; a 2D configuration samples ``(C, Y, X)`` boxes from one random
``Z`` slice of the same 3D cases. The sampled box is the *pre-augmentation* patch: larger than the network's patch so
that rotating and scaling about its centre (:mod:`autoseg.data.augmentation`) still finds image content everywhere
in the final, centre-cropped patch. Where the box leaves the case, data are padded with 0 and the segmentation with
-1 (which the augmentation pipeline later maps to background, as it does for voxels outside the nonzero region).

Every random draw comes from an explicit :class:`numpy.random.Generator`; the order of the draws is fixed, so a
batch is a pure function of ``(source, case ids, config, generator state)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

DATA_PAD_VALUE = 0.0
SEG_PAD_VALUE = -1  # "no label here": becomes background after augmentation, never a class of its own


# --------------------------------------------------------------------------- case access


@runtime_checkable
class CaseSource(Protocol):
    """Where cases come from: the preprocessed case store (:class:`autoseg.data.loader.StoreSource`), or
    anything else with these methods (the tests use arrays in memory).

    ``load`` returns ``data`` ``(C, Z, Y, X)`` float32 (a memory map is fine: only the sampled box is read),
    ``seg`` ``(1, Z, Y, X)`` integer with -1 outside the nonzero region, and ``locs``: label value -> ``(n, 3)``
    integer ``(z, y, x)`` coordinates of (a subsample of) that label's voxels, as made by
    :func:`autoseg.preprocessing.case.class_locations`.
    """

    def case_ids(self) -> list[str]: ...

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]: ...


@runtime_checkable
class CascadeSource(CaseSource, Protocol):
    """A source that also holds the previous cascade stage's segmentation ``(1, Z, Y, X)`` of every case."""

    def load_extra_seg(self, case_id: str) -> np.ndarray: ...


# --------------------------------------------------------------------------- geometry of the sampled box


def _rotated_extent(a: float, b: float, max_angle: float) -> float:
    """Largest extent, along the first side's axis, of an ``a`` x ``b`` rectangle rotated by any angle in
    ``[-max_angle, max_angle]`` (radians, at most pi/2): the maximum of ``a cos(t) + b sin(t)``."""
    best = math.atan2(b, a)  # where a cos + b sin peaks, at sqrt(a^2 + b^2)
    if best <= max_angle:
        return math.hypot(a, b)
    return a * math.cos(max_angle) + b * math.sin(max_angle)


def pre_augmentation_patch_size(patch_size: Sequence[int], max_rotation: float,
                                scale_range: tuple[float, float] = (0.85, 1.25),
                                keep_first_axis: bool = False) -> tuple[int, ...]:
    """The box to sample so that the final patch, rotated and scaled about its centre, stays inside it.

    Like nnU-Net, the box is the union of the final patch rotated by up to ``max_rotation`` about each axis in
    turn (one rotation plane at a time), divided by the smallest scale factor; unlike nnU-Net it takes the full
    rotated rectangle rather than one rotated corner vector, so it is symmetric in the axes (Hippocampus
    40x56x40 with +-30 deg: 74x82x74 here, 73x80x64 in nnU-Net). Simultaneous rotations about several axes can
    reach a little beyond; those voxels are padded, as in nnU-Net. Every axis is rounded up so that
    ``box - patch`` is even, which puts the final patch at a whole-voxel offset in the box.

    Parameters
    ----------
    patch_size
        Final (network) patch, voxels, 2 or 3 axes.
    max_rotation
        Largest absolute rotation angle, radians (capped at pi/2: a larger angle cannot need a larger box).
    scale_range
        Scale factors whose minimum sets the margin for zooming. nnU-Net uses a nominal (0.85, 1.25) here rather
        than the augmentation's own range; so does the default.
    keep_first_axis
        3D patches augmented "2D-style" (in-plane only): rotate in the ``(Y, X)`` plane and keep axis 0 as is.

    Returns
    -------
    tuple of int
        Pre-augmentation patch, voxels.
    """
    p = [float(v) for v in patch_size]
    dims = len(p)
    if dims not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 axes, got {tuple(patch_size)}")
    angle = min(abs(float(max_rotation)), math.pi / 2)
    if dims == 2:
        planes = [(0, 1)]
    elif keep_first_axis:
        planes = [(1, 2)]
    else:
        planes = [(1, 2), (0, 2), (0, 1)]
    extent = list(p)
    for i, j in planes:
        extent[i] = max(extent[i], _rotated_extent(p[i], p[j], angle))
        extent[j] = max(extent[j], _rotated_extent(p[j], p[i], angle))
    out = []
    for axis, (e, n) in enumerate(zip(extent, patch_size)):
        if keep_first_axis and dims == 3 and axis == 0:
            out.append(int(n))
            continue
        size = max(int(n), math.ceil(e / min(scale_range) - 1e-6))
        size += (size - int(n)) % 2
        out.append(size)
    return tuple(out)


def forced_foreground(batch_size: int, fraction: float) -> np.ndarray:
    """Which samples of a batch must contain foreground: nnU-Net's rule, sample ``i`` is forced when
    ``i >= round(batch_size * (1 - fraction))`` (the last ones; batch 2 -> 1, batch 3 -> 1, batch 7 -> 2).

    Returns
    -------
    numpy.ndarray
        ``(batch_size,)`` bool.
    """
    first = round(batch_size * (1 - fraction))
    return np.arange(batch_size) >= first


def _start_range(shape: Sequence[int], patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive range of the final patch's first voxel: inside the case when the case is larger than the patch,
    otherwise anywhere that keeps the whole (small) case inside the patch."""
    diff = np.asarray(shape, dtype=np.int64) - np.asarray(patch, dtype=np.int64)
    return np.minimum(diff, 0), np.maximum(diff, 0)


def crop_with_padding(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float,
                      dtype: np.dtype | type | None = None) -> np.ndarray:
    """Copy the box ``[start, start + size)`` of the spatial axes of ``array`` ``(C, *spatial)``; where the box
    leaves the array it is filled with ``pad_value``. Only the overlapping part is read (cheap on memory maps).

    Returns
    -------
    numpy.ndarray
        ``(C, *size)`` in ``dtype`` (default ``array.dtype``).
    """
    out = np.full((array.shape[0], *size), pad_value, dtype=dtype or array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, length in zip(start, size, array.shape[1:]):
        lo, hi = max(int(s), 0), min(int(s) + int(n), int(length))
        if hi <= lo:
            return out  # the box misses the case entirely
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def one_hot_channels(seg: np.ndarray, num_classes: int, dtype: type = np.float32) -> np.ndarray:
    """One channel per foreground label ``1 .. num_classes - 1`` (background and -1 get none): the cascade's
    extra input, as in nnU-Net.

    Parameters
    ----------
    seg
        ``(B, *spatial)`` integer label map.
    num_classes
        Label values of the previous stage, background included.

    Returns
    -------
    numpy.ndarray
        ``(B, num_classes - 1, *spatial)`` of 0 / 1 in ``dtype``.
    """
    labels = np.arange(1, num_classes).reshape((1, -1) + (1,) * (seg.ndim - 1))
    return (seg[:, None] == labels).astype(dtype)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class SamplingConfig:
    """What to sample.

    Attributes
    ----------
    patch_size
        Final network patch, voxels: 3 axes ``(Z, Y, X)`` for a 3D configuration, 2 ``(Y, X)`` for 2D.
    sample_patch_size
        Pre-augmentation box, voxels, same axes as ``patch_size``; ``None`` samples ``patch_size`` directly
        (validation, or no spatial augmentation).
    batch_size
        Samples per batch.
    oversample_foreground
        Fraction of every batch forced to contain foreground (see :func:`forced_foreground`).
    num_extra_classes
        Cascade: label values (background included) of the previous stage's segmentation, which the source must
        provide through ``load_extra_seg``; 0 disables it. The sampled previous-stage box travels as a second
        segmentation channel (padded with -1) and becomes one-hot data channels after augmentation.
    regions
        Region-based training: the label values of each region. A forced sample then picks one of the regions
        present in the case (equally weighted) and a voxel of it, so a small region nested in a large one (the
        enhancing tumour in the whole tumour) is drawn as often as the large one; ``None``: per label.
    """

    patch_size: tuple[int, ...]
    sample_patch_size: tuple[int, ...] | None = None
    batch_size: int = 2
    oversample_foreground: float = 0.33
    num_extra_classes: int = 0
    regions: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 axes, got {self.patch_size}")
        if self.sample_patch_size is not None:
            if len(self.sample_patch_size) != len(self.patch_size) or any(
                    s < p for s, p in zip(self.sample_patch_size, self.patch_size)):
                raise ValueError(f"sample_patch_size {self.sample_patch_size} must cover patch_size "
                                 f"{self.patch_size} on every axis")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must be in [0, 1], got {self.oversample_foreground}")

    @property
    def box(self) -> tuple[int, ...]:
        """The box actually cut from a case, voxels."""
        return tuple(self.sample_patch_size or self.patch_size)


class SampleError(RuntimeError):
    """Sampling one case failed; names the case and keeps the cause as ``__cause__``."""

    def __init__(self, case_id: str, cause: BaseException):
        super().__init__(f"case {case_id!r}: {type(cause).__name__}: {cause}")
        self.case_id = case_id


def _choose_voxel(locs: Mapping[int, np.ndarray], rng: np.random.Generator,
                  regions: Sequence[Sequence[int]] | None = None) -> np.ndarray | None:
    """A random voxel of a random foreground label present in the case (labels weighted equally, as in nnU-Net),
    or with ``regions``, of a random region present (regions weighted equally; within one, voxels of its labels
    drawn in proportion to the stored locations)."""
    present = sorted(int(k) for k, v in locs.items() if k > 0 and len(v) > 0)
    if not present:
        return None  # a case without foreground: fall back to a random box
    if regions is None:
        coords = locs[present[int(rng.integers(len(present)))]]
        return np.asarray(coords[int(rng.integers(len(coords)))], dtype=np.int64)
    groups = [[v for v in r if v in present] for r in regions]
    groups = [g for g in groups if g]
    if not groups:
        return None
    group = groups[int(rng.integers(len(groups)))]
    sizes = np.array([len(locs[v]) for v in group])
    pick = int(rng.integers(sizes.sum()))
    k = int(np.searchsorted(np.cumsum(sizes), pick, side="right"))
    coords = locs[group[k]]
    return np.asarray(coords[pick - int(sizes[:k].sum())], dtype=np.int64)


def _box_start(shape: Sequence[int], patch: Sequence[int], box: Sequence[int], rng: np.random.Generator,
               centre: np.ndarray | None) -> np.ndarray:
    """First voxel of the sampled box. The final patch (centred in the box) is placed uniformly at random in its
    valid range, or centred on ``centre`` and clipped to that range."""
    lo, hi = _start_range(shape, patch)
    if centre is None:
        start = rng.integers(lo, hi + 1)
    else:
        start = np.clip(centre - np.asarray(patch) // 2, lo, hi)
    return start - (np.asarray(box) - np.asarray(patch)) // 2


def sample_patch(data: np.ndarray, seg: np.ndarray, locs: Mapping[int, np.ndarray], config: SamplingConfig,
                 force_fg: bool, rng: np.random.Generator,
                 extra_seg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut one training box from one case.

    Parameters
    ----------
    data, seg, locs
        A case as returned by :meth:`CaseSource.load`.
    config
        Patch geometry.
    force_fg
        Centre the final patch on a random voxel of a random label present in ``locs``.
    rng
        Source of every random draw.
    extra_seg
        Previous-stage segmentation ``(1, Z, Y, X)`` to cut with the same box (cascade).

    Returns
    -------
    data, seg
        ``(C, *box)`` float32 and ``(1 or 2, *box)`` int8 (channel 1: ``extra_seg``).
    """
    if extra_seg is not None and tuple(extra_seg.shape[1:]) != tuple(seg.shape[1:]):
        raise ValueError(f"previous-stage segmentation has shape {tuple(extra_seg.shape[1:])}, the case "
                         f"{tuple(seg.shape[1:])} (made from other plans? retrain the previous stage)")
    patch, box = config.patch_size, config.box
    voxel = _choose_voxel(locs, rng, config.regions) if force_fg else None
    inside = locs.get(0)
    if voxel is None and inside is not None and len(inside) > 0:
        # a case with a region-of-interest mask: random patches are centred inside it
        voxel = np.asarray(inside[int(rng.integers(len(inside)))], dtype=np.int64)
    if len(patch) == 2:
        # 2D: one slice of the volume; a forced sample takes the slice of its chosen voxel
        z = int(voxel[0]) if voxel is not None else int(rng.integers(data.shape[1]))
        start = _box_start(data.shape[2:], patch, box, rng, None if voxel is None else voxel[1:])
        data, seg = data[:, z], seg[:, z]
        extra_seg = None if extra_seg is None else extra_seg[:, z]
    else:
        start = _box_start(data.shape[1:], patch, box, rng, voxel)
    d = crop_with_padding(data, start, box, DATA_PAD_VALUE, np.float32)
    s = crop_with_padding(seg, start, box, SEG_PAD_VALUE, np.int8)
    if extra_seg is not None:
        s = np.concatenate([s, crop_with_padding(extra_seg, start, box, SEG_PAD_VALUE, np.int8)])
    return d, s


def sample_batch(source: CaseSource, case_ids: Sequence[str], config: SamplingConfig,
                 rng: np.random.Generator) -> dict:
    """Draw one batch: ``batch_size`` cases with replacement, the last ones forced to contain foreground.

    Parameters
    ----------
    source
        Where cases come from (a :class:`CascadeSource` when ``config.num_extra_classes > 0``).
    case_ids
        Cases to draw from (e.g. a fold's training cases).
    config
        Patch geometry and oversampling.
    rng
        Source of every random draw.

    Returns
    -------
    dict
        ``"data"``: ``(B, C, *box)`` float32; ``"seg"``: ``(B, 1 or 2, *box)`` int8; ``"keys"``: case ids.

    Raises
    ------
    SampleError
        Loading or cutting a case failed; the message names the case.
    """
    if not case_ids:
        raise ValueError("sample_batch: no cases to sample from")
    picks = rng.integers(len(case_ids), size=config.batch_size)
    keys = [case_ids[int(i)] for i in picks]
    forced = forced_foreground(config.batch_size, config.oversample_foreground)
    data_out, seg_out = [], []
    for key, force in zip(keys, forced):
        try:
            data, seg, locs = source.load(key)
            extra = source.load_extra_seg(key) if config.num_extra_classes > 0 else None
            d, s = sample_patch(data, seg, locs, config, bool(force), rng, extra)
        except Exception as e:  # noqa: BLE001 -- re-raised with the case named
            raise SampleError(key, e) from e
        data_out.append(d)
        seg_out.append(s)
    return {"data": np.stack(data_out), "seg": np.stack(seg_out), "keys": keys}
