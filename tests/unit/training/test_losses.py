"""Losses on hand-made cases: Dice convention (perfect = 0), ignore label, batch Dice, deep supervision, bf16."""

import math

import pytest
import torch
import torch.nn.functional as F

from autoseg.training.losses import (CrossEntropyLoss, DeepSupervisionLoss, DiceCELoss, SoftDiceLoss,
                                     deep_supervision_weights, downsample_targets)


def onehot_logits(target, num_classes, scale=50.0):
    """Logits that put (almost) all probability on ``target`` (B, 1, *spatial)."""
    return F.one_hot(target[:, 0].clamp_min(0), num_classes).movedim(-1, 1).float() * scale


@pytest.fixture
def target():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g)


def test_perfect_prediction_gives_zero(target):
    logits = onehot_logits(target, 3)
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert SoftDiceLoss(batch_dice=True, do_bg=True)(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert DiceCELoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_by_hand():
    # 1 sample, 2 classes, 4 voxels; foreground target [1,1,0,0], predicted probabilities p for class 1
    target = torch.tensor([1, 1, 0, 0]).view(1, 1, 4, 1)
    p = torch.tensor([0.9, 0.5, 0.2, 0.0])
    logits = torch.stack([torch.zeros(4), torch.logit(p.clamp(1e-6, 1 - 1e-6))]).view(1, 2, 4, 1)
    dice = (2 * (0.9 + 0.5) + 1e-5) / ((0.9 + 0.5 + 0.2 + 1e-6) + 2 + 1e-5)
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(1 - dice, rel=1e-4)
    ce = -(math.log(0.9) + math.log(0.5) + math.log(0.8) + math.log(1 - 1e-6)) / 4
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(ce, rel=1e-4)
    assert DiceCELoss()(logits, target).item() == pytest.approx(ce + 1 - dice, rel=1e-4)


def test_batch_dice_pools_samples():
    # sample 0 has foreground and predicts it; sample 1 has none but predicts a little
    target = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]).view(2, 1, 4, 1)
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    logits = torch.stack([torch.zeros(2, 4), torch.logit(p.clamp(1e-7, 1 - 1e-7))], 1).view(2, 2, 4, 1)
    per_sample = SoftDiceLoss()(logits, target).item()
    pooled = SoftDiceLoss(batch_dice=True)(logits, target).item()
    assert per_sample == pytest.approx(1 - (1 + 0) / 2, abs=1e-4)  # the empty sample scores ~0
    assert pooled == pytest.approx(1 - 4 / 4.5, abs=1e-4)


def test_ignore_label_excluded_from_both_terms(target):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g)
    ignored = target.clone()
    ignored[:, :, :3] = -1
    # anything predicted in the ignored region must not matter
    scrambled = logits.clone()
    scrambled[:, :, :3] = torch.randn(2, 3, 3, 5, 4, generator=g) * 10
    for loss in (SoftDiceLoss(), SoftDiceLoss(batch_dice=True), CrossEntropyLoss(), DiceCELoss()):
        assert loss(logits, ignored).item() == pytest.approx(loss(scrambled, ignored).item(), rel=1e-6)
        assert loss(logits, ignored).item() == pytest.approx(loss(logits[:, :, 3:], target[:, :, 3:]).item(), rel=1e-5)
    # and no gradient flows from ignored voxels
    x = logits.clone().requires_grad_()
    DiceCELoss()(x, ignored).backward()
    assert torch.all(x.grad[:, :, :3] == 0) and torch.any(x.grad[:, :, 3:] != 0)


def test_fully_ignored_patch_is_finite():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 1, 4, 4), -1)
    value = DiceCELoss()(logits, target)
    assert torch.isfinite(value)
    value.backward()
    assert torch.all(torch.isfinite(logits.grad))


def test_deep_supervision_weights():
    w = deep_supervision_weights(4)
    assert w == pytest.approx((4 / 7, 2 / 7, 1 / 7, 0.0))
    assert sum(w) == pytest.approx(1.0)
    assert deep_supervision_weights(1) == (1.0,)
    assert 0 < deep_supervision_weights(3, coarsest=1e-6)[-1] < 1e-6  # for DDP: every head takes part
    with pytest.raises(ValueError):
        DeepSupervisionLoss(DiceCELoss(), weights=(0.0, 0.0))


def test_deep_supervision_loss_combines_scales(target):
    full = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(2))
    targets = downsample_targets(full, [(1, 1, 1), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)])
    assert [tuple(t.shape[2:]) for t in targets] == [(8, 8, 8), (4, 4, 4), (2, 2, 2)]
    assert torch.equal(targets[1], full[:, :, ::2, ::2, ::2]) and targets[1].dtype == full.dtype
    g = torch.Generator().manual_seed(3)
    outs = [torch.randn(2, 3, *t.shape[2:], generator=g) for t in targets]
    base = DiceCELoss()
    ds = DeepSupervisionLoss(base)
    expected = 4 / 6 * base(outs[0], targets[0]) + 2 / 6 * base(outs[1], targets[1])  # coarsest weight 0
    assert ds(outs, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # a single tensor (eval mode / no deep supervision) is scored at full resolution only
    assert ds(outs[0], targets).item() == pytest.approx(base(outs[0], targets[0]).item(), rel=1e-6)
    assert DeepSupervisionLoss(base, (1, 1, 1))(outs, targets).item() == pytest.approx(
        sum(base(o, t) for o, t in zip(outs, targets)).item(), rel=1e-6)


def test_loss_runs_in_fp32_under_bf16_autocast(target):
    logits = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(4))
    reference = DiceCELoss()(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = DiceCELoss()(logits.bfloat16(), target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)  # only the bf16 rounding of the logits


def test_target_shape_is_checked():
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        DiceCELoss()(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
