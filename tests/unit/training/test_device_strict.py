"""The trainer with its model on a second device type and its reductions through an NCCL-like group, on a CPU.

A tensor the trainer leaves on the CPU (validation counts, a reduced time, a loss weight) fails these tests the
way it fails on a GPU: a device-mismatch error, or a collective refused by the group (see strict_device.py for
what the harness can and cannot show).
"""

import contextlib

import numpy as np
import pytest
import torch
from strict_device import ACCELERATOR, DeviceMismatch, OnDevice, SimulatedAccelerator, strict_group

from autoseg.nn import build_network, deep_supervision_scales
from autoseg.nn.speed import prepare_for_device
from autoseg.schema.plans import ArchitecturePlan
from autoseg.schema.training import TrainConfig
from autoseg.training import distributed as D
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss
from autoseg.training.trainer import Trainer, TrainState

ARCH = ArchitecturePlan("plain_unet", (4, 8, 16), ((3, 3),) * 3, ((1, 1), (2, 2), (2, 2)), (2, 2, 2), (2, 2))
PATCH = (16, 16)
REGIONS = ((1, 2), (2,))  # nested, BraTS-like: "whole" = labels 1 and 2, "core" = label 2


def batches(seed: int, as_tensors: bool):
    """Batches as the loader makes them: data, full-resolution and deep-supervision targets (label values, -1 =
    ignored); CPU tensors (as pinned loader batches arrive) or numpy arrays."""
    rng = np.random.default_rng(seed)
    steps = [tuple(int(round(1 / s)) for s in scale) for scale in deep_supervision_scales(ARCH)]
    while True:
        seg = rng.integers(0, 3, (2, 1, *PATCH)).astype(np.int8)
        seg[:, :, :2] = -1
        data = (seg.astype(np.float32) + rng.standard_normal((2, 1, *PATCH)).astype(np.float32))
        targets = [np.ascontiguousarray(seg[:, :, ::a, ::b]) for a, b in steps]
        if as_tensors:
            yield {"data": torch.from_numpy(data), "target": [torch.from_numpy(t) for t in targets]}
        else:
            yield {"data": data, "target": targets}


def make_trainer(device: torch.device, regions: bool, as_tensors: bool = False, all_reduce=lambda t: t,
                 epochs: int = 1) -> Trainer:
    torch.manual_seed(0)
    net = prepare_for_device(build_network(ARCH, 1, len(REGIONS) if regions else 3), device, channels_last=False)
    loss = DeepSupervisionLoss(RegionDiceBCELoss(REGIONS) if regions else DiceCELoss())
    cfg = TrainConfig("D", "2d", "0", "sha", epochs=epochs, iterations_per_epoch=2, validation_iterations=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    return Trainer(model=net, loss=loss, optimizer=opt, train_batches=batches(1, as_tensors),
                   val_batches=batches(2, as_tensors), config=cfg, state=TrainState(epochs, 2, 2), device=device,
                   precision="fp32", channels_last=False, num_classes=3, autocast=lambda d, p: contextlib.nullcontext(),
                   all_reduce=all_reduce, progress=False, regions=REGIONS if regions else None)


def test_the_harness_refuses_what_a_gpu_refuses():
    with SimulatedAccelerator():
        on = torch.ones(2, 3, dtype=torch.float64, device=ACCELERATOR)
        assert isinstance(on, OnDevice) and on.device == ACCELERATOR
        with pytest.raises(DeviceMismatch):
            torch.zeros(2, 3, dtype=torch.float64).add_(on)  # on the plain meta device this passes silently
        with pytest.raises(DeviceMismatch):
            on + torch.zeros(2, 3, dtype=torch.float64)
        assert float((on * torch.tensor(2.0)).sum()) == 12.0  # a 0-dim CPU tensor mixes, as on CUDA
        assert torch.equal(on.cpu(), torch.ones(2, 3, dtype=torch.float64))  # the explicit transfer
        with strict_group() as group:
            assert torch.equal(D.all_reduce_sum(on).cpu(), on.cpu())
            with pytest.raises(RuntimeError, match="strict process group"):
                D.all_reduce_sum(torch.ones(2))
    assert group.calls == [("allreduce", [(2, 3)], ["meta"])]


@pytest.mark.parametrize("as_tensors", [False, True], ids=["numpy", "tensors"])
@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_step_and_validation_with_the_model_on_a_second_device(regions, as_tensors):
    """A training step and a validation with the model on the simulated accelerator compute exactly what they
    compute on the CPU, and nothing is left on the CPU (region counts were: a device mismatch on a GPU)."""
    reference = make_trainer(torch.device("cpu"), regions, as_tensors).run_epoch()
    with SimulatedAccelerator():
        trainer = make_trainer(ACCELERATOR, regions, as_tensors)
        log = trainer.run_epoch()
        assert all(isinstance(p, OnDevice) for p in trainer.model.parameters())
    assert len(log.pseudo_dice) == (len(REGIONS) if regions else 2)
    assert (log.train_loss, log.val_loss, log.pseudo_dice) == (reference.train_loss, reference.val_loss,
                                                               reference.pseudo_dice)
    assert np.isfinite(log.train_loss) and all(0.0 <= d <= 1.0 for d in log.pseudo_dice)


@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_reductions_through_an_nccl_like_group(regions):
    """Every collective of a run (the epoch's time, the validation counts, the replica check) gets tensors on the
    model's device: an NCCL group, which has no CPU backend, refused the CPU ones at the end of the first epoch."""
    with SimulatedAccelerator(), strict_group() as group:
        trainer = make_trainer(ACCELERATOR, regions, all_reduce=D.all_reduce_sum)
        trainer.fit()
        assert trainer._mean_over_ranks(1.5) == 1.5  # the budget's step-time mean goes the same way
    scored = len(REGIONS) if regions else 2
    assert ("allreduce", [(3, scored)], ["meta"]) in group.calls  # validation counts
    assert ("allreduce", [(2,)], ["meta"]) in group.calls  # epoch seconds, mean over ranks
    assert {d for _, _, devices in group.calls for d in devices} == {"meta"}
    assert trainer.replica_sha256 is not None  # the end-of-training replica check ran through the group


def _with_unlabelled(trainer: Trainer, method: str, regions: bool, as_tensors: bool) -> Trainer:
    from autoseg.training.semi_supervised import SemiSupervision

    unlabelled = ({"data": b["data"]} for b in batches(3, as_tensors))
    trainer.semi = SemiSupervision.from_student(
        trainer.model, None, method=method, batches=unlabelled, seed=5, threshold=0.4, ema_decay=0.9, weight=1.0,
        rampup=0.0, scales=deep_supervision_scales(ARCH), class_order=(1, 2) if regions else None)
    return trainer


@pytest.mark.parametrize("method", ["copy_paste", "pseudo_label"])
@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_semi_supervised_steps_with_the_model_on_a_second_device(method, regions):
    """The teacher, its targets, the noise and the copy-paste boxes live on the model's device: the step computes
    on the simulated accelerator exactly what it computes on the CPU."""
    reference = _with_unlabelled(make_trainer(torch.device("cpu"), regions), method, regions, False).run_epoch()
    with SimulatedAccelerator():
        trainer = _with_unlabelled(make_trainer(ACCELERATOR, regions, True), method, regions, True)
        log = trainer.run_epoch()
        assert all(isinstance(p, OnDevice) for p in trainer.semi.teacher.parameters())
    assert np.isfinite(log.train_loss) and log.train_loss == reference.train_loss
