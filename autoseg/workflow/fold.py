"""A fold job: train -> validate -> next-stage inputs -> report, the one place where a fold is run."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autoseg.errors import AutosegError, option
from autoseg.nn.speed import autocast_context
from autoseg.preprocessing.store import CaseStore
from autoseg.schema.base import load_json, save_json
from autoseg.schema.training import TrainConfig, TransferReport
from autoseg.training import distributed as dist_utils
from autoseg.training.callbacks import fold_callbacks
from autoseg.training.run import (RunStart, build_loaders, build_loss, build_model, build_optimizer,
                                  build_semi_supervision, expected_run_iterations, fit, iterate, make_config,
                                  resolve_run, resolve_runtime, resolve_semi_supervised)
from autoseg.training.trainer import Callback, Trainer, TrainState
from autoseg.workflow.context import ALL, DatasetContext
from autoseg.workflow.lock import writer_lock
from autoseg.workflow.validation import validate_fold, validation_dice
from autoseg.workspace import FoldPaths


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run_fold` did.

    Attributes
    ----------
    folder
        The fold's model folder.
    state
        Final run state (epochs, best smoothed pseudo-Dice ...).
    config
        The configuration the run used (precision and batch size resolved).
    validation_dice
        Mean foreground Dice per class of the final sliding-window validation (``None`` for fold ``all`` or when
        skipped).
    already_finished
        The fold had been trained to the requested length before: nothing was trained.
    """

    folder: Path
    state: TrainState
    config: TrainConfig
    validation_dice: dict[str, float | None] | None
    already_finished: bool = False


def run_fold(ctx: DatasetContext, configuration: str, fold: str, overrides: dict[str, Any] | None = None,
             device: str = "auto", resume: bool = False, overwrite: bool = False, validate: bool = True,
             progress: bool = True, distributed: dist_utils.DistributedSpec | None = None) -> TrainResult:
    """Train one fold of one configuration, then validate it (see ``autoseg train``).

    The resume / extend rules are :func:`autoseg.training.run.resolve_run`'s. A finished fold is validated only
    when its validation is missing.

    Parameters
    ----------
    ctx
        The dataset.
    configuration, fold
        What to train; ``fold`` is a fold of the splits or ``"all"``.
    overrides
        :class:`TrainConfig` fields to change (``None`` values are ignored).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    resume, overwrite
        What to do with a killed run's folder.
    validate
        Predict and score the fold's validation cases at the end (then write the report).
    progress
        Progress bars and per-epoch lines.
    distributed
        Rank information when started by torchrun.
    """
    overrides = dict(overrides or {})
    ctx.configuration(configuration)
    ctx.check_fold(fold)
    folder = ctx.fold(configuration, fold)
    is_main = distributed is None or distributed.is_main
    # one writer per fold folder, from before its state is read until the validation is written (the main rank
    # writes for all ranks of a torchrun)
    with writer_lock(folder.root) if is_main else contextlib.nullcontext() as lock:
        return _run_fold(ctx, configuration, fold, folder, overrides, device, resume, overwrite, validate, progress,
                         distributed, is_main, lock)


def _run_fold(ctx: DatasetContext, configuration: str, fold: str, folder: FoldPaths, overrides: dict[str, Any],
              device: str, resume: bool, overwrite: bool, validate: bool, progress: bool,
              distributed: dist_utils.DistributedSpec | None, is_main: bool, lock) -> TrainResult:
    start = resolve_run(folder, ctx.plans_sha256,
                        lambda: make_config(ctx.plans_sha256, ctx.name, configuration, fold, overrides),
                        overrides, resume, overwrite, is_main)
    if lock is not None:
        lock.ensure()  # --overwrite removed the folder, its lock file with it
    validate = validate and fold != ALL and is_main
    if start.finished:
        dice = validation_dice(folder) if folder.validation_summary.is_file() else None
        if validate and dice is None:
            dice = validate_fold(ctx, configuration, fold, device, progress)
        return TrainResult(folder.root, start.state, start.config, dice, already_finished=True)
    if start.state is not None and progress and is_main:
        print(f"{folder.root}: resuming at epoch {start.state.epoch} of {start.state.total_epochs}", flush=True)
    explicit = overrides.get("epochs") is not None or overrides.get("iterations_per_epoch") is not None
    given = frozenset(k for k, v in overrides.items() if v is not None)
    state, config = train_fold(ctx, configuration, fold, start, device, explicit, progress, distributed,
                               given=given)
    dice = validate_fold(ctx, configuration, fold, device, progress) if validate else None
    return TrainResult(folder.root, state, config, dice)


