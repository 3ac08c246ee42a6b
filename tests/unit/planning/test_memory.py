"""The analytic memory estimate against figures computed by nnU-Net's reference networks.

Expected values were computed with dynamic_network_architectures 0.4.4 (``compute_conv_feature_map_size`` of
``PlainConvUNet`` / ``ResidualEncoderUNet`` built as nnU-Net's planners build them, without deep supervision).
"""

import pytest

from autoseg.planning.memory import feature_map_voxels
from autoseg.schema.plans import ArchitecturePlan

S3 = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]


def arch(network, strides, dim):
    n = len(strides)
    cap = 320 if dim == 3 else 512
    enc = (2,) * n if network == "plain_unet" else (1, 3, 4, 6, 6, 6, 6, 6)[:n]
    dec = (2,) * (n - 1) if network == "plain_unet" else (1,) * (n - 1)
    return ArchitecturePlan(network, tuple(min(cap, 32 * 2 ** i) for i in range(n)), ((3,) * dim,) * n,
                            tuple(tuple(s) for s in strides), enc, dec)


@pytest.mark.parametrize("network, patch, strides, num_classes, expected", [
    ("plain_unet", (40, 56, 40), S3, 3, 19174400),
    ("plain_unet", (56, 40), [[1, 1], [2, 2], [2, 2], [2, 2]], 3, 651840),
    ("plain_unet", (96, 160, 160), S3 + [[2, 2, 2], [1, 2, 2]], 5, 535584000),
    ("plain_unet", (20, 192, 160), [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]], 4, 166329600),
    ("resenc_unet", (40, 56, 40), S3, 3, 23609600),
    ("resenc_unet", (128, 128, 128), S3 + [[2, 2, 2], [2, 2, 2]], 3, 557420544),
    ("resenc_unet", (256, 256), [[1, 1]] + [[2, 2]] * 6, 5, 32514048),
])
def test_feature_map_voxels_matches_reference_networks(network, patch, strides, num_classes, expected):
    assert feature_map_voxels(arch(network, strides, len(patch)), patch, num_classes) == expected


def test_deep_supervision_adds_the_auxiliary_heads():
    a = arch("plain_unet", S3, 3)
    extra = feature_map_voxels(a, (40, 56, 40), 3, deep_supervision=True) - feature_map_voxels(a, (40, 56, 40), 3)
    assert extra == 3 * (20 * 28 * 20 + 10 * 14 * 10)
