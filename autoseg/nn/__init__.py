"""U-Net family built from an ArchitecturePlan (plain conv, residual encoder), deep supervision, CPU speed helpers."""

from autoseg.nn.unet import UNet, build_network, count_feature_map_voxels, deep_supervision_scales

__all__ = ["UNet", "build_network", "count_feature_map_voxels", "deep_supervision_scales"]