def train_fold(ctx: DatasetContext, configuration: str, fold: str, start: RunStart, device: str = "auto",
               explicit_length: bool = False, progress: bool = True,
               distributed: dist_utils.DistributedSpec | None = None,
               callbacks: Sequence[Callback] = (), given: frozenset[str] = frozenset()
               ) -> tuple[TrainState, TrainConfig]:
    """Train a fold from ``start`` (fresh or resumed); returns the final state and the resolved configuration.

    The main process writes ``train_config.json``, the checkpoints, ``log.jsonl`` and ``progress.png``
    (:func:`autoseg.training.callbacks.fold_callbacks`) besides the given ``callbacks``.
    """
    plan, plans = ctx.configuration(configuration), ctx.plans
    store = CaseStore(ctx.paths.preprocessed(configuration))
    train_ids, val_ids = _preprocessed_fold_cases(ctx, configuration, fold, store.case_ids())
    folder = ctx.fold(configuration, fold)
    is_main = distributed is None or distributed.is_main
    dev, config, note = resolve_runtime(start.config, plan, device, start.state is None, explicit_length,
                                        distributed, given)
    unlabelled_ids = _unlabelled_cases(ctx, configuration, store.case_ids())
    config, semi_note = resolve_semi_supervised(config, len(unlabelled_ids), plan.previous_stage is None,
                                                expected_run_iterations(config, plan), dev.type == "cpu")
    note = "\n".join(n for n in (note, semi_note) if n)
    if note and progress and is_main:
        print(note, flush=True)
    state = start.state or TrainState(config.epochs, config.iterations_per_epoch, config.validation_iterations)
    if distributed:
        dist_utils.init(distributed, dev)
    model = build_model(plans, configuration, config, dev, start.checkpoint,
                        _pretrained(config, configuration, folder, is_main), distributed is not None)
    source, num_extra = _training_source(ctx, configuration, store, device, progress and is_main, is_main)
    train_loader, val_loader = build_loaders(source, plan, train_ids, val_ids, config, state, num_extra, distributed,
                                             plans.regions, device=dev)
    recorders = []
    if is_main:
        save_json(config, folder.train_config)
        recorders = fold_callbacks(folder, config.checkpoint_every, progress)
        if config.trackers:
            from autoseg.training.tracking import tracker_callbacks

            names = [r.name for r in plans.regions] if plans.regions else list(plans.labels[1:])
            recorders += tracker_callbacks(config.trackers, folder.root, ctx.workspace.mlruns,
                                           f"{ctx.name} {configuration} fold {fold}", names, folder.progress_plot)
    regions = tuple(r.labels for r in plans.regions) if plans.regions else None
    semi, unlabelled_loader = build_semi_supervision(model, source, plan, unlabelled_ids, config, state,
                                                     start.checkpoint, distributed, plans.regions_class_order,
                                                     dev)
    trainer = Trainer(model=model, loss=build_loss(plan, plans.regions),
                      optimizer=build_optimizer(model, config, start.checkpoint),
                      train_batches=iterate(train_loader), val_batches=iterate(val_loader), config=config,
                      state=state, device=dev, precision=config.precision, channels_last=config.channels_last,
                      num_classes=len(plans.labels), autocast=autocast_context,
                      callbacks=[*_stopping(config), *recorders, *callbacks],
                      all_reduce=dist_utils.all_reduce_sum, progress=progress and is_main, regions=regions,
                      semi=semi,
                      frozen=_frozen_encoder(config, folder, distributed is not None))
    if start.checkpoint is not None and "grad_scaler" in start.checkpoint:
        trainer.scaler.load_state_dict(start.checkpoint["grad_scaler"])
    try:
        fit(trainer, folder, is_main)
    finally:
        for loader in (train_loader, val_loader, unlabelled_loader):
            if loader is not None:
                loader.close()
        if distributed:
            dist_utils.shutdown()
    return state, config


