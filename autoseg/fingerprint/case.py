"""Per-case fingerprint measurements. Pure functions on arrays."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoseg.boxes import bounding_box
from autoseg.schema.fingerprint import CaseFingerprint


def nonzero_bbox(image: np.ndarray, nonzero: np.ndarray | None = None) -> tuple[slice, ...]:
    """Bounding box of the voxels that are nonzero in any channel: the crop of preprocessing.

    Parameters
    ----------
    image
        ``(C, z, y, x)``.
    nonzero
        ``np.any(image != 0, axis=0)``, when the caller has it already.

    Returns
    -------
    tuple of slice
        One slice per spatial axis; the whole image when it is zero everywhere.
    """
    nonzero = np.any(image != 0, axis=0) if nonzero is None else nonzero
    return bounding_box(nonzero) or tuple(slice(0, s) for s in nonzero.shape)


@dataclass(frozen=True)
class CaseIntensities:
    """Foreground intensities of one case, per channel.

    Attributes
    ----------
    samples
        ``(C, k)`` float32: up to ``k`` foreground voxels drawn without replacement (all of them when fewer).
    mean, var, min, max
        Exact statistics over all foreground voxels, per channel.
    """

    samples: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    min: np.ndarray
    max: np.ndarray


def thinnest_structure_mm(label: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Thickness of the thinnest foreground class: per class, twice the median distance (mm) of its voxels to the
    nearest voxel outside it; the smallest over the classes present (``None`` without foreground).

    A ball of radius r gives about 0.41 r; a vessel two pixels wide gives 2 pixels.

    Examples
    --------
    >>> lab = np.zeros((1, 9, 9), np.uint8); lab[0, 4, :] = 1  # a one-pixel line
    >>> thinnest_structure_mm(lab, (999.0, 0.5, 0.5))
    1.0
    """
    from scipy import ndimage as ndi

    out = None
    for c in np.unique(label):
        if c <= 0:
            continue
        mask = label == c
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in ndi.find_objects(mask.astype(np.uint8))[0])
        sub = np.pad(mask[box], [(1, 1) if n > 1 else (0, 0) for n in mask[box].shape])  # outside the box is outside
        dist = ndi.distance_transform_edt(sub, sampling=[float(s) for s in spacing])
        thick = 2.0 * float(np.median(dist[sub]))
        out = thick if out is None else min(out, thick)
    return out


#: Blocks per axis ``(z, y, x)`` of :func:`image_signature`: 3D images, and single-slice (2D) images.
SIGNATURE_GRID_3D = (4, 4, 4)
SIGNATURE_GRID_2D = (1, 8, 8)

# np.bincount casts its input to intp (8 bytes a voxel): count a label map this many voxels at a time.
_COUNT_CHUNK = 1 << 22


