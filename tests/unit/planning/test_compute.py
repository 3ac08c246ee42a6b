"""The compute model counts exactly the multiply-accumulates of the networks autoseg builds."""

import math

import pytest

from autoseg.planning.compute import TRAINING_FACTOR, forward_macs, step_seconds, training_macs
from autoseg.schema.plans import ArchitecturePlan

S3 = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
S2 = [[1, 1], [2, 2], [2, 2], [2, 2]]
ANISO = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]


def arch(network, strides, dim, kernels=None):
    n = len(strides)
    cap = 320 if dim == 3 else 512
    enc = (2,) * n if network == "plain_unet" else (1, 3, 4, 6, 6, 6, 6, 6)[:n]
    dec = (2,) * (n - 1) if network == "plain_unet" else (1,) * (n - 1)
    return ArchitecturePlan(network, tuple(min(cap, 32 * 2 ** i) for i in range(n)),
                            tuple(kernels or ((3,) * dim,) * n), tuple(tuple(s) for s in strides), enc, dec)


def measured_macs(network_arch, patch, in_channels, num_classes, deep_supervision):
    """MACs of every convolution of the built network, from forward hooks on a real forward pass."""
    import torch

    from autoseg.nn.unet import build_network

    net = build_network(network_arch, in_channels, num_classes, deep_supervision=deep_supervision).train()
    total = [0]

    def count(module, inputs, output):
        k = math.prod(module.kernel_size)
        if isinstance(module, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            total[0] += inputs[0][0].numel() * module.out_channels * k  # every input voxel feeds k outputs
        else:
            total[0] += output[0].numel() * module.in_channels // module.groups * k

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros((1, in_channels, *patch)))
    return total[0]


@pytest.mark.parametrize("network, patch, strides, kernels, in_channels, num_classes, ds", [
    ("plain_unet", (40, 56, 40), S3, None, 1, 3, True),
    ("plain_unet", (40, 56, 40), S3, None, 1, 3, False),
    ("plain_unet", (56, 40), S2, None, 3, 2, True),
    ("plain_unet", (16, 64, 64), ANISO, [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], 4, 4, True),
    ("resenc_unet", (32, 32, 32), S3, None, 2, 3, True),
    ("resenc_unet", (64, 64), S2, None, 1, 5, False),
])
def test_forward_macs_equal_the_built_networks(network, patch, strides, kernels, in_channels, num_classes, ds):
    a = arch(network, strides, len(patch), kernels)
    assert forward_macs(a, patch, in_channels, num_classes, ds) == measured_macs(a, patch, in_channels,
                                                                                 num_classes, ds)


@pytest.mark.parametrize("patch, batch", [((40, 56, 40), 9), ((96, 128, 192), 2)])
def test_training_macs_scale_with_batch_and_patch(patch, batch):
    a = arch("plain_unet", S3, 3)
    one = training_macs(a, patch, 1, 1, 3)
    assert training_macs(a, patch, batch, 1, 3) == batch * one == TRAINING_FACTOR * batch * forward_macs(
        a, patch, 1, 3, deep_supervision=True)
    bigger = training_macs(a, tuple(2 * p for p in patch), 1, 1, 3)
    assert 7.9 * one < bigger < 8.1 * one  # 8x the voxels: 8x the work, up to the coarse stages' rounding


def test_step_seconds():
    assert step_seconds(6e9, 3e9) == 2.0
    with pytest.raises(ValueError):
        step_seconds(1.0, 0.0)
