"""Segmentation metrics per class: Dice, IoU, 95% Hausdorff distance, normalised surface Dice (numpy / scipy).

Conventions for empty masks (``n_ref`` / ``n_pred``: voxels of the class in reference / prediction):

========================  =====  =====  ================================  =====
case                      Dice   IoU    HD95                              NSD
========================  =====  =====  ================================  =====
both empty                NaN    NaN    NaN                               NaN
exactly one empty         0      0      the image diagonal, mm            0
========================  =====  =====  ================================  =====

NaN means "undefined, leave out of means". When one mask is empty the HD95 is the largest distance the image can
hold (its diagonal, the BraTS convention), a finite worst case: a missed or hallucinated structure is penalised
in the mean instead of being skipped (NaN) or making the mean infinite.

Surfaces are the mask voxels with a background face neighbour (``mask & ~erosion(mask)``, 6-connectivity in 3D;
outside the image counts as background). Distances are Euclidean between voxel centres in mm, using the spacing.
The NSD counts surface voxels (not surface areas): the fraction of both surfaces lying within the tolerance of
the other surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.boxes import bounding_box


@dataclass(frozen=True)
class Counts:
    """Voxel counts of one class: true / false positives, false negatives, reference and predicted voxels."""

    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int


def counts(pred: np.ndarray, ref: np.ndarray) -> Counts:
    """Confusion counts of two boolean masks of the same shape."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    return Counts(tp=tp, fp=n_pred - tp, fn=n_ref - tp, n_ref=n_ref, n_pred=n_pred)


def dice(c: Counts) -> float:
    """``2 TP / (2 TP + FP + FN)``; NaN when both masks are empty."""
    denom = 2 * c.tp + c.fp + c.fn
    return 2 * c.tp / denom if denom else math.nan


def iou(c: Counts) -> float:
    """``TP / (TP + FP + FN)``; NaN when both masks are empty."""
    denom = c.tp + c.fp + c.fn
    return c.tp / denom if denom else math.nan


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the surface voxels of ``mask`` (voxels with a background neighbour across a face)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's diagonal, mm: the largest distance two of its voxels can have (about)."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every predicted surface voxel to the reference surface, and back.

    Both masks must be non-empty. The distance transforms run on the bounding box of both masks (one voxel
    larger), which gives the same distances as on the whole image at a fraction of the cost.

    Returns
    -------
    pred_to_ref, ref_to_pred
        1D float arrays, one distance per surface voxel of the prediction / of the reference.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    box = bounding_box(pred | ref)
    # Every mask voxel on a face of the box has background beyond it (or the image border), so surfaces found in
    # the crop are those of the whole image.
    sp, sr = surface(pred[box]), surface(ref[box])
    spacing = tuple(float(s) for s in spacing)
    dist_to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dist_to_ref[sp], dist_to_pred[sr]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95% Hausdorff distance, mm: the larger of the two directed 95th percentiles of the surface distances.

    NaN when both masks are empty; the image diagonal when exactly one is empty (see the module docs).
    """
    return _surface_scores(np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool), spacing, 0.0)[0]


def normalized_surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice: share of both surfaces within ``tolerance_mm`` of the other surface, in [0, 1].

    NaN when both masks are empty; 0 when exactly one is empty.
    """
    return _surface_scores(np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool), spacing, tolerance_mm)[1]


def _surface_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                    tolerance_mm: float) -> tuple[float, float]:
    """``(hd95, nsd)`` of two boolean masks, with the empty-mask conventions of the module docs."""
    if tolerance_mm < 0:
        raise ValueError(f"NSD tolerance {tolerance_mm} mm must not be negative")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return math.nan, math.nan
    if not has_pred or not has_ref:
        return image_diagonal(ref.shape, spacing), 0.0
    a, b = surface_distances(pred, ref, spacing)
    h = float(max(np.percentile(a, 95), np.percentile(b, 95)))
    s = float((np.count_nonzero(a <= tolerance_mm) + np.count_nonzero(b <= tolerance_mm)) / (a.size + b.size))
    return h, s


@dataclass(frozen=True)
class ClassResult:
    """All metrics of one class in one case (NaN = undefined, see the module docs); distances in mm."""

    dice: float
    iou: float
    hd95: float
    nsd: float
    counts: Counts


def class_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                  tolerance_mm: float = 1.0) -> ClassResult:
    """Dice, IoU, HD95 and NSD of two boolean masks, sharing one surface-distance computation.

    Parameters
    ----------
    pred, ref
        Boolean masks ``(z, y, x)`` (or any dimensionality, equal shapes).
    spacing
        Voxel size per axis, mm, in the masks' axis order.
    tolerance_mm
        NSD tolerance, mm.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not have one entry per axis of shape {ref.shape}")
    c = counts(pred, ref)
    h, s = _surface_scores(pred, ref, spacing, tolerance_mm)
    return ClassResult(dice=dice(c), iou=iou(c), hd95=h, nsd=s, counts=c)


def label_metrics(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
                  tolerance_mm: float = 1.0) -> dict[int, ClassResult]:
    """:func:`class_metrics` for every label value in ``labels`` of two integer label maps."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    return {int(v): class_metrics(pred == v, ref == v, spacing, tolerance_mm) for v in labels}
