"""The parts of one fold's training run and the rules that choose them: what a fold folder holds and how a run
starts from it (fresh, resumed, extended, finished), the device and numbers it runs with, its network, optimiser,
loss and batch streams. :func:`autoseg.workflow.fold.train_fold` puts them together; nothing here reads a
dataset's files.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, Sequence

import torch

from autoseg.data.loader import BatchLoader, StoreSource, training_loader, validation_loader
from autoseg.errors import AutosegError, option
from autoseg.nn.checkpoint import load_checkpoint, save_checkpoint
from autoseg.nn.device import resolve_channels_last, resolve_device, resolve_precision
from autoseg.nn.speed import prepare_for_device
from autoseg.nn.unet import build_network
from autoseg.parallel import usable_cpus
from autoseg.schema.base import from_jsonable
from autoseg.schema.plans import ConfigurationPlan, Plans
from autoseg.schema.training import TrainConfig
from autoseg.training import distributed as dist_utils
from autoseg.training.callbacks import checkpoint_payload
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss
from autoseg.training.schedule import (SCHEDULES, SHORT_RUN, choose_schedule, expected_iterations,
                                      validation_iterations_for)
from autoseg.training.trainer import Trainer, TrainState, unwrap
from autoseg.workspace import FoldPaths

#: Training minutes per fold on a CPU when neither epochs nor a budget are given.
CPU_DEFAULT_BUDGET_MINUTES = 60.0


def make_config(plans_sha256: str, dataset: str, configuration: str, fold: str, overrides: dict[str, Any]
                ) -> TrainConfig:
    """A :class:`TrainConfig` with the defaults, the plans' hash and the given overrides (``None`` = default)."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise AutosegError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("freeze_encoder_epochs") and not given.get("pretrained"):
        raise AutosegError(f"{option('freeze_encoder_epochs')} needs {option('pretrained')}: only the encoder "
                           f"tensors transferred from a pretrained model are frozen")
    if given.get("freeze_encoder_epochs", 0) < 0:
        raise AutosegError(f"{option('freeze_encoder_epochs')} {given['freeze_encoder_epochs']}: must be >= 0")
    if not 0.0 <= given.get("warmup_fraction", 0.0) < 1.0:
        raise AutosegError(f"{option('warmup_fraction')} {given['warmup_fraction']}: must be in [0, 1)")
    _check_semi_supervised(given)
    if "iterations_per_epoch" in given and "validation_iterations" not in given:
        # nnU-Net's 50 validation iterations belong to its 250 training iterations: keep the ratio, so that four
        # training iterations are not followed by fifty validation ones
        given["validation_iterations"] = validation_iterations_for(given["iterations_per_epoch"])
    return TrainConfig(dataset=dataset, configuration=configuration, fold=fold, plans_sha256=plans_sha256, **given)


def _check_semi_supervised(given: dict[str, Any]) -> None:
    from autoseg.training.semi_supervised import METHODS

    choices = ("auto", "off", *METHODS)
    if given.get("semi_supervised", "auto") not in choices:
        raise AutosegError(f"{option('semi_supervised')} {given['semi_supervised']!r}: expected one of "
                           f"{', '.join(choices)}")
    for name, low, high in (("pseudo_label_threshold", 0.0, 1.0), ("teacher_ema", 0.0, 1.0),
                            ("unlabelled_rampup", 0.0, 1.0)):
        if name in given and not low <= given[name] <= high:
            raise AutosegError(f"{option(name)} {given[name]}: must be in [{low:g}, {high:g}]")
    if given.get("unlabelled_weight", 0.0) < 0:
        raise AutosegError(f"{option('unlabelled_weight')} {given['unlabelled_weight']}: must be >= 0")
    if given.get("unlabelled_batch_size", 1) < 1:
        raise AutosegError(f"{option('unlabelled_batch_size')} {given['unlabelled_batch_size']}: must be >= 1")


