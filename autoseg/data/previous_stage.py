"""Training-time damage to a cascade's previous-stage input, so the second stage learns to correct it.

The low-res stage's segmentation reaches the full-res network as one-hot channels. If training only ever showed it
cross-validation predictions, the network could learn to copy them; nnU-Net therefore perturbs them at random
(its ``ApplyRandomBinaryOperatorTransform`` and ``RemoveRandomConnectedComponentFromOneHotEncodingTransform``):
per sample, with some probability, each label's mask is dilated, eroded, opened or closed with a ball of random
radius; and, with another probability, one random connected component that is not too large is removed from each
label's mask. The numbers are nnU-Net's (0.4, radius 1-8 voxels; 0.2, components under 15% of the patch).

Morphology uses Euclidean distance transforms (a ball of radius ``r`` contains the voxels within ``r``), whose cost
does not grow with the radius as a structuring element's does. Unlike scipy's default, masks are not eroded from
the patch border: the structure continues outside the patch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from autoseg.boxes import bounding_box

OPERATIONS = ("dilate", "erode", "open", "close")


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    # only voxels within the radius of the mask can change: distances are exact inside that box
    box = bounding_box(mask, int(np.ceil(radius)) + 1)
    if box is None:
        return mask.copy()  # nothing to grow (and no voxel to measure distances to)
    out = np.zeros_like(mask)
    out[box] = ndimage.distance_transform_edt(~mask[box]) <= radius
    return out


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    # the one-voxel shell around the mask's box is background wherever it lies inside the array, so the nearest
    # background voxel of any mask voxel is inside the grown box: distances are exact there
    box = bounding_box(mask, 1)
    if box is None:
        return mask.copy()
    inner = mask[box]
    if inner.all():
        return mask.copy()  # nothing outside to erode from
    out = np.zeros_like(mask)
    out[box] = ndimage.distance_transform_edt(inner) > radius
    return out


def morphology(mask: np.ndarray, operation: str, radius: float) -> np.ndarray:
    """``operation`` (one of :data:`OPERATIONS`) of a boolean mask with a Euclidean ball of ``radius`` voxels."""
    if operation == "dilate":
        return _dilate(mask, radius)
    if operation == "erode":
        return _erode(mask, radius)
    if operation == "open":
        return _dilate(_erode(mask, radius), radius)
    if operation == "close":
        return _erode(_dilate(mask, radius), radius)
    raise ValueError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")


def remove_random_component(mask: np.ndarray, max_voxels: float, rng: np.random.Generator) -> np.ndarray:
    """``mask`` without one of its connected components (full connectivity) smaller than ``max_voxels``, chosen
    uniformly; unchanged when there is none."""
    box = bounding_box(mask)
    if box is None:
        return mask
    labels, n = ndimage.label(mask[box], structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < max_voxels) + 1
    if small.size == 0:
        return mask
    out = mask.copy()
    out[box] &= labels != rng.choice(small)
    return out


def perturb_previous_stage(one_hot: np.ndarray, rng: np.random.Generator, p_morphology: float = 0.4,
                           radius_range: tuple[float, float] = (1.0, 8.0), p_remove_component: float = 0.2,
                           max_component_fraction: float = 0.15) -> np.ndarray:
    """Perturb a batch's previous-stage one-hot channels in place (and return them).

    Parameters
    ----------
    one_hot
        ``(B, L, *spatial)`` 0/1 masks, one channel per foreground label of the previous stage.
    rng
        Every random draw.
    p_morphology
        Per sample: apply a random operation of random radius to every label's mask (labels in random order;
        voxels a dilation adds are removed from the other labels, keeping the channels exclusive).
    radius_range
        Ball radius, voxels, drawn uniformly.
    p_remove_component
        Per sample: remove one random small connected component from every label's mask.
    max_component_fraction
        Components covering at least this fraction of the patch are never removed.
    """
    batch, n_labels = one_hot.shape[:2]
    patch_voxels = float(np.prod(one_hot.shape[2:]))
    for b in range(batch):
        if rng.uniform() < p_morphology:
            for c in rng.permutation(n_labels):
                mask = one_hot[b, c] > 0
                result = morphology(mask, OPERATIONS[int(rng.integers(len(OPERATIONS)))],
                                    float(rng.uniform(*radius_range)))
                added = result & ~mask
                one_hot[b, c] = result
                if added.any():
                    for other in range(n_labels):
                        if other != c:
                            one_hot[b, other][added] = 0
        if rng.uniform() < p_remove_component:
            for c in range(n_labels):
                one_hot[b, c] = remove_random_component(one_hot[b, c] > 0, max_component_fraction * patch_voxels,
                                                        rng)
    return one_hot
