"""Segmentation losses: soft Dice, cross-entropy, their sum, and the deep-supervision wrapper.

Conventions shared by every loss here:

- ``logits``: ``(B, C, *spatial)`` raw network outputs (no softmax), any float dtype; losses are computed in fp32
  with autocast switched off, so bf16/fp16 training does not lose the loss's precision.
- ``target``: integer tensor ``(B, 1, *spatial)`` of class indices ``0 .. C-1``. Voxels with a negative target
  (e.g. -1 for "outside the image" / an ignore label) are excluded from both cross-entropy and Dice.
- The Dice loss is ``1 - mean soft Dice``, so a perfect prediction gives 0 (nnU-Net reports ``-mean Dice``,
  which is -1 for a perfect prediction; the gradients are identical, only the offset differs).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _fp32(logits: torch.Tensor) -> torch.Tensor:
    return logits.float()


def _valid_and_clean(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of voxels that count ``(B, 1, *spatial)`` and the target with ignored voxels set to class 0 (long)."""
    if target.ndim < 3 or target.shape[1] != 1:
        raise ValueError(f"target must be (B, 1, *spatial) class indices, got shape {tuple(target.shape)}")
    target = target.long()
    valid = target >= 0
    return valid, torch.where(valid, target, torch.zeros_like(target))