@dataclass(frozen=True)
class RunStart:
    """How a fold's run starts.

    Attributes
    ----------
    config
        The run's configuration (a resumed run's own, with the overrides applied).
    state
        Where the run is (``None``: a fresh run).
    checkpoint
        The checkpoint it continues from (``None``: a fresh run).
    finished
        The fold is already trained to the requested length: nothing to train.
    """

    config: TrainConfig
    state: TrainState | None
    checkpoint: dict | None
    finished: bool = False


def resolve_run(folder: FoldPaths, plans_sha256: str, fresh: Callable[[], TrainConfig], overrides: dict[str, Any],
                resume: bool, overwrite: bool, is_main: bool = True) -> RunStart:
    """Decide how a fold's run starts from what its folder holds.

    A folder with a final checkpoint is finished: it is extended when more ``epochs`` are asked for, else left
    alone (``finished``). A folder with only a latest checkpoint is a killed run: ``resume`` continues it,
    ``overwrite`` starts over (the folder is emptied), anything else is refused (nothing on disk is lost by
    accident). ``fresh`` makes the configuration of a new run.

    Raises
    ------
    AutosegError
        A killed run without ``resume`` or ``overwrite``; ``pretrained`` given for a folder that holds a run; a
        checkpoint of other plans.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    kind, ckpt = "none", None
    for k in ("final", "latest"):
        if folder.checkpoint(k).is_file():
            kind, ckpt = k, load_checkpoint(folder.checkpoint(k), plans_sha256=plans_sha256)
            break
    if kind == "latest" and not resume and not overwrite:
        raise AutosegError(f"{folder.root}: an unfinished run is there (killed?); pass {option('resume=True')} to "
                           f"continue it or {option('overwrite=True')} to start over")
    if overwrite and kind != "none":
        if is_main:
            shutil.rmtree(folder.root)
        kind, ckpt = "none", None
    if ckpt is None:
        return RunStart(fresh(), None, None)
    saved = from_jsonable(TrainConfig, json.loads(ckpt["train_config"]))
    if overrides.get("pretrained") and overrides["pretrained"] != saved.pretrained:
        raise AutosegError(f"{folder.root}: holds a run already; {option('pretrained')} only initialises a fresh run "
                           f"(pass {option('overwrite=True')} to start over)")
    config = replace(saved, **overrides)
    state = TrainState(**json.loads(ckpt["state"]))
    epochs = overrides.get("epochs")
    if kind == "latest" and epochs is not None:
        state.total_epochs = max(state.epoch, int(epochs))
    if kind == "final":
        if epochs is None or epochs <= state.total_epochs:
            return RunStart(config, state, ckpt, finished=True)
        state.total_epochs = int(epochs)  # extend; the poly schedule follows the new length
        config = replace(config, budget_minutes=None)
    return RunStart(config, state, ckpt)


def resolve_runtime(config: TrainConfig, plan: ConfigurationPlan, device: str, fresh: bool, explicit_length: bool,
                    distributed: dist_utils.DistributedSpec | None = None, given: frozenset[str] = frozenset()
                    ) -> tuple[torch.device, TrainConfig, str]:
    """The device and the run's resolved numbers: precision, memory layout, batch size, on a CPU without an
    explicit length a time budget (nnU-Net's 1000 x 250 iterations is a GPU budget, weeks on a CPU), and for a
    fresh run with ``schedule="auto"`` the optimiser recipe for its expected length (``given``: the
    :class:`TrainConfig` fields the user set, which are kept).

    Returns
    -------
    tuple
        ``(device, config, note)``; ``note`` is a line to show the user ("" when nothing was chosen for them).
    """
    dev = resolve_device(process_device(device, distributed, torch.cuda.is_available()))
    precision = resolve_precision(config.precision, dev)
    config = replace(config, precision=precision, channels_last=resolve_channels_last(config.channels_last, dev,
                                                                                       precision),
                     batch_size=config.batch_size or plan.batch_size)
    note = ""
    if fresh and dev.type == "cpu" and config.budget_minutes is None and not explicit_length:
        config = replace(config, budget_minutes=CPU_DEFAULT_BUDGET_MINUTES)
        note = (f"training on the CPU without --epochs or --budget: using --budget {CPU_DEFAULT_BUDGET_MINUTES:g} "
                f"(minutes)")
    if fresh:
        config, chosen = _resolve_schedule(config, plan, dev, given)
        note = "\n".join(n for n in (note, chosen) if n)
    return dev, config, note


def resolve_semi_supervised(config: TrainConfig, unlabelled: int, can_use: bool, iterations: float | None = None,
                            on_cpu: bool = False) -> tuple[TrainConfig, str]:
    """The run's semi-supervised method (``"auto"`` resolved, see
    :func:`autoseg.training.semi_supervised.resolve_method`) and a line for the user ("" when nothing to say).

    Raises
    ------
    AutosegError
        A method asked for where there are no unlabelled images, or for a cascade stage (its unlabelled images
        would need previous-stage segmentations).
    """
    from autoseg.training.semi_supervised import DEFAULT_METHOD, resolve_method

    method = resolve_method(config.semi_supervised, unlabelled > 0, can_use, iterations, on_cpu)
    if method != "off" and not unlabelled:
        raise AutosegError(f"{option('semi_supervised')} {method}: the dataset has no unlabelled training images "
                           f"(put them in imagesTrUnlabelled/ of the raw folder and plan again)")
    if method != "off" and not can_use:
        raise AutosegError(f"{option('semi_supervised')} {method}: not available for a cascade stage")
    note = ""
    if config.semi_supervised == "auto" and unlabelled and method != "off":
        note = (f"{unlabelled} unlabelled training images: semi-supervised training ({method}; "
                f"--semi-supervised off trains on the labelled cases only)")
    elif config.semi_supervised == "auto" and unlabelled and can_use:
        expected = f"~{iterations:,.0f} iterations expected" if iterations is not None else "a CPU budget"
        note = (f"{unlabelled} unlabelled training images left out: a short run ({expected}) learns more from "
                f"its labelled cases in the same time; --semi-supervised {DEFAULT_METHOD} uses them anyway")
    return replace(config, semi_supervised=method), note


def process_device(device: str, distributed: dist_utils.DistributedSpec | None, cuda_available: bool) -> str:
    """The device name one training process uses. Under torchrun each process has its own GPU, its local rank's:
    ``auto`` (with CUDA) and a bare ``cuda`` mean ``cuda:LOCAL_RANK`` there (else every process of a node would
    train on cuda:0); ``auto`` without CUDA is the CPU. An explicit ``cuda:N`` is kept."""
    if distributed is None:
        return device
    if device == "cuda" or device == "auto" and cuda_available:
        return f"cuda:{distributed.local_rank}"
    return "cpu" if device == "auto" else device


def expected_run_iterations(config: TrainConfig, plan: ConfigurationPlan) -> float | None:
    """The run's iterations as far as they are known before it starts (``None``: a budget with plans fitted to
    memory only); see :func:`autoseg.training.schedule.expected_iterations`."""
    fit = plan.budget
    return expected_iterations(config.epochs, config.iterations_per_epoch, config.budget_minutes,
                               fit.minutes if fit else None, fit.iterations if fit else None)


def _resolve_schedule(config: TrainConfig, plan: ConfigurationPlan, dev: torch.device, given: frozenset[str]
                      ) -> tuple[TrainConfig, str]:
    if config.schedule not in SCHEDULES:
        raise AutosegError(f"{option('schedule')} {config.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    schedule, iterations = config.schedule, None
    if schedule == "auto":
        iterations = expected_run_iterations(config, plan)
        schedule = choose_schedule(iterations, dev.type == "cpu")
    if schedule != "short":
        return replace(config, schedule=schedule), ""
    config = replace(config, schedule=schedule, **{k: v for k, v in SHORT_RUN.items() if k not in given})
    why = f"~{iterations:,.0f} iterations expected" if iterations is not None else "a CPU budget"
    return config, (f"short run ({why}): SGD momentum {config.momentum:g}, learning rate {config.learning_rate:g}, "
                    f"{config.warmup_fraction:.0%} warm-up (--schedule nnunet keeps nnU-Net's recipe)")


def build_model(plans: Plans, configuration: str, config: TrainConfig, dev: torch.device,
                checkpoint: dict | None, initialise: Callable[[torch.nn.Module], None] | None = None,
                distributed: bool = False) -> torch.nn.Module:
    """The module to train: the network from the plans (weights of ``checkpoint``, else ``initialise``'s, else
    seeded fresh ones identical on every rank) on ``dev``, DDP-wrapped when ``distributed``."""
    plan = plans.configurations[configuration]
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)  # identical initial weights on every rank, not touching the caller's RNG
        network = build_network(plan.architecture, plans.input_channels(configuration), plans.num_outputs,
                                deep_supervision=config.deep_supervision)
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
    elif initialise is not None:
        initialise(network)
    network = prepare_for_device(network, dev, config.channels_last)
    if not distributed:
        return network
    # the coarsest deep-supervision head has loss weight 0, so its parameters get no gradient
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=[dev] if dev.type == "cuda" else None, find_unused_parameters=config.deep_supervision)


def build_optimizer(model: torch.nn.Module, config: TrainConfig, checkpoint: dict | None) -> torch.optim.Optimizer:
    """nnU-Net's SGD (Nesterov); a resumed run gets its optimiser state back (an exported checkpoint has none)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    if checkpoint is not None and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return optimizer


