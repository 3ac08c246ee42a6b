"""Preprocessing test fixtures: plans built by hand (no planner involved, every field under the test's control)."""

from __future__ import annotations

import pytest

from autoseg.schema.plans import ArchitecturePlan, ChannelNormalization, ConfigurationPlan, Plans

_ARCH = ArchitecturePlan(network="plain_unet", features_per_stage=(8, 16), kernel_sizes=((3, 3, 3), (3, 3, 3)),
                         strides=((1, 1, 1), (2, 2, 2)), blocks_per_stage_encoder=(2, 2),
                         blocks_per_stage_decoder=(2,))


def config(name: str, spacing, norm: tuple[ChannelNormalization, ...], **changes) -> ConfigurationPlan:
    dims = len(spacing)
    return ConfigurationPlan(name=name, spacing=tuple(spacing), patch_size=(16,) * dims, batch_size=2,
                             median_shape=(16.0,) * dims, normalization=norm, architecture=_ARCH,
                             feature_map_voxels=1, estimated_memory_gb=1.0, batch_dice=False, **changes)


def make_plans(spacing, labels=("background", "a", "b"), channels=("MRI",), transpose=(0, 1, 2),
               norm: tuple[ChannelNormalization, ...] | None = None, extra: dict | None = None) -> Plans:
    """Plans with a ``3d_fullres`` at ``spacing`` and a ``2d`` at its in-plane part (transposed order)."""
    norm = norm or tuple(ChannelNormalization("zscore", use_nonzero_mask=True) for _ in channels)
    backward = tuple(transpose.index(i) for i in range(3))
    configs = {"2d": config("2d", spacing[1:], norm), "3d_fullres": config("3d_fullres", spacing, norm)}
    configs.update(extra or {})
    return Plans(dataset_name="T", preset="default", memory_target_gb=8.0, transpose_forward=tuple(transpose),
                 transpose_backward=backward, original_median_spacing=tuple(spacing),
                 original_median_shape=(16.0, 16.0, 16.0), channel_names=tuple(channels), labels=tuple(labels),
                 configurations=configs, fingerprint_sha256="f" * 64, autoseg_version="test")


@pytest.fixture
def plans_factory():
    """:func:`make_plans`, as a fixture."""
    return make_plans
