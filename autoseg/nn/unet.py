"""The U-Net family built from an :class:`~autoseg.schema.plans.ArchitecturePlan`: plain and residual-encoder U-Nets.

Tensors are ``(B, C, *spatial)`` with ``spatial`` = ``(y, x)`` (2D) or ``(z, y, x)`` (3D), in the planned axis order.
Every spatial input size must be a multiple of the network's total stride on that axis (the plans pad patches to
that), otherwise the decoder's upsampled maps would not line up with the skips.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from autoseg.nn.blocks import (ConvNormAct, StackedConvs, StackedResidualBlocks, conv_op, init_weights,
                               transposed_conv_op, zero_last_norm_of_residual_blocks)
from autoseg.planning.topology import deep_supervision_scales as topology_scales
from autoseg.schema.plans import ArchitecturePlan

NETWORKS = ("plain_unet", "resenc_unet")


class UNet(nn.Module):
    """Encoder-decoder with skip connections, transposed-convolution upsampling and optional deep supervision.

    Build it with :func:`build_network`. ``forward(x)`` takes ``(B, in_channels, *spatial)`` and returns logits
    ``(B, num_classes, *spatial)``. With ``deep_supervision`` on and the module in training mode it returns a list
    instead: one logit map per decoder stage, full resolution first, then each coarser decoder stage
    (``n_stages - 1`` entries; entry ``i`` has the spatial size of encoder stage ``i``).

    Attributes
    ----------
    deep_supervision
        Switch for the list output; may be flipped at any time (e.g. off for inference) without rebuilding.
    dims, in_channels, num_classes
        What the network was built for.
    total_stride
        Product of all strides per axis: what each input axis must be divisible by.
    """

    def __init__(self, arch: ArchitecturePlan, in_channels: int, num_classes: int, deep_supervision: bool = True):
        super().__init__()
        _validate(arch, in_channels, num_classes)
        dims = len(arch.strides[0])
        n = arch.n_stages
        feats = arch.features_per_stage
        self.dims = dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.total_stride = tuple(math.prod(s[a] for s in arch.strides) for a in range(dims))

        if arch.network == "plain_unet":
            self.stem: nn.Module = nn.Identity()
            stage_in = in_channels
            stages = []
            for s in range(n):
                stages.append(StackedConvs(arch.blocks_per_stage_encoder[s], dims, stage_in, feats[s],
                                           arch.kernel_sizes[s], arch.strides[s]))
                stage_in = feats[s]
        else:
            # the stem lifts the input to the first stage's width at full resolution, so residual blocks start
            # from a learned representation rather than raw intensities
            self.stem = ConvNormAct(dims, in_channels, feats[0], arch.kernel_sizes[0], (1,) * dims)
            stage_in = feats[0]
            stages = []
            for s in range(n):
                stages.append(StackedResidualBlocks(arch.blocks_per_stage_encoder[s], dims, stage_in, feats[s],
                                                    arch.kernel_sizes[s], arch.strides[s]))
                stage_in = feats[s]
        self.encoder = nn.ModuleList(stages)

        # decoder stage d goes from level n-1-d to level n-2-d (coarsest first)
        up, convs, heads = [], [], []
        for d in range(n - 1):
            level = n - 2 - d
            stride = arch.strides[level + 1]
            up.append(transposed_conv_op(dims)(feats[level + 1], feats[level], tuple(stride), tuple(stride),
                                               bias=True))
            convs.append(StackedConvs(arch.blocks_per_stage_decoder[d], dims, 2 * feats[level], feats[level],
                                      arch.kernel_sizes[level], (1,) * dims))
            heads.append(conv_op(dims)(feats[level], num_classes, (1,) * dims, bias=True))
        self.upsample = nn.ModuleList(up)
        self.decoder = nn.ModuleList(convs)
        self.seg_heads = nn.ModuleList(heads)

        self.apply(init_weights)
        if arch.network == "resenc_unet":
            self.apply(zero_last_norm_of_residual_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits for ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the list form."""
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, {self.dims} spatial axes), got {tuple(x.shape)}")
        if any(s % t for s, t in zip(x.shape[2:], self.total_stride)):
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be a multiple of the network's total "
                             f"stride {self.total_stride} on every axis")
        skips = []
        x = self.stem(x)
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        with_aux = self.deep_supervision and self.training
        outputs = []
        x = skips[-1]
        last = len(self.decoder) - 1
        for d, (up, convs, head) in enumerate(zip(self.upsample, self.decoder, self.seg_heads)):
            x = convs(torch.cat((up(x), skips[-2 - d]), dim=1))
            if with_aux or d == last:
                outputs.append(head(x))
        if not with_aux:
            return outputs[-1]
        return outputs[::-1]