def build_loss(plan: ConfigurationPlan, regions=None) -> torch.nn.Module:
    """Dice + cross-entropy over the labels, or Dice + BCE over ``regions`` (:class:`Region` s), deep-supervised."""
    if regions:
        return DeepSupervisionLoss(RegionDiceBCELoss([r.labels for r in regions], batch_dice=plan.batch_dice))
    return DeepSupervisionLoss(DiceCELoss(batch_dice=plan.batch_dice))


def build_loaders(source: StoreSource, plan: ConfigurationPlan, train_ids: Sequence[str], val_ids: Sequence[str],
                  config: TrainConfig, state: TrainState, num_extra_classes: int,
                  distributed: dist_utils.DistributedSpec | None = None, regions=None,
                  device: torch.device | None = None) -> tuple[BatchLoader, BatchLoader]:
    """The training and patch-validation batch streams, resuming where ``state`` left them.

    Every rank draws its own stream (seed + 7919 x rank) of its share of the global batch. With ``regions``
    (:class:`Region` s), foreground is oversampled per region. Both streams come from worker processes
    (``config.num_workers`` for training, default :func:`default_loader_workers`; :func:`validation_workers` for
    validation; none with ``num_workers=0``). Training on CUDA (``device``), the workers' batches arrive in pinned
    memory, so the trainer's copies to the GPU are asynchronous.
    """
    sample_regions = tuple(tuple(r.labels) for r in regions) if regions else None
    world, rank = (distributed.world_size, distributed.rank) if distributed else (1, 0)
    local_batch = dist_utils.split_batch(config.batch_size, world, rank)
    workers = (config.num_workers if config.num_workers is not None
               else default_loader_workers(distributed.local_world_size if distributed else 1))
    pin = device is not None and device.type == "cuda"
    seed = config.seed + 7919 * rank
    train = training_loader(source, plan, case_ids=train_ids, seed=seed, num_workers=workers,
                            deterministic=config.deterministic or workers == 0, batch_size=local_batch,
                            first_batch=state.batches_drawn, oversample_foreground=config.oversample_foreground,
                            num_extra_classes=num_extra_classes, regions=sample_regions, pin_memory=pin)
    # delivered in index order whatever the workers (the loader's default): a resumed run continues the stream
    val = validation_loader(source, plan, case_ids=val_ids, seed=seed + 1, num_workers=validation_workers(workers),
                            batch_size=local_batch, first_batch=state.val_batches_drawn,
                            oversample_foreground=config.oversample_foreground,
                            num_extra_classes=num_extra_classes, regions=sample_regions, pin_memory=pin)
    return train, val


