"""Network topology from spacing and patch size: poolings, strides and kernel sizes per stage."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Topology:
    """Result of :func:`pool_and_conv_props`.

    Attributes
    ----------
    poolings_per_axis
        Number of stride-2 downsamplings per axis.
    strides
        One entry per stage, each one stride per axis; the first stage has stride 1 everywhere.
    kernel_sizes
        One entry per stage, each one kernel size per axis (1 or 3).
    patch_size
        The patch, padded up to a multiple of ``divisor`` per axis.
    divisor
        ``2 ** poolings_per_axis``: what each patch axis must be divisible by.
    """

    poolings_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisor: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def pad_to_multiple(shape: Sequence[int], divisor: Sequence[int]) -> tuple[int, ...]:
    """Round every axis of ``shape`` up to a multiple of ``divisor``."""
    return tuple(int(math.ceil(s / d) * d) for s, d in zip(shape, divisor))


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int],
                        min_feature_map_edge: int = 4) -> Topology:
    """Decide how often each axis is downsampled and with which kernels, nnU-Net style.

    At every step an axis may pool (stride 2) while its feature map is at least ``2 * min_feature_map_edge``
    voxels and its current spacing is within 2x of the finest current spacing; a single pooling axis needs
    ``3 * min_feature_map_edge``. An axis gets kernel 3 once its spacing is within 2x of the finest, 1 before
    (so very coarse axes are not convolved across until pooling has caught the others up). The bottleneck uses
    kernel 3 on every axis.

    Parameters
    ----------
    spacing
        Voxel spacing per axis, mm (numpy axis order after transpose).
    patch_size
        Patch in voxels per axis.
    min_feature_map_edge
        Smallest feature map edge allowed at the bottleneck (nnU-Net: 4).
    """
    dim = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if cur_size[i] >= 2 * min_feature_map_edge]
        if not valid:
            break
        finest_valid = min(cur_spacing[i] for i in valid)
        valid = [i for i in valid if cur_spacing[i] / finest_valid < 2]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map_edge:
            break
        if not valid:
            break
        finest = min(cur_spacing)
        kernel = [3 if (k == 3 or cur_spacing[d] / finest < 2) else 1 for d, k in enumerate(kernel)]
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            cur_spacing[v] *= 2
            cur_size[v] = math.ceil(cur_size[v] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisor = tuple(2 ** p for p in pools)
    return Topology(tuple(pools), tuple(strides), tuple(kernels), pad_to_multiple(patch_size, divisor), divisor)


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> tuple[tuple[float, ...], ...]:
    """Size of every deep-supervision output relative to the input, per axis, full resolution first.

    Output ``k`` (``k = 0 .. n_stages - 2``; the bottleneck has none) sits at ``1 / prod(strides[0..k])`` per
    axis (``strides[0]`` is all ones): the factors to downsample the target with so it matches each output.
    """
    scales, cum = [], [1] * len(strides[0])
    for stride in strides[:-1]:
        cum = [c * st for c, st in zip(cum, stride)]
        scales.append(tuple(1.0 / c for c in cum))
    return tuple(scales)
