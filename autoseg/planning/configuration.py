"""Patch size, topology and batch size of one configuration, fitted to a memory target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoseg.planning.memory import feature_map_voxels
from autoseg.planning.presets import PlannerPreset
from autoseg.planning.topology import Topology, pool_and_conv_props
from autoseg.schema.plans import ArchitecturePlan


@dataclass(frozen=True)
class ConfigurationChoice:
    """What :func:`fit_configuration` decides for one configuration."""

    patch_size: tuple[int, ...]
    batch_size: int
    architecture: ArchitecturePlan
    feature_map_voxels: int
    estimated_memory_gb: float


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float], preset: PlannerPreset) -> list[float]:
    """Start of the patch search: the volume of a 256^3 cube (2D: 2048^2) shaped like 1/spacing, clipped to the
    median shape (a patch larger than the typical case only adds padding).

    A median of an even number of cases can be fractional; it is kept as is (the topology rounds up when it
    pads to the pooling divisor) so the plans match nnU-Net's exactly."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    dim = len(spacing)
    edge = preset.initial_patch_edge_3d if dim == 3 else preset.initial_patch_edge_2d
    scaled = inv * (edge ** dim / np.prod(inv)) ** (1.0 / dim)
    return [float(min(round(float(s)), m)) for s, m in zip(scaled, median_shape)]


def architecture_for(topology: Topology, preset: PlannerPreset) -> ArchitecturePlan:
    """The U-Net of ``preset``'s kind with ``topology``'s stages; features double per stage up to the cap."""
    n = topology.n_stages
    cap = preset.max_features_3d if len(topology.patch_size) == 3 else preset.max_features_2d
    return ArchitecturePlan(
        network=preset.network,
        features_per_stage=tuple(min(cap, preset.base_features * 2 ** i) for i in range(n)),
        kernel_sizes=topology.kernel_sizes,
        strides=topology.strides,
        blocks_per_stage_encoder=tuple(preset.blocks_per_stage_encoder[:n]),
        blocks_per_stage_decoder=tuple(preset.blocks_per_stage_decoder[:n - 1]),
    )


def fit_configuration(spacing: Sequence[float], median_shape: Sequence[float], dataset_voxels: float,
                      num_classes: int, preset: PlannerPreset, memory_gb: float) -> ConfigurationChoice:
    """Largest patch (then batch) whose estimated training memory fits ``memory_gb``.

    The patch starts from :func:`initial_patch_size` and shrinks one axis at a time (the axis largest relative
    to the median shape) until the network's feature maps at the reference batch size fit. Spare memory then
    raises the batch size, capped so one batch holds at most ``preset.max_dataset_covered`` of the dataset's
    voxels, and never below ``preset.min_batch_size``.

    Parameters
    ----------
    spacing
        Target spacing per axis, mm (transposed order; 2D: the two in-plane axes).
    median_shape
        Median case shape at that spacing, voxels.
    dataset_voxels
        Approximate voxels in the whole training set at that spacing.
    num_classes
        Segmentation outputs including background.
    preset
        Planner numbers.
    memory_gb
        Accelerator memory target, GB.
    """
    dim = len(spacing)
    median_shape = [float(m) for m in median_shape[:dim]]
    min_edge = preset.featuremap_min_edge
    reference = (preset.reference_value_3d if dim == 3 else preset.reference_value_2d) * (
        memory_gb / preset.reference_memory_gb)
    ref_batch = preset.reference_batch_3d if dim == 3 else preset.reference_batch_2d

    topo = pool_and_conv_props(spacing, initial_patch_size(spacing, median_shape, preset), min_edge)
    cache: dict[tuple, int] = {}

    def estimate(t: Topology) -> int:
        key = (t.patch_size, t.strides)
        if key not in cache:
            cache[key] = feature_map_voxels(architecture_for(t, preset), t.patch_size, num_classes)
        return cache[key]

    # The reference batch may be larger than the minimum of 2; the factor 2 / ref_batch lets a patch that only
    # fits at batch 2 pass.
    while estimate(topo) / ref_batch * 2 > reference:
        axis = int(np.argsort([p / m for p, m in zip(topo.patch_size, median_shape)])[-1])
        # Shrinking by the current divisor could skip valid sizes (256 -> 192 misses 224), so take the divisor
        # of the shrunk patch instead.
        trial = list(topo.patch_size)
        trial[axis] -= topo.divisor[axis]
        step = pool_and_conv_props(spacing, trial, min_edge).divisor[axis]
        shrunk = list(topo.patch_size)
        shrunk[axis] -= step
        topo = pool_and_conv_props(spacing, shrunk, min_edge)

    est = estimate(topo)
    batch = round(reference / est * ref_batch)
    covered = round(dataset_voxels * preset.max_dataset_covered / float(np.prod(topo.patch_size, dtype=np.float64)))
    batch = max(min(batch, covered), preset.min_batch_size)
    memory = est * batch / ref_batch * preset.reference_memory_gb / (
        preset.reference_value_3d if dim == 3 else preset.reference_value_2d)
    return ConfigurationChoice(topo.patch_size, int(batch), architecture_for(topo, preset), est, float(memory))
