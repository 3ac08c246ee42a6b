"""Analytic memory estimate of a U-Net: the summed sizes of its convolution outputs for one patch.

The number is proportional to the activations kept for the backward pass, which dominate training memory. It is
compared with a preset's reference value (feature-map voxels that fit a known memory at a known batch size).
Counting follows the networks in :mod:`autoseg.nn` (the same networks as nnU-Net's planners count), so plans agree
with nnU-Net's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autoseg.schema.plans import ArchitecturePlan


def _stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial size of every stage's output: the patch divided by the cumulative strides (floor per step)."""
    sizes = []
    size = tuple(int(s) for s in patch_size)
    for stride in strides:
        size = tuple(s // st for s, st in zip(size, stride))
        sizes.append(size)
    return sizes


def feature_map_voxels(arch: ArchitecturePlan, patch_size: Sequence[int], num_classes: int,
                       deep_supervision: bool = False) -> int:
    """Summed number of elements of all convolution outputs for one patch of ``patch_size``.

    Parameters
    ----------
    arch
        The network topology (plain or residual encoder U-Net).
    patch_size
        Input patch, voxels per axis.
    num_classes
        Output channels of the segmentation head, background included.
    deep_supervision
        Count the auxiliary segmentation heads too (the planner's reference values were set without them).
    """
    sizes = [int(np.prod(s, dtype=np.int64)) for s in _stage_sizes(patch_size, arch.strides)]
    feats = arch.features_per_stage
    n = arch.n_stages
    total = 0
    if arch.network == "plain_unet":
        for s in range(n):
            total += arch.blocks_per_stage_encoder[s] * feats[s] * sizes[s]
    elif arch.network == "resenc_unet":
        total += feats[0] * sizes[0]  # stem convolution at full resolution
        for s in range(n):
            # every residual block has two convolutions; the first block of a stage that changes resolution or
            # width also has a projection on its skip path
            in_feats = feats[s - 1] if s > 0 else feats[0]
            has_projection = in_feats != feats[s] or any(st != 1 for st in arch.strides[s])
            total += (2 * arch.blocks_per_stage_encoder[s] + int(has_projection)) * feats[s] * sizes[s]
    else:
        raise ValueError(f"unknown network {arch.network!r}")
    # decoder: from the coarsest skip up to full resolution; each stage has a transposed convolution and its convs
    for d in range(n - 1):
        level = n - 2 - d
        total += (arch.blocks_per_stage_decoder[d] + 1) * feats[level] * sizes[level]
        if deep_supervision or level == 0:
            total += num_classes * sizes[level]
    return int(total)
