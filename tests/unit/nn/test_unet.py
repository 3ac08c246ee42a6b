"""U-Net family: output shapes, deep supervision, real plan topologies, init, and the planner's memory estimate."""

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from autoseg.nn import build_network, count_feature_map_voxels, deep_supervision_scales
from autoseg.nn.blocks import ResidualBlock
from autoseg.planning.memory import feature_map_voxels
from autoseg.schema.base import load_json
from autoseg.schema.plans import ArchitecturePlan, Plans

EXAMPLES = Path(__file__).resolve().parents[3] / "plans" / "examples"
NETWORKS = ("plain_unet", "resenc_unet")


def arch(network, dims, n_stages=3, strides=None, kernels=None, feats=None, enc=None, dec=None):
    strides = strides or [(1,) * dims] + [(2,) * dims] * (n_stages - 1)
    return ArchitecturePlan(
        network=network,
        features_per_stage=tuple(feats or [4 * 2 ** s for s in range(n_stages)]),
        kernel_sizes=tuple(tuple(k) for k in (kernels or [(3,) * dims] * n_stages)),
        strides=tuple(tuple(s) for s in strides),
        blocks_per_stage_encoder=tuple(enc or [2] * n_stages),
        blocks_per_stage_decoder=tuple(dec or [2] * (n_stages - 1)))


def small(a: ArchitecturePlan, cap=16) -> ArchitecturePlan:
    return dataclasses.replace(a, features_per_stage=tuple(min(4 * 2 ** s, cap) for s in range(a.n_stages)))


def example(name):
    return load_json(Plans, EXAMPLES / f"{name}.plans.json")


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("dims,patch", [(2, (16, 24)), (3, (8, 16, 12))])
def test_shapes_with_and_without_deep_supervision(network, dims, patch):
    torch.manual_seed(0)
    a = arch(network, dims, n_stages=3)
    net = build_network(a, in_channels=2, num_classes=3)
    x = torch.randn(2, 2, *patch)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == a.n_stages - 1
    for out, scale in zip(outs, deep_supervision_scales(a)):
        assert out.shape == (2, 3, *(int(p * s) for p, s in zip(patch, scale)))
    assert net.eval()(x).shape == (2, 3, *patch)  # eval: a single tensor
    net.train().deep_supervision = False  # switch without rebuilding
    assert net(x).shape == (2, 3, *patch)
    no_ds = build_network(a, 2, 3, deep_supervision=False).train()
    assert no_ds(x).shape == (2, 3, *patch)


@pytest.mark.parametrize("network", NETWORKS)
def test_anisotropic_real_plan(network):
    cfg = example("anisotropic-ct").configurations["3d_fullres"]
    a = dataclasses.replace(small(cfg.architecture), network=network)
    assert a.strides[1] == (1, 2, 2) and a.kernel_sizes[0] == (1, 3, 3)
    net = build_network(a, len(cfg.normalization), 3).train()
    patch = (4, 32, 32)  # smaller than the plan's patch, same divisibility (total stride 4 x 16 x 16)
    outs = net(torch.randn(1, 1, *patch))
    assert [tuple(o.shape[2:]) for o in outs] == [(4, 32, 32), (4, 16, 16), (4, 8, 8), (2, 4, 4)]


def test_odd_topologies():
    # different strides per axis, a 1-kernel axis, 3 blocks in one stage, 1 conv in a decoder stage
    a = arch("resenc_unet", 3, n_stages=4, strides=[(1, 1, 1), (1, 2, 2), (2, 2, 1), (2, 1, 2)],
             kernels=[(1, 3, 3), (3, 3, 3), (3, 3, 1), (3, 3, 3)], enc=[1, 3, 2, 1], dec=[1, 2, 1])
    net = build_network(a, 1, 2).eval()
    assert net.total_stride == (4, 4, 4)
    assert net(torch.randn(1, 1, 8, 12, 8)).shape == (1, 2, 8, 12, 8)


def test_bad_input_size_and_plan_are_clear_errors():
    net = build_network(arch("plain_unet", 2), 1, 2)
    with pytest.raises(ValueError, match="multiple of the network's total stride"):
        net(torch.randn(1, 1, 10, 16))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="unknown network"):
        build_network(dataclasses.replace(arch("plain_unet", 2), network="vnet"), 1, 2)
    with pytest.raises(ValueError, match="blocks_per_stage_decoder"):
        build_network(dataclasses.replace(arch("plain_unet", 2), blocks_per_stage_decoder=(2,)), 1, 2)


