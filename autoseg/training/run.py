"""Assemble and run one fold's training: the parts, the resume/extend rules, and the final validation."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from autoseg.data.loader import StoreSource, training_loader, validation_loader
from autoseg.data.splits import load_or_create_splits
from autoseg.errors import AutosegError
from autoseg.nn.device import resolve_channels_last, resolve_device, resolve_precision
from autoseg.nn.speed import autocast_context, prepare_for_device
from autoseg.nn.unet import build_network
from autoseg.preprocessing.store import CaseStore
from autoseg.schema.base import from_jsonable, load_json, save_json, sha256_of
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.plans import Plans
from autoseg.schema.training import EpochLog, TrainConfig
from autoseg.training import distributed as dist_utils
from autoseg.training.callbacks import (CheckpointCallback, JsonlLogCallback, ProgressPlotCallback,
                                        checkpoint_payload)
from autoseg.training.checkpoint import load_checkpoint, save_checkpoint
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss
from autoseg.training.trainer import Callback, Trainer, TrainState
from autoseg.workspace import DatasetPaths, Workspace

FOLDS = ("0", "1", "2", "3", "4", "all")
#: Training minutes per fold on a CPU when neither epochs nor a budget are given.
CPU_DEFAULT_BUDGET_MINUTES = 60.0


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_fold` did.

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
    validation_dice: dict[str, float] | None
    already_finished: bool = False


class ConsoleCallback(Callback):
    """One line per epoch with losses, pseudo-Dice, times and the run's ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        if not self.enabled:
            return
        st = trainer.state
        per_epoch = st.train_seconds / max(1, st.epoch)
        eta = per_epoch * (st.total_epochs - st.epoch)
        dice = "/".join(f"{d:.3f}" for d in log.pseudo_dice)
        print(f"epoch {log.epoch + 1}/{st.total_epochs}: loss {log.train_loss:.4f} (val {log.val_loss:.4f}), "
              f"pseudo-Dice {dice} (smoothed {log.ema_pseudo_dice:.3f}), lr {log.learning_rate:.2e}, "
              f"{log.epoch_seconds:.1f} s (data wait {log.data_wait_seconds:.1f} s), ETA {_hms(eta)}", flush=True)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _iterate(loader) -> Iterator[dict]:
    yield from loader


