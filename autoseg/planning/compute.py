"""Analytic compute model of a U-Net: multiply-accumulates (MACs) of its convolutions for one patch.

Convolutions are nearly all of a U-Net's arithmetic (normalisation, activations and the loss are a few percent), so
their MACs predict the time of a training step on a device once its throughput (MACs per second for this kind of
network) is known. Counting follows the networks of :mod:`autoseg.nn` layer by layer (a test checks it against the
built networks), like :func:`autoseg.planning.memory.feature_map_voxels` does for memory.

A training step costs about three forward passes (the backward pass computes gradients of both the inputs and the
weights of every convolution, each as expensive as the forward one): :data:`TRAINING_FACTOR`.
"""

from __future__ import annotations

import math
from typing import Sequence

from autoseg.planning.memory import _stage_sizes
from autoseg.schema.plans import ArchitecturePlan

#: Cost of a training step (forward + backward) in units of forward passes.
TRAINING_FACTOR = 3


def _conv(in_channels: int, out_channels: int, kernel: Sequence[int], out_voxels: int) -> int:
    return in_channels * out_channels * math.prod(kernel) * out_voxels


def forward_macs(arch: ArchitecturePlan, patch_size: Sequence[int], in_channels: int, num_classes: int,
                 deep_supervision: bool = False) -> int:
    """Multiply-accumulates of all convolutions in one forward pass of one patch.

    Parameters
    ----------
    arch
        The network topology (plain or residual encoder U-Net).
    patch_size
        Input patch, voxels per axis (in the planned axis order).
    in_channels
        Input channels (image channels, plus a cascade's previous-stage channels).
    num_classes
        Output channels of the segmentation heads, background included.
    deep_supervision
        Count the auxiliary segmentation heads too (training computes them).

    Returns
    -------
    int
        MACs (one multiply and one add each; FLOPs are twice as many).

    Examples
    --------
    >>> arch = ArchitecturePlan("plain_unet", (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)), (1, 1), (1,))
    >>> # encoder 1->4 (8x8) and 4->8 (4x4), transposed conv 8->4, decoder 8->4 (8x8), head 4->2
    >>> forward_macs(arch, (8, 8), 1, 2) == 1*4*9*64 + 4*8*9*16 + 8*4*64 + 8*4*9*64 + 4*2*64
    True
    """
    sizes = [math.prod(s) for s in _stage_sizes(patch_size, arch.strides)]
    feats, kernels, n = arch.features_per_stage, arch.kernel_sizes, arch.n_stages
    total = 0
    if arch.network == "plain_unet":
        stage_in = in_channels
        for s in range(n):
            for b in range(arch.blocks_per_stage_encoder[s]):
                total += _conv(stage_in if b == 0 else feats[s], feats[s], kernels[s], sizes[s])
            stage_in = feats[s]
    elif arch.network == "resenc_unet":
        total += _conv(in_channels, feats[0], kernels[0], sizes[0])  # stem
        stage_in = feats[0]
        for s in range(n):
            for b in range(arch.blocks_per_stage_encoder[s]):
                block_in = stage_in if b == 0 else feats[s]
                total += _conv(block_in, feats[s], kernels[s], sizes[s]) + _conv(feats[s], feats[s], kernels[s],
                                                                                  sizes[s])
                if b == 0 and (block_in != feats[s] or any(st != 1 for st in arch.strides[s])):
                    total += _conv(block_in, feats[s], (1,), sizes[s])  # 1x1 projection on the skip path
            stage_in = feats[s]
    else:
        raise ValueError(f"unknown network {arch.network!r}")
    for d in range(n - 1):
        level = n - 2 - d
        # transposed convolution with kernel = stride: every input voxel feeds prod(stride) output voxels
        total += _conv(feats[level + 1], feats[level], (1,), sizes[level])
        for b in range(arch.blocks_per_stage_decoder[d]):
            total += _conv(2 * feats[level] if b == 0 else feats[level], feats[level], kernels[level], sizes[level])
        if deep_supervision or level == 0:
            total += _conv(feats[level], num_classes, (1,), sizes[level])
    return int(total)


def training_macs(arch: ArchitecturePlan, patch_size: Sequence[int], batch_size: int, in_channels: int,
                  num_classes: int, deep_supervision: bool = True) -> int:
    """Multiply-accumulates of one training step (forward and backward of a batch), see :data:`TRAINING_FACTOR`.

    Examples
    --------
    >>> arch = ArchitecturePlan("plain_unet", (4, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)), (1, 1), (1,))
    >>> training_macs(arch, (8, 8), 2, 1, 2, deep_supervision=False) == 3 * 2 * forward_macs(arch, (8, 8), 1, 2)
    True
    """
    return TRAINING_FACTOR * batch_size * forward_macs(arch, patch_size, in_channels, num_classes, deep_supervision)


def step_seconds(macs: float, macs_per_second: float) -> float:
    """Expected seconds of a step of ``macs`` on a device that does ``macs_per_second`` (its measured throughput).

    Examples
    --------
    >>> step_seconds(3e11, 1.5e11)
    2.0
    """
    if macs_per_second <= 0:
        raise ValueError(f"throughput must be positive, got {macs_per_second}")
    return float(macs) / float(macs_per_second)