def build_semi_supervision(model: torch.nn.Module, source: StoreSource, plan: ConfigurationPlan,
                           unlabelled_ids: Sequence[str], config: TrainConfig, state: TrainState,
                           checkpoint: dict | None, distributed: dist_utils.DistributedSpec | None = None,
                           class_order: Sequence[int] | None = None, device: torch.device | None = None):
    """The unlabelled part of a semi-supervised run (``None`` with ``semi_supervised="off"``): its batch stream
    (augmented like the training batches, drawn uniformly, resuming at ``state.batches_drawn``: one unlabelled
    batch per step) and its teacher (a resumed run's from ``checkpoint``).

    Returns
    -------
    tuple
        ``(SemiSupervision | None, BatchLoader | None)``; the caller closes the loader.
    """
    if config.semi_supervised == "off":
        return None, None
    from autoseg.planning.topology import deep_supervision_scales
    from autoseg.training.semi_supervised import SemiSupervision

    world, rank = (distributed.world_size, distributed.rank) if distributed else (1, 0)
    size = config.unlabelled_batch_size or dist_utils.split_batch(config.batch_size, world, rank)
    workers = (config.num_workers if config.num_workers is not None
               else default_loader_workers(distributed.local_world_size if distributed else 1))
    seed = config.seed + 7919 * rank + 104729  # a stream of its own beside the labelled one
    loader = training_loader(source, plan, case_ids=list(unlabelled_ids), seed=seed, num_workers=workers,
                             deterministic=config.deterministic or workers == 0, batch_size=size,
                             first_batch=state.batches_drawn, oversample_foreground=0.0,
                             pin_memory=device is not None and device.type == "cuda")
    scales = deep_supervision_scales(plan.architecture.strides) if config.deep_supervision else None
    semi = SemiSupervision.from_student(
        unwrap(model), checkpoint.get("teacher") if checkpoint is not None else None,
        method=config.semi_supervised, batches=iterate(loader), seed=seed, threshold=config.pseudo_label_threshold,
        ema_decay=config.teacher_ema, weight=config.unlabelled_weight, rampup=config.unlabelled_rampup,
        scales=scales, class_order=class_order)
    return semi, loader


