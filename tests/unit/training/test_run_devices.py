"""Where and with how many loader workers a training process runs: torchrun's GPUs, the cores, pinned memory."""

import pytest
import torch

import autoseg.training.run as R
from autoseg.schema.plans import ArchitecturePlan, ChannelNormalization, ConfigurationPlan
from autoseg.schema.training import TrainConfig
from autoseg.training.distributed import DistributedSpec
from autoseg.training.trainer import TrainState

RANK2 = DistributedSpec(rank=6, world_size=8, local_rank=2, master_addr="node0", master_port=29500,
                        local_world_size=4)


@pytest.mark.parametrize("device, distributed, cuda, expected", [
    ("auto", RANK2, True, "cuda:2"),   # torchrun: each process its local rank's GPU
    ("cuda", RANK2, True, "cuda:2"),   # a bare cuda too (it used to put every process on cuda:0)
    ("cuda:0", RANK2, True, "cuda:0"),  # an explicit index is the user's
    ("auto", RANK2, False, "cpu"),
    ("cpu", RANK2, True, "cpu"),
    ("auto", None, True, "auto"),       # one process: resolve_device decides
    ("cuda", None, True, "cuda"),
])
def test_process_device(device, distributed, cuda, expected):
    assert R.process_device(device, distributed, cuda) == expected


@pytest.mark.parametrize("cpus, processes, expected", [(16, 1, 15), (16, 4, 3), (2, 1, 1), (1, 1, 1), (8, 8, 1),
                                                       (64, 1, 63)])
def test_loader_workers_follow_the_usable_cpus(monkeypatch, cpus, processes, expected):
    monkeypatch.setattr(R, "usable_cpus", lambda: cpus)
    assert R.default_loader_workers(processes) == expected  # no cap at 4


@pytest.mark.parametrize("training, expected", [(0, 0), (1, 1), (2, 1), (15, 7)])
def test_validation_workers(training, expected):
    assert R.validation_workers(training) == expected


def _plan() -> ConfigurationPlan:
    arch = ArchitecturePlan("plain_unet", (8, 16, 32), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)),
                            (2, 2, 2), (2, 2))
    return ConfigurationPlan("3d_fullres", (1.0, 1.0, 1.0), (16, 20, 16), 3, (20, 24, 22),
                             (ChannelNormalization("zscore", use_nonzero_mask=True),), arch, 0, 0.1, False)


@pytest.mark.parametrize("device, pinned", [(torch.device("cuda:0"), True), (torch.device("cpu"), False),
                                            (None, False)])
def test_loaders_pin_for_cuda_and_validate_from_workers(monkeypatch, device, pinned):
    monkeypatch.setattr(R, "usable_cpus", lambda: 9)
    config = TrainConfig("D", "3d_fullres", "0", "sha", batch_size=2)
    train, val = R.build_loaders(object(), _plan(), ["a", "b"], ["c"], config, TrainState(1, 2, 1), 0,
                                 device=device)  # the loaders start no worker before their first batch
    assert (train.config.num_workers, val.config.num_workers) == (8, 4)  # validation batches from workers too
    assert train.config.pin_memory is pinned and val.config.pin_memory is pinned
    assert val.config.deterministic  # a resumed run continues the validation stream exactly


def test_explicit_workers_and_in_process_loading(monkeypatch):
    config = TrainConfig("D", "3d_fullres", "0", "sha", batch_size=2, num_workers=0)
    train, val = R.build_loaders(object(), _plan(), ["a"], ["c"], config, TrainState(1, 2, 1), 0)
    assert (train.config.num_workers, val.config.num_workers) == (0, 0)


def test_cuda_settings_change_nothing_off_cuda():
    before = torch.backends.cudnn.benchmark
    with R.cuda_settings(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before
    assert torch.backends.cudnn.benchmark == before