def make_config(plans: Plans, dataset: str, configuration: str, fold: str, overrides: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` with the defaults, the plans' hash and the given overrides (``None`` = default)."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise AutosegError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(dataset=dataset, configuration=configuration, fold=fold, plans_sha256=sha256_of(plans),
                       **given)


def _fold_cases(paths: DatasetPaths, spec: DatasetSpec, fold: str, available: list[str]) -> tuple[list, list]:
    if fold == "all":
        return sorted(available), sorted(available)
    splits = load_or_create_splits(paths, [c.case_id for c in spec.training], Path(spec.raw_dir))
    k = int(fold)
    if k >= len(splits):
        raise AutosegError(f"{paths.splits}: has {len(splits)} folds, fold {fold} was asked for")
    missing = sorted(set(splits[k]["train"] + splits[k]["val"]) - set(available))
    if missing:
        raise AutosegError(f"{paths.root}: {len(missing)} case(s) of fold {fold} are not preprocessed "
                           f"(e.g. {missing[0]}); run `autoseg preprocess {paths.root.name}`")
    return splits[k]["train"], splits[k]["val"]


def _existing_run(folder: Path, plans_sha: str) -> tuple[str, dict | None]:
    """``("final" | "latest" | "none", checkpoint)`` of what the fold folder holds."""
    for kind in ("final", "latest"):
        p = folder / f"checkpoint_{kind}.pt"
        if p.is_file():
            return kind, load_checkpoint(p, plans_sha256=plans_sha)
    return "none", None


def train_fold(workspace: Path, dataset: str, configuration: str, fold: str, overrides: dict[str, Any] | None = None,
               device: str = "auto", resume: bool = False, overwrite: bool = False, validate: bool = True,
               progress: bool = True, distributed: dist_utils.DistributedSpec | None = None) -> TrainResult:
    """Train one fold of one configuration (see ``autoseg train``).

    A fold folder with a final checkpoint is finished: it is extended when more ``epochs`` are asked for, else
    left alone. A folder with only a latest checkpoint is a killed run: ``resume`` continues it, ``overwrite``
    starts over, anything else is refused (nothing on disk is lost by accident).

    Parameters
    ----------
    workspace, dataset, configuration, fold
        What to train; ``fold`` is ``"0"``-``"4"`` or ``"all"``.
    overrides
        :class:`TrainConfig` fields to change (``None`` values are ignored).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    resume, overwrite
        What to do with a killed run's folder.
    validate
        Predict and score the fold's validation cases at the end.
    progress
        Progress bars and per-epoch lines.
    distributed
        Rank information when started by torchrun.
    """
    overrides = dict(overrides or {})
    paths = Workspace(Path(workspace)).dataset(dataset)
    plans = load_json(Plans, _require(paths.plans, f"no plans for dataset '{dataset}'; run `autoseg plan` first"))
    spec = load_json(DatasetSpec, paths.dataset_spec)
    if configuration not in plans.configurations:
        raise AutosegError(f"{paths.plans}: no configuration '{configuration}' (planned: "
                           f"{', '.join(plans.configurations)})")
    if fold not in FOLDS:
        raise AutosegError(f"fold {fold}: must be one of {', '.join(FOLDS)}")
    plan = plans.configurations[configuration]
    store = CaseStore(paths.preprocessed(configuration))
    available = store.case_ids()
    if not available:
        raise AutosegError(f"{paths.preprocessed(configuration)}: no preprocessed cases; run "
                           f"`autoseg preprocess {dataset} -c {configuration}`")
    train_ids, val_ids = _fold_cases(paths, spec, fold, available)

    folder = paths.model(configuration, fold)
    plans_sha = sha256_of(plans)
    kind, ckpt = _existing_run(folder, plans_sha)
    is_main = distributed is None or distributed.is_main
    if kind == "latest" and not resume:
        if not overwrite:
            raise AutosegError(f"{folder}: an unfinished run is there (killed?); pass --resume to continue it or "
                               f"--overwrite to start over")
    if overwrite and kind != "none" and is_main:
        shutil.rmtree(folder)
        kind, ckpt = "none", None

    if ckpt is not None:
        saved = from_jsonable(TrainConfig, json.loads(ckpt["train_config"]))
        if overrides.get("pretrained") and overrides["pretrained"] != saved.pretrained:
            raise AutosegError(f"{folder}: holds a run already; --pretrained only initialises a fresh run "
                               f"(pass --overwrite to start over)")
        config = replace(saved, **{k: v for k, v in overrides.items() if v is not None})
        state = TrainState(**json.loads(ckpt["state"]))
        if kind == "latest" and overrides.get("epochs") is not None:
            state.total_epochs = max(state.epoch, int(overrides["epochs"]))
        if kind == "final":
            if overrides.get("epochs") is not None and overrides["epochs"] > state.total_epochs:
                state.total_epochs = int(overrides["epochs"])  # extend; the poly schedule follows the new length
                config = replace(config, budget_minutes=None)
            else:
                summary = folder / "validation" / "summary.json"
                dice = _validation_dice(summary) if summary.is_file() else None
                if validate and dice is None and fold != "all" and is_main:
                    dice = validate_fold(paths, plans, configuration, fold, spec, val_ids, device, progress)
                return TrainResult(folder, state, config, dice, already_finished=True)
    else:
        config = make_config(plans, dataset, configuration, fold, overrides)
        state = None

    dev = resolve_device(device if distributed is None or device != "auto" else
                         ("cuda:%d" % distributed.local_rank if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(config.precision, dev)
    channels_last = resolve_channels_last(config.channels_last, dev, precision)
    world = distributed.world_size if distributed else 1
    rank = distributed.rank if distributed else 0
    batch_size = config.batch_size or plan.batch_size
    config = replace(config, precision=precision, channels_last=channels_last, batch_size=batch_size)
    if (state is None and dev.type == "cpu" and config.budget_minutes is None and overrides.get("epochs") is None
            and overrides.get("iterations_per_epoch") is None):
        # nnU-Net's 1000 x 250 iterations is a GPU budget (weeks on a CPU): let time decide instead
        config = replace(config, budget_minutes=CPU_DEFAULT_BUDGET_MINUTES)
        if progress and is_main:
            print(f"training on the CPU without --epochs or --budget: using --budget {CPU_DEFAULT_BUDGET_MINUTES:g} "
                  f"(minutes)", flush=True)
    if state is None:
        state = TrainState(config.epochs, config.iterations_per_epoch, config.validation_iterations)
    if distributed:
        dist_utils.init(distributed, dev)
    local_batch = dist_utils.split_batch(batch_size, world, rank)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)  # identical initial weights on every rank, not touching the caller's RNG
        network = build_network(plan.architecture, plans.input_channels(configuration), len(plans.labels),
                                deep_supervision=config.deep_supervision)
    if ckpt is not None:
        network.load_state_dict(ckpt["model"])
    elif config.pretrained:
        from autoseg.training.pretrained import initialise_from_pretrained

        message = initialise_from_pretrained(network, config.pretrained, configuration, config.pretrained_fold,
                                             plan.architecture)
        if is_main:
            print(message, flush=True)
    network = prepare_for_device(network, dev, channels_last)
    model: torch.nn.Module = network
    if distributed:
        # the coarsest deep-supervision head has loss weight 0, so its parameters get no gradient
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=[dev] if dev.type == "cuda" else None,
                                                          find_unused_parameters=config.deep_supervision)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    if ckpt is not None and "optimizer" in ckpt:  # an imported (exported) checkpoint has no optimiser state
        optimizer.load_state_dict(ckpt["optimizer"])
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=plan.batch_dice))

    workers = config.num_workers if config.num_workers is not None else _default_loader_workers()
    extra_seg, num_extra = None, 0
    if plan.previous_stage is not None:
        from autoseg.training.cascade import previous_stage_segmentations

        extra_seg = previous_stage_segmentations(paths, plans, spec, configuration, device, progress and is_main)
        num_extra = len(plans.labels)
    source = StoreSource(store, extra_seg=extra_seg)
    # every rank draws its own batch stream; the stream position resumes where the checkpoint left it
    stream_seed = config.seed + 7919 * rank
    train_loader = training_loader(source, plan, case_ids=train_ids, seed=stream_seed, num_workers=workers,
                                   deterministic=config.deterministic or workers == 0, batch_size=local_batch,
                                   first_batch=state.batches_drawn,
                                   oversample_foreground=config.oversample_foreground,
                                   num_extra_classes=num_extra)
    val_loader = validation_loader(source, plan, case_ids=val_ids, seed=stream_seed + 1, num_workers=0,
                                   batch_size=local_batch, first_batch=state.val_batches_drawn,
                                   oversample_foreground=config.oversample_foreground, num_extra_classes=num_extra)
    callbacks: list[Callback] = []
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        save_json(config, folder / "train_config.json")
        callbacks = [CheckpointCallback(folder, config.checkpoint_every), JsonlLogCallback(folder / "log.jsonl"),
                     ProgressPlotCallback(folder / "progress.png"), ConsoleCallback(progress)]
    trainer = Trainer(model=model, loss=loss, optimizer=optimizer, train_batches=_iterate(train_loader),
                      val_batches=_iterate(val_loader), config=config, state=state, device=dev,
                      precision=precision, channels_last=channels_last, num_classes=len(plans.labels),
                      autocast=autocast_context, callbacks=callbacks, all_reduce=dist_utils.all_reduce_sum,
                      progress=progress and is_main)
    if ckpt is not None and "grad_scaler" in ckpt:
        trainer.scaler.load_state_dict(ckpt["grad_scaler"])
    try:
        with _deterministic(config.deterministic):
            trainer.fit()
    except KeyboardInterrupt:
        if is_main:
            save_checkpoint(folder / "checkpoint_latest.pt", checkpoint_payload(trainer))
            print(f"\ninterrupted: saved {folder / 'checkpoint_latest.pt'}; continue with --resume", flush=True)
        raise
    finally:
        train_loader.close()
        val_loader.close()
        if distributed:
            dist_utils.shutdown()

    dice = None
    if validate and fold != "all" and is_main:
        dice = validate_fold(paths, plans, configuration, fold, spec, val_ids, device, progress)
    return TrainResult(folder, state, config, dice)


def _require(path: Path, message: str) -> Path:
    if not path.is_file():
        raise AutosegError(f"{path}: {message}")
    return path


def _default_loader_workers() -> int:
    """One background process per spare core (at least one): augmentation overlaps the network's work."""
    cores = len(os.sched_getaffinity(0))
    return max(1, min(4, cores - 1))


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


def _validation_dice(summary_path: Path) -> dict[str, float | None]:
    """Mean Dice per class name from a ``summary.json``."""
    summary = load_json(EvaluationSummary, summary_path)
    return {summary.label_names.get(k, k): m.dice for k, m in summary.mean.items()}


def validate_fold(paths: DatasetPaths, plans: Plans, configuration: str, fold: str, spec: DatasetSpec,
                  val_ids: list[str], device: str, progress: bool) -> dict[str, float] | None:
    """Predict the fold's validation cases with the final weights (sliding window, mirror TTA), write them in the
    raw geometry with their probabilities, and score them against the raw labels (``validation/summary.json``).

    A cascade's low-res stage also writes each case's prediction on the next stage's grid
    (:func:`autoseg.training.cascade.save_next_stage`); a cascade stage is validated behind the previous stage's
    fold of the same number.
    """
    from tqdm import tqdm

    from autoseg.evaluation.folder import evaluate_folder
    from autoseg.inference.cascade import load_folds
    from autoseg.io.image import read_image, write_image
    from autoseg.training.cascade import save_next_stage

    folder = paths.model(configuration, fold)
    out = folder / "validation"
    out.mkdir(parents=True, exist_ok=True)
    predictor = load_folds(paths, plans, configuration, [fold], device=device)
    has_next = plans.configurations[configuration].next_stage is not None
    raw = Path(spec.raw_dir)
    cases = {c.case_id: c for c in spec.training}
    for case_id in tqdm(val_ids, desc="validation", unit="case", disable=not progress, dynamic_ncols=True):
        case = cases[case_id]
        image, geometry = read_image([raw / p for p in case.images])
        data, props = predictor.prepare(image, geometry, case_id)
        logits = predictor.logits(data)
        if has_next:
            save_next_stage(paths.next_stage(configuration, fold), logits, props, plans, configuration)
        pred = predictor.finish(logits, props, probabilities=True)
        del data, logits
        write_image(pred.segmentation, geometry, out / f"{case_id}{spec.file_ending}")
        # probabilities for ensembling configurations later; float16 halves the disk space
        tmp = out / f".{case_id}.probs.tmp.npz"
        np.savez_compressed(tmp, probabilities=pred.probabilities.astype(np.float16))
        os.replace(tmp, out / f"{case_id}.npz")
    gt_dir = raw / Path(cases[val_ids[0]].label).parent
    evaluate_folder(out, gt_dir, labels=list(range(1, len(plans.labels))), file_ending=spec.file_ending,
                    label_names=list(plans.labels), case_ids=val_ids, output=out / "summary.json", progress=progress)
    from autoseg.report import write_fold_report

    write_fold_report(folder, spec)
    return _validation_dice(out / "summary.json")