def _unlabelled_cases(ctx: DatasetContext, configuration: str, available: Sequence[str]) -> list[str]:
    """The dataset's unlabelled training images, all preprocessed (else an error naming the command)."""
    ids = sorted(c.case_id for c in ctx.spec.unlabelled_cases)
    missing = sorted(set(ids) - set(available))
    if missing:
        raise AutosegError(f"{ctx.paths.preprocessed(configuration)}: {len(missing)} unlabelled image(s) are not "
                           f"preprocessed (e.g. {missing[0]}); run `autoseg preprocess {ctx.name}`")
    return ids


def _stopping(config: TrainConfig) -> list:
    """Early stopping when the config asks for it (every rank: they decide alike on all-reduced scores)."""
    from autoseg.training.trainer import EarlyStopping

    return [EarlyStopping(config.early_stop_patience)] if config.early_stop_patience else []


def _preprocessed_fold_cases(ctx: DatasetContext, configuration: str, fold: str, available: Sequence[str]
                             ) -> tuple[list[str], list[str]]:
    if not available:
        raise AutosegError(f"{ctx.paths.preprocessed(configuration)}: no preprocessed cases; run "
                           f"`autoseg preprocess {ctx.name} -c {configuration}`")
    # fold all: the labelled cases (the store also holds the unlabelled images, which have a stream of their own)
    train_ids, val_ids = ctx.fold_cases(fold)
    missing = sorted(set(train_ids + val_ids) - set(available))
    if missing:
        raise AutosegError(f"{ctx.paths.root}: {len(missing)} case(s) of fold {fold} are not preprocessed "
                           f"(e.g. {missing[0]}); run `autoseg preprocess {ctx.name}`")
    return train_ids, val_ids


def _pretrained(config: TrainConfig, configuration: str, folder: FoldPaths, is_main: bool):
    """The initialiser of a fine-tuned run (``None`` without ``pretrained``): transfers what matches, prints a
    summary and saves the transfer table in the fold folder."""
    if not config.pretrained:
        return None

    def initialise(network) -> None:
        from autoseg.training.pretrained import initialise_from_pretrained

        message, report = initialise_from_pretrained(network, config.pretrained, configuration,
                                                     config.pretrained_fold)
        if is_main:
            save_json(report, folder.transfer_report)
            print(message, flush=True)

    return initialise


def _frozen_encoder(config: TrainConfig, folder: FoldPaths, distributed: bool) -> tuple[str, ...]:
    """The transferred encoder tensors a fine-tuned run freezes first (read back from the fold's transfer table,
    which the first start of the run wrote, so a resumed run freezes the same ones)."""
    if not config.freeze_encoder_epochs:
        return ()
    if distributed:
        raise AutosegError(f"{option('freeze_encoder_epochs')}: not supported in distributed training")
    report = load_json(TransferReport, folder.transfer_report)
    return tuple(n for n in report.loaded if n.startswith(("stem.", "encoder.")))


def _training_source(ctx: DatasetContext, configuration: str, store: CaseStore, device: str, progress: bool,
                     is_main: bool = True):
    """The case source of a run and its number of extra input classes (a cascade stage's previous-stage
    segmentations, predicted first where missing, by the main process: every rank calls this)."""
    from autoseg.data.loader import StoreSource

    if ctx.plans.configurations[configuration].previous_stage is None:
        return StoreSource(store), 0
    from autoseg.workflow.cascade import previous_stage_segmentations

    extra = previous_stage_segmentations(ctx, configuration, device, progress, is_main)
    return StoreSource(store, extra_seg=extra), len(ctx.plans.labels)