def default_loader_workers(processes: int = 1) -> int:
    """Training-batch workers of one of ``processes`` training processes on this machine (torchrun's processes
    per node): its share of the usable cores (:func:`usable_cpus`) but one (its own), at least one. On a GPU,
    augmenting a batch takes longer than the network's step, so every core is wanted."""
    return max(1, usable_cpus() // max(1, processes) - 1)


def validation_workers(training_workers: int) -> int:
    """Worker processes of the validation stream: half the training workers (its batches are not augmented;
    nnU-Net's ratio), at least one; none when the training batches are made in-process (``num_workers=0``)."""
    return 0 if training_workers == 0 else max(1, training_workers // 2)


def fit(trainer: Trainer, folder: FoldPaths, is_main: bool) -> TrainState:
    """Run the trainer (with deterministic kernels when the config asks, else with cuDNN's autotuner on CUDA);
    on Ctrl-C save a latest checkpoint."""
    try:
        with _deterministic(trainer.config.deterministic), cuda_settings(trainer.device,
                                                                         trainer.config.deterministic):
            return trainer.fit()
    except KeyboardInterrupt:
        if is_main:
            save_checkpoint(folder.latest_checkpoint, checkpoint_payload(trainer))
            print(f"\ninterrupted: saved {folder.latest_checkpoint}; continue with --resume", flush=True)
        raise


def iterate(loader: BatchLoader) -> Iterator[dict]:
    yield from loader


@contextlib.contextmanager
def cuda_settings(device: torch.device, deterministic: bool = False):
    """On CUDA, for the duration of a run: ``device`` is the current device (nothing lands on cuda:0 by
    default), and cuDNN times its convolution algorithms once per shape and keeps the fastest (every training
    step has the same shapes), unless the run must be deterministic. The previous settings are restored; off
    CUDA nothing changes."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not deterministic
    try:
        with torch.cuda.device(device):
            yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """Ask torch for deterministic kernels for the duration of a run, then restore the previous setting."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