def class_voxels(label: np.ndarray, num_classes: int = 0) -> tuple[int, ...]:
    """Voxels per label value ``0 .. L-1``; negative values (ignored voxels) are no class.

    Parameters
    ----------
    label
        Integer label map, any shape (``(z, y, x)``).
    num_classes
        ``L``, the number of label values including the background; more entries are returned when ``label``
        holds higher values.

    Examples
    --------
    >>> class_voxels(np.array([[0, 0, 2], [-2, 2, 2]]), num_classes=4)
    (2, 0, 3, 0)
    """
    flat = label.reshape(-1)
    n = max(num_classes, int(flat.max()) + 1 if flat.size else 0)
    counts = np.zeros(n, np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        part = flat[start:start + _COUNT_CHUNK]
        counts += np.bincount(part[part >= 0], minlength=n)
    return tuple(int(c) for c in counts)


def image_sha256(image: np.ndarray) -> str:
    """sha256 of an image array's dtype, shape and voxel bytes (C order).

    Every image is read as float32 ``(C, z, y, x)``, so the same pixels hash equal whatever file format or case
    id they came under.

    Examples
    --------
    >>> a = np.zeros((1, 2, 3, 4), np.float32)
    >>> image_sha256(a) == image_sha256(a.copy()), image_sha256(a) == image_sha256(a.reshape(1, 2, 4, 3))
    (True, False)
    """
    h = hashlib.sha256(f"{image.dtype.str} {tuple(image.shape)}\n".encode())
    h.update(np.ascontiguousarray(image))
    return h.hexdigest()


def block_means(channel: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Mean of ``channel`` over ``grid`` blocks of nearly equal size per axis.

    An axis shorter than its block count repeats its voxels, so every block has at least one.

    Parameters
    ----------
    channel
        ``(z, y, x)``.
    grid
        Blocks per axis.

    Returns
    -------
    numpy.ndarray
        float64 of shape ``grid``.

    Examples
    --------
    >>> block_means(np.arange(8.0).reshape(1, 2, 4), (1, 2, 2))
    array([[[0.5, 2.5],
            [4.5, 6.5]]])
    """
    out = channel
    for axis, n in enumerate(grid):
        size = out.shape[axis]
        starts, block = np.unique(np.arange(n) * size // n, return_inverse=True)
        # one axis at a time, in the input's dtype: a float64 accumulator would cast the whole image first, and
        # after the first axis the array is small (the division by the counts makes it float64)
        sums = np.add.reduceat(out, starts, axis=axis)
        counts = np.diff(np.append(starts, size)).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(sums / counts, block, axis=axis)
    return out


def image_signature(image: np.ndarray) -> tuple[float, ...]:
    """Coarse content signature of an image, for finding near-duplicates by correlation.

    Per channel, the mean over a fixed grid of blocks (:data:`SIGNATURE_GRID_3D`, or :data:`SIGNATURE_GRID_2D`
    for a single slice), z-scored over its blocks so every channel weighs the same (a constant channel gives
    zeros); channels concatenated, rounded to 4 decimals. Block means average noise away, so a re-saved or
    slightly noisy copy keeps a correlation near 1.

    Parameters
    ----------
    image
        ``(C, z, y, x)``.

    Returns
    -------
    tuple of float
        ``C x 64`` values.

    Examples
    --------
    >>> sig = image_signature(np.arange(64.0).reshape(1, 1, 8, 8))
    >>> len(sig), sig[0], sig[-1]
    (64, -1.7052, 1.7052)
    """
    grid = SIGNATURE_GRID_2D if image.shape[1] == 1 else SIGNATURE_GRID_3D
    parts = []
    for channel in image:
        b = block_means(channel, grid).ravel()
        std = b.std()
        parts.append((b - b.mean()) / std if std > 0 else np.zeros_like(b))
    return tuple(round(float(v), 4) + 0.0 for v in np.concatenate(parts))  # + 0.0 turns -0 into 0


def analyze_case(case_id: str, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...],
                 max_samples: int, rng: np.random.Generator, num_classes: int = 0
                 ) -> tuple[CaseFingerprint, CaseIntensities | None]:
    """Fingerprint of one training case.

    Parameters
    ----------
    case_id
        The case.
    image
        ``(C, z, y, x)``.
    label
        ``(z, y, x)`` integer labels; foreground is ``label > 0``, negative values are ignored voxels.
    spacing
        ``(z, y, x)`` mm.
    max_samples
        Foreground voxels kept per channel for the pooled percentiles.
    rng
        Source of the subsample.
    num_classes
        Label values of the dataset including the background (length of ``class_voxels``).

    Returns
    -------
    fingerprint, intensities
        ``intensities`` is ``None`` when the case has no foreground.
    """
    bbox = nonzero_bbox(image)
    shape_before = tuple(int(s) for s in image.shape[1:])
    shape_after = tuple(s.stop - s.start for s in bbox)
    # Foreground is labelled; cropping cannot remove labelled voxels that carry image signal, and the statistics
    # come from the label mask, so they are taken on the full arrays (same voxels, no copy).
    fg = label > 0
    n_fg = int(np.count_nonzero(fg))
    fp = CaseFingerprint(case_id=case_id, spacing=tuple(float(s) for s in spacing),
                         shape_before_crop=shape_before, shape_after_crop=shape_after,
                         relative_size_after_crop=float(np.prod(shape_after) / np.prod(shape_before)),
                         foreground_voxels=n_fg, thinnest_structure_mm=thinnest_structure_mm(label, spacing),
                         class_voxels=class_voxels(label, num_classes), image_sha256=image_sha256(image),
                         image_signature=image_signature(image))
    if n_fg == 0:
        return fp, None
    values = image[:, fg].astype(np.float64)  # (C, n_fg)
    k = min(n_fg, max_samples)
    idx = rng.choice(n_fg, size=k, replace=False) if k < n_fg else np.arange(n_fg)
    return fp, CaseIntensities(samples=values[:, idx].astype(np.float32), mean=values.mean(axis=1),
                               var=values.var(axis=1), min=values.min(axis=1), max=values.max(axis=1))