def build_network(arch: ArchitecturePlan, in_channels: int, num_classes: int,
                  deep_supervision: bool = True) -> UNet:
    """Build the U-Net an architecture plan describes, with He-initialised weights.

    Parameters
    ----------
    arch
        ``network`` is ``"plain_unet"`` or ``"resenc_unet"``; 2D or 3D follows from the length of the strides.
    in_channels
        Input image channels (plus one-hot previous-stage channels for a cascade).
    num_classes
        Output channels, background included.
    deep_supervision
        Return one logit map per decoder stage in training mode (see :class:`UNet`).

    Notes
    -----
    Weights are drawn from torch's global generator; call ``torch.manual_seed`` (or build inside
    ``torch.random.fork_rng``) first for reproducible initialisation.
    """
    return UNet(arch, in_channels, num_classes, deep_supervision)


def deep_supervision_scales(arch: ArchitecturePlan) -> tuple[tuple[float, ...], ...]:
    """Per output of :class:`UNet` (full resolution first): its size relative to the input, per axis."""
    return topology_scales(arch.strides)


def count_feature_map_voxels(net: nn.Module, patch_size: Sequence[int], deep_supervision: bool = False) -> int:
    """Measured counterpart of :func:`autoseg.planning.memory.feature_map_voxels`.

    Runs one patch (batch 1, zeros, no gradients) through ``net`` and sums the number of output elements of every
    convolution and transposed convolution (segmentation heads included) that actually runs.

    Parameters
    ----------
    net
        A network from :func:`build_network` (anything whose layers are ``nn.Conv*`` works).
    patch_size
        Spatial input size, voxels per axis.
    deep_supervision
        Count the auxiliary segmentation heads as well (runs the network in training mode with the list output on).

    Returns
    -------
    int
        Summed elements (channels x voxels) of all convolution outputs.
    """
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))]
    if not convs:
        raise ValueError("network has no convolution")
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        total += output[0].numel()  # one sample of the batch

    handles = [m.register_forward_hook(hook) for m in convs]
    was_training = net.training
    had_ds = getattr(net, "deep_supervision", None)
    try:
        net.train(deep_supervision)  # instance norm has no running statistics, so the mode changes nothing else
        if had_ds is not None:
            net.deep_supervision = deep_supervision
        param = next(net.parameters())
        x = torch.zeros((1, convs[0].in_channels, *patch_size), dtype=param.dtype, device=param.device)
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
        if had_ds is not None:
            net.deep_supervision = had_ds
    return int(total)


def _validate(arch: ArchitecturePlan, in_channels: int, num_classes: int) -> None:
    if arch.network not in NETWORKS:
        raise ValueError(f"unknown network {arch.network!r}; expected one of {NETWORKS}")
    n = arch.n_stages
    if n < 2:
        raise ValueError(f"a U-Net needs at least 2 stages, got {n}")
    lengths = {"kernel_sizes": len(arch.kernel_sizes), "strides": len(arch.strides),
               "blocks_per_stage_encoder": len(arch.blocks_per_stage_encoder)}
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad or len(arch.blocks_per_stage_decoder) != n - 1:
        raise ValueError(f"architecture lists disagree with {n} stages: {lengths}, "
                         f"blocks_per_stage_decoder {len(arch.blocks_per_stage_decoder)} (needs {n - 1})")
    dims = len(arch.strides[0])
    if dims not in (2, 3) or any(len(s) != dims for s in (*arch.strides, *arch.kernel_sizes)):
        raise ValueError(f"strides and kernel sizes must all have 2 or 3 entries, got {arch.strides}, "
                         f"{arch.kernel_sizes}")
    if any(k % 2 == 0 for ks in arch.kernel_sizes for k in ks):
        raise ValueError(f"kernel sizes must be odd for 'same' padding, got {arch.kernel_sizes}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
