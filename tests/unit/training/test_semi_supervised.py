"""The semi-supervised step on tiny tensors: teacher targets, ramp, copy-paste boxes and mixing, the EMA teacher,
and a Trainer whose steps take unlabelled batches (learns, resumes bit-exact)."""

import contextlib
import itertools
import json

import numpy as np
import pytest
import torch

from autoseg.nn.checkpoint import load_checkpoint
from autoseg.schema.dataset import IGNORE
from autoseg.schema.training import TrainConfig
from autoseg.training.callbacks import CheckpointCallback
from autoseg.training.semi_supervised import (SemiSupervision, copy_paste_boxes, rampup_weight, resolve_method,
                                              teacher_targets)
from autoseg.training.trainer import Callback, Trainer, TrainState
from autoseg.workspace import FoldPaths
from test_trainer import batches as labelled_batches  # the trainer tests' seeded batch stream

NO_AUTOCAST = contextlib.nullcontext


@pytest.mark.parametrize("requested, has, usable, iterations, on_cpu, expected", [
    ("auto", True, True, 250_000, False, "pseudo_label"),  # nnU-Net's 1000 x 250 on a GPU
    ("auto", True, True, None, False, "pseudo_label"),  # unknown length off a CPU: long
    ("auto", True, True, 1_200, True, "off"),  # a CPU budget's short run
    ("auto", True, True, None, True, "off"),
    ("auto", False, True, 250_000, False, "off"), ("auto", True, False, 250_000, False, "off"),
    ("off", True, True, 250_000, False, "off"), ("pseudo_label", True, True, 500, True, "pseudo_label"),
    ("copy_paste", True, True, 500, True, "copy_paste"),
])
def test_resolve_method(requested, has, usable, iterations, on_cpu, expected):
    assert resolve_method(requested, has, usable, iterations, on_cpu) == expected


@pytest.mark.parametrize("progress, rampup, expected", [
    (0.0, 0.3, 0.5 * np.exp(-5)), (0.15, 0.3, 0.5 * np.exp(-1.25)), (0.3, 0.3, 0.5), (0.9, 0.3, 0.5),
    (0.0, 0.0, 0.5),
])
def test_rampup_weight(progress, rampup, expected):
    assert rampup_weight(0.5, progress, rampup) == pytest.approx(expected)


def test_teacher_targets_of_labels_ignore_the_unsure_voxels():
    probs = torch.tensor([[0.9, 0.5, 0.05], [0.05, 0.4, 0.05], [0.05, 0.1, 0.9]]).reshape(1, 3, 3, 1)
    t = teacher_targets(probs, 0.8)
    assert t.shape == (1, 1, 3, 1) and t.flatten().tolist() == [0, IGNORE, 2]


def test_teacher_targets_of_regions_follow_the_class_order():
    # two nested regions; voxel 0 in both (label 2 wins), voxel 1 in the outer only, voxel 2 unsure, voxel 3 none
    probs = torch.tensor([[0.95, 0.9, 0.6, 0.05], [0.9, 0.1, 0.02, 0.1]]).reshape(1, 2, 4, 1)
    t = teacher_targets(probs, 0.8, class_order=(1, 2))
    assert t.flatten().tolist() == [2, 1, IGNORE, 0]


def test_copy_paste_boxes_are_inside_the_patch_and_seeded():
    a = copy_paste_boxes((9, 12), 3, np.random.default_rng(1))
    b = copy_paste_boxes((9, 12), 3, np.random.default_rng(1))
    assert a == b
    for box in a:
        assert [s.stop - s.start for s in box] == [6, 8]
        assert all(0 <= s.start and s.stop <= n for s, n in zip(box, (9, 12)))


def _semi(method, model, **kw):
    return SemiSupervision.from_student(model, None, method=method, batches=iter(()), seed=3, threshold=0.0,
                                        ema_decay=0.9, weight=1.0, rampup=0.0, **kw)


def test_copy_paste_gives_every_labelled_voxel_its_label_exactly_once():
    model = torch.nn.Conv2d(1, 3, 1)
    semi = _semi("copy_paste", model)
    data = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    unlabelled = -torch.ones(1, 1, 8, 8)
    batch, terms = semi.step(data, [target], unlabelled, index=5, autocast=NO_AUTOCAST)
    assert batch.shape == (4, 1, 8, 8)
    real, taught = terms[0].targets[0], terms[1].targets[0]
    assert not terms[0].unlabelled and terms[1].unlabelled
    # each voxel of the mixed patches is either the labelled patch's (its label) or the unlabelled one's (teacher)
    from_labelled = batch >= 0
    assert torch.equal(real >= 0, from_labelled) and torch.equal(taught >= 0, ~from_labelled)
    # the two mixed patches of a pair hold each labelled voxel once, with its label
    for i in range(2):
        inner, outer = real[i], real[2 + i]
        assert torch.equal(torch.where(inner >= 0, inner, outer), target[i])
        assert not ((inner >= 0) & (outer >= 0)).any()
    again, _ = semi.step(data, [target], unlabelled, index=5, autocast=NO_AUTOCAST)
    assert torch.equal(batch, again)  # the step's index decides the boxes