class SoftDiceLoss(nn.Module):
    """``1 - mean soft Dice`` over foreground classes (and over samples unless ``batch_dice``).

    Per class ``c``: ``dice = (2 * sum(p * g) + smooth) / max(sum(p) + sum(g) + smooth, 1e-8)`` with ``p`` the
    softmax probability and ``g`` the one-hot target, sums over the spatial axes (and the batch when
    ``batch_dice``), ignored voxels left out of every sum. A class absent from both target and prediction scores
    about 1; absent from the target but predicted, about 0.

    Parameters
    ----------
    batch_dice
        Pool the sums over the whole batch (one Dice per class) instead of one Dice per sample and class.
    do_bg
        Include the background class (channel 0).
    smooth
        Added to numerator and denominator.
    """

    def __init__(self, batch_dice: bool = False, do_bg: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice = batch_dice
        self.do_bg = do_bg
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            valid, clean = _valid_and_clean(target)
            probs = torch.softmax(_fp32(logits), dim=1)
            with torch.no_grad():
                onehot = torch.zeros_like(probs).scatter_(1, clean, 1.0)
                onehot = onehot * valid  # ignored voxels belong to no class
            if not self.do_bg:
                probs, onehot = probs[:, 1:], onehot[:, 1:]
            if probs.shape[1] == 0:
                raise ValueError("Dice without background needs at least 2 classes")
            axes = tuple(range(2, probs.ndim))
            probs = probs * valid
            intersect = (probs * onehot).sum(axes)
            sum_pred = probs.sum(axes)
            sum_gt = onehot.sum(axes)
            if self.batch_dice:
                intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
            dice = (2 * intersect + self.smooth) / (sum_pred + sum_gt + self.smooth).clamp_min(1e-8)
            return 1.0 - dice.mean()


class CrossEntropyLoss(nn.Module):
    """Mean cross-entropy over the voxels with a non-negative target; 0 when every voxel is ignored."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            valid, clean = _valid_and_clean(target)
            per_voxel = F.cross_entropy(_fp32(logits), clean[:, 0], reduction="none")
            valid = valid[:, 0]
            # sum / count rather than reduction="mean": stays finite (0) when a patch is entirely ignored
            return (per_voxel * valid).sum() / valid.sum().clamp_min(1)


class DiceCELoss(nn.Module):
    """``weight_ce * cross-entropy + weight_dice * soft Dice loss`` (nnU-Net's default, weights 1 and 1).

    Parameters
    ----------
    batch_dice, do_bg, smooth
        Passed to :class:`SoftDiceLoss`.
    weight_ce, weight_dice
        Term weights.
    """

    def __init__(self, batch_dice: bool = False, do_bg: bool = False, smooth: float = 1e-5,
                 weight_ce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.ce = CrossEntropyLoss()
        self.dice = SoftDiceLoss(batch_dice=batch_dice, do_bg=do_bg, smooth=smooth)
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight_ce * self.ce(logits, target) + self.weight_dice * self.dice(logits, target)


def region_targets(target: torch.Tensor, regions: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1, *spatial)`` label values -> the mask of voxels that count ``(B, 1, ...)`` and float region
    memberships ``(B, R, ...)`` (0 where ignored)."""
    if target.ndim < 3 or target.shape[1] != 1:
        raise ValueError(f"target must be (B, 1, *spatial) label values, got shape {tuple(target.shape)}")
    target = target.long()
    valid = target >= 0
    members = [torch.isin(target, torch.as_tensor(tuple(r), device=target.device)) for r in regions]
    return valid, (torch.cat(members, dim=1) & valid).float()


class RegionDiceBCELoss(nn.Module):
    """nnU-Net's loss for region-based training: binary cross-entropy with logits plus ``1 - mean soft Dice`` of the
    sigmoids, one independent channel per region (background is no channel, every region counts).

    ``target`` holds label values (as for :class:`DiceCELoss`); region ``r`` is the union of ``regions[r]``.
    Voxels with a negative target are left out of both terms; a patch entirely ignored contributes 0.

    Parameters
    ----------
    regions
        Label values of every region, in output-channel order.
    batch_dice, smooth
        As for :class:`SoftDiceLoss`.
    weight_bce, weight_dice
        Term weights (1 and 1, as nnU-Net).
    """

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool = False, smooth: float = 1e-5,
                 weight_bce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.regions = tuple(tuple(int(v) for v in r) for r in regions)
        self.batch_dice, self.smooth = batch_dice, smooth
        self.weight_bce, self.weight_dice = weight_bce, weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits = _fp32(logits)
            if logits.shape[1] != len(self.regions):
                raise ValueError(f"{logits.shape[1]} output channels for {len(self.regions)} regions")
            valid, t = region_targets(target, self.regions)
            mask = valid.float()
            bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none") * mask
            bce = bce.sum() / (mask.sum() * logits.shape[1]).clamp_min(1)
            probs = torch.sigmoid(logits) * mask
            axes = tuple(range(2, probs.ndim))
            intersect, sum_pred, sum_gt = (probs * t).sum(axes), probs.sum(axes), t.sum(axes)
            if self.batch_dice:
                intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
            dice = (2 * intersect + self.smooth) / (sum_pred + sum_gt + self.smooth).clamp_min(1e-8)
            return self.weight_bce * bce + self.weight_dice * (1.0 - dice.mean())


def deep_supervision_weights(n: int, coarsest: float = 0.0) -> tuple[float, ...]:
    """Weights ``1 / 2**i`` for outputs ``i = 0 .. n-1`` (full resolution first), the coarsest replaced by
    ``coarsest``, normalised to sum 1. A single output gets weight 1.

    Under DistributedDataParallel pass ``coarsest=1e-6`` (as nnU-Net does): with 0 the coarsest head gets no
    gradient, and DDP without ``find_unused_parameters`` fails on parameters that take no part in the loss.
    """
    if n < 1:
        raise ValueError(f"need at least one output, got {n}")
    if n == 1:
        return (1.0,)
    w = [1.0 / 2 ** i for i in range(n)]
    w[-1] = coarsest  # the coarsest map is too coarse to be a useful target
    total = sum(w)
    return tuple(x / total for x in w)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over the outputs of a deep-supervised network.

    ``forward(outputs, targets)``: ``outputs`` is the list from :class:`autoseg.nn.UNet` (full resolution first) and
    ``targets`` a list of ``(B, 1, *spatial)`` targets of matching sizes. A single logits tensor (the network in
    eval mode, or with deep supervision off) is scored against ``targets[0]`` (or a single target tensor) alone.

    Parameters
    ----------
    loss
        Loss applied to every ``(output, target)`` pair, e.g. :class:`DiceCELoss`.
    weights
        One weight per output; ``None`` uses :func:`deep_supervision_weights` for the number of outputs given.
        Outputs with weight 0 are not evaluated.
    coarsest_weight
        With ``weights=None``: the coarsest output's weight before normalisation (0; 1e-6 under DDP, see
        :func:`deep_supervision_weights`).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None, coarsest_weight: float = 0.0):
        super().__init__()
        if weights is not None and not any(w != 0 for w in weights):
            raise ValueError("at least one deep-supervision weight must be non-zero")
        self.loss = loss
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.coarsest_weight = coarsest_weight

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                targets: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, targets if isinstance(targets, torch.Tensor) else targets[0])
        if isinstance(targets, torch.Tensor) or len(targets) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs need as many targets")
        weights = self.weights or deep_supervision_weights(len(outputs), self.coarsest_weight)
        if len(weights) != len(outputs):
            raise ValueError(f"{len(weights)} weights for {len(outputs)} outputs")
        terms = [w * self.loss(o, t) for w, o, t in zip(weights, outputs, targets) if w != 0]
        return torch.stack(terms).sum()


def downsample_targets(target: torch.Tensor, scales: Sequence[Sequence[float]]) -> list[torch.Tensor]:
    """Nearest-neighbour copies of ``target`` ``(B, 1, *spatial)`` at each scale (e.g. from
    :func:`autoseg.nn.deep_supervision_scales`), integer dtype and ignore values preserved.

    Suited to scales that are exact reciprocals of integers (the U-Net's cumulative strides).
    """
    out = []
    for scale in scales:
        size = tuple(int(round(s * f)) for s, f in zip(target.shape[2:], scale))
        if size == tuple(target.shape[2:]):
            out.append(target)
        else:
            # strided slicing = nearest neighbour for integer factors, without a float round-trip of the labels
            steps = [max(1, int(round(1.0 / f))) for f in scale]
            sl = (slice(None), slice(None)) + tuple(slice(0, None, st) for st in steps)
            out.append(target[sl][(slice(None), slice(None)) + tuple(slice(0, n) for n in size)].contiguous())
    return out