def test_he_init_zero_bias_and_residual_zero_init():
    torch.manual_seed(0)
    net = build_network(arch("resenc_unet", 3, feats=[16, 32, 64]), 1, 2)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert all(m.bias is None or torch.all(m.bias == 0) for m in convs)
    big = [m for m in convs if m.weight[0].numel() >= 16 * 27]
    for m in big:  # kaiming normal, a=0.01, fan_in mode: std = sqrt(2 / (1 + a^2) / fan_in)
        fan_in = m.weight[0].numel() if isinstance(m, nn.Conv3d) else m.weight[:, 0].numel()
        expected = (2.0 / (1 + 1e-4) / fan_in) ** 0.5
        assert abs(m.weight.std().item() / expected - 1) < 0.1
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlock)]
    assert blocks and all(torch.all(b.conv2.norm.weight == 0) for b in blocks)


@pytest.mark.parametrize("network", NETWORKS)
def test_gradients_reach_every_parameter(network):
    torch.manual_seed(0)
    net = build_network(arch(network, 2), 1, 3).train()
    outs = net(torch.randn(2, 1, 16, 16))
    sum(o.square().mean() for o in outs).backward()
    # zero-initialised residual norms pass no gradient to their conv the first step, but their own
    # scale and shift get one; everything else gets a non-zero gradient
    def has_grad(p):
        return p.grad is not None and bool(torch.any(p.grad != 0))

    # conv biases feed an instance norm (which removes them) and zero-initialised residual branches pass no
    # gradient inwards on the first step; every other weight must get one
    weights = {n: p for n, p in net.named_parameters() if n.endswith("weight")}
    in_branch = [n for n in weights if ".conv1." in n or ".conv2.conv." in n]
    assert all(has_grad(p) for n, p in weights.items() if n not in in_branch), \
        [n for n, p in weights.items() if n not in in_branch and not has_grad(p)]
    if network == "plain_unet":
        assert not in_branch
    else:
        assert all(has_grad(p) for n, p in weights.items() if n.endswith("conv2.norm.weight"))


# -- the planner's analytic estimate tracks the real network --------------------------------------------------
TOPOLOGIES = [
    ("2d", arch("plain_unet", 2, n_stages=4), (32, 48)),
    ("3d", arch("plain_unet", 3, n_stages=4), (16, 32, 24)),
    ("3d-aniso", arch("plain_unet", 3, n_stages=4, strides=[(1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2)],
                      kernels=[(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]), (8, 32, 32)),
    ("3d-blocks", arch("plain_unet", 3, n_stages=3, enc=[1, 3, 2], dec=[3, 1]), (12, 8, 16)),
]


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("name,a,patch", TOPOLOGIES, ids=[t[0] for t in TOPOLOGIES])
def test_memory_estimate_matches_network(network, name, a, patch):
    a = dataclasses.replace(a, network=network)
    net = build_network(a, 2, 4)
    for ds in (False, True):
        assert count_feature_map_voxels(net, patch, deep_supervision=ds) == feature_map_voxels(a, patch, 4, ds)
    assert net.training and net.deep_supervision  # counting leaves the module as it was


@pytest.mark.parametrize("plans,config", [("hippocampus", "3d_fullres"), ("hippocampus", "2d"),
                                          ("anisotropic-ct", "3d_fullres"), ("brats-like", "3d_fullres")])
@pytest.mark.parametrize("network", NETWORKS)
def test_memory_estimate_matches_example_plans(plans, config, network):
    p = example(plans)
    cfg = p.configurations[config]
    a = dataclasses.replace(small(cfg.architecture, cap=8), network=network)
    net = build_network(a, len(cfg.normalization), len(p.labels))
    assert count_feature_map_voxels(net, cfg.patch_size) == feature_map_voxels(a, cfg.patch_size, len(p.labels))


@pytest.mark.parametrize("network", ["plain_unet", "resenc_unet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_norms_are_instance_norms_in_function_and_parameters(network, dims):
    """The layers' per-channel group norm is instance norm: its instance-norm twin (what ONNX export traces)
    gives the same outputs from the same parameter names, and the original network is left as it was."""
    from autoseg.nn.blocks import with_instance_norms

    torch.manual_seed(0)
    net = build_network(arch(network, dims), 2, 3).eval()
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    twin = with_instance_norms(net)
    assert not any(isinstance(m, nn.GroupNorm) for m in twin.modules())
    assert sum(isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d)) for m in twin.modules()) == \
        sum(isinstance(m, nn.GroupNorm) for m in net.modules()) > 0
    assert twin.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(2, 2, *(16,) * dims) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), rtol=1e-5, atol=1e-5)