def test_pseudo_label_appends_noisy_unlabelled_patches_with_downsampled_targets():
    model = torch.nn.Conv2d(1, 2, 1)
    semi = _semi("pseudo_label", model, scales=((1.0, 1.0), (0.5, 0.5)))
    data, unlabelled = torch.zeros(2, 1, 8, 8), torch.ones(3, 1, 8, 8)
    targets = [torch.zeros(2, 1, 8, 8, dtype=torch.int8), torch.zeros(2, 1, 4, 4, dtype=torch.int8)]
    batch, terms = semi.step(data, targets, unlabelled, index=0, autocast=NO_AUTOCAST)
    assert batch.shape == (5, 1, 8, 8)
    noise = batch[2:] - 1
    assert 0 < noise.abs().max() <= 0.2 + 1e-6
    assert terms[0].rows == slice(0, 2) and terms[1].rows == slice(2, 5)
    assert [tuple(t.shape) for t in terms[1].targets] == [(3, 1, 8, 8), (3, 1, 4, 4)]


def test_the_teacher_is_a_moving_average_of_the_student():
    student = torch.nn.Conv2d(1, 1, 1)
    semi = _semi("pseudo_label", student)
    before = semi.teacher.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    semi.update_teacher(student)
    assert torch.allclose(semi.teacher.weight, 0.9 * before + 0.1 * student.weight)
    assert not any(p.requires_grad for p in semi.teacher.parameters())


def ce_dice(output, targets):
    from autoseg.training.losses import DiceCELoss

    return DiceCELoss()(output, targets[0])


class _KilledAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, log):
        if trainer.state.epoch == self.epoch:
            raise KeyboardInterrupt


def make_trainer(folder, method="copy_paste", state=None, teacher=None, callbacks=()):
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=gen) * 0.1)
        model.bias.zero_()  # nothing from torch's global generator: every run starts alike
    cfg = TrainConfig("D", "2d", "0", "sha", epochs=3, iterations_per_epoch=4, validation_iterations=1,
                      semi_supervised=method)
    st = state or TrainState(cfg.epochs, cfg.iterations_per_epoch, cfg.validation_iterations)
    unlabelled = ({"data": b["data"]} for b in labelled_batches(7))
    semi = None if method == "off" else SemiSupervision.from_student(
        model, teacher, method=method, batches=itertools.islice(unlabelled, st.batches_drawn, None), seed=1,
        threshold=0.6, ema_decay=0.9, weight=1.0, rampup=0.0)
    return Trainer(model=model, loss=ce_dice, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                   train_batches=itertools.islice(labelled_batches(1), st.batches_drawn, None),
                   val_batches=itertools.islice(labelled_batches(2), st.val_batches_drawn, None), config=cfg,
                   state=st, device=torch.device("cpu"), precision="fp32", channels_last=False, num_classes=2,
                   autocast=lambda d, p: contextlib.nullcontext(), semi=semi, progress=False,
                   callbacks=[CheckpointCallback(FoldPaths(folder), 1), *callbacks])


@pytest.mark.parametrize("method", ["copy_paste", "pseudo_label"])
def test_a_trainer_with_unlabelled_batches_learns_and_resumes_bit_exact(tmp_path, method):
    full = make_trainer(tmp_path / "full", method)
    full.fit()
    assert full.history[-1].pseudo_dice[0] > 0.8
    off = make_trainer(tmp_path / "off", "off")
    off.fit()
    assert not torch.equal(off.model.weight, full.model.weight)

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "killed", method, callbacks=[_KilledAfter(1)]).fit()
    ckpt = load_checkpoint(tmp_path / "killed" / "checkpoint_latest.pt")
    resumed = make_trainer(tmp_path / "killed", method, state=TrainState(**json.loads(ckpt["state"])),
                           teacher=ckpt["teacher"])
    resumed.model.load_state_dict(ckpt["model"])
    resumed.optimizer.load_state_dict(ckpt["optimizer"])
    resumed.fit()
    assert torch.equal(resumed.model.weight, full.model.weight)
    assert torch.equal(resumed.semi.teacher.weight, full.semi.teacher.weight)
