"""Train every planned configuration's folds (within a wall-clock budget), then pick the best.

``autoseg train DATASET`` without ``-c``: with a run plan (``plan --budget`` / ``train --budget``: one wall-clock
budget for the whole run, :mod:`autoseg.planning.run_plan`) its parts; without one, every configuration x every
cross-validation fold. Finished folds are skipped, killed ones resumed, and model selection runs at the end
(:func:`autoseg.workflow.automl.train_all`). Folds are independent jobs: ``train --cluster`` runs them on a Dask
cluster and ``autoseg jobs`` prints them as commands (:mod:`autoseg.workflow.jobs`). This module holds the rules
(which jobs, in which order, with which share of the budget; when a probe stops, which probe wins, how far a
finished fold is extended).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from autoseg.errors import AutosegError, option
from autoseg.nn.device import resolve_channels_last, resolve_device, resolve_precision
from autoseg.nn.speed import benchmark_step
from autoseg.nn.unet import build_network
from autoseg.schema.base import from_jsonable
from autoseg.schema.plans import Plans
from autoseg.schema.training import EpochLog
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss
from autoseg.training.trainer import Callback
from autoseg.workspace import DatasetPaths, FoldPaths

#: Part of a budget kept for the folds' final validations and model selection.
VALIDATION_RESERVE = 0.15
#: Below this many training iterations per fold the printed plan warns that the budget is too small.
MIN_USEFUL_ITERATIONS = 300


@dataclass(frozen=True)
class Job:
    """One fold to train: its configuration, fold and training minutes (``None`` without a budget)."""

    configuration: str
    fold: str
    minutes: float | None
    step_seconds: float | None = None


def trainable_configurations(plans: Plans, folds: Sequence[str], finished: set[tuple[str, str]] = frozenset(),
                             requested: Sequence[str] | None = None,
                             all_folds: Sequence[str] = ("0", "1", "2", "3", "4")) -> tuple[list[str], list[str]]:
    """(configurations to train, in the plans' order; skipped ones, each with the reason after its name).

    A cascade stage trains on the cross-validation predictions of its previous stage, so it is trained only when
    every fold of that stage is finished or trained earlier in the same run.

    Parameters
    ----------
    plans
        The dataset's plans (their order puts a low-res stage before its cascade).
    folds
        Folds this run trains.
    finished
        ``(configuration, fold)`` pairs already trained.
    requested
        Configurations asked for; ``None``: all planned ones.
    all_folds
        The cross-validation folds of the splits.
    """
    names, skipped = [], []
    for name, plan in plans.configurations.items():
        if requested is not None and name not in requested:
            continue
        previous = plan.previous_stage
        if previous is not None and not all((previous, k) in finished or (previous in names and k in folds)
                                            for k in all_folds):
            n = len(all_folds)
            skipped.append(f"{name} (needs all {'five' if n == 5 else n} folds of {previous} trained first: train "
                           f"{previous} with every fold)")
            continue
        names.append(name)
    return names, skipped


def measure_step_seconds(plans: Plans, configuration: str, device: str, precision: str) -> float:
    """Seconds per training step of a configuration's network at its batch size, on random data."""
    plan = plans.configurations[configuration]
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_network(plan.architecture, plans.input_channels(configuration), plans.num_outputs)
    shape = (plan.batch_size, plans.input_channels(configuration), *plan.patch_size)
    return benchmark_step(net, DeepSupervisionLoss(DiceCELoss(batch_dice=plan.batch_dice)), shape, dev, prec,
                          resolve_channels_last(None, dev, prec), iterations=2, warmup=1)


def plan_jobs(configurations: Sequence[str], folds: Sequence[str], budget_minutes: float | None,
              step_seconds: dict[str, float] | None = None, finished: set[tuple[str, str]] = frozenset()
              ) -> list[Job]:
    """The jobs still to run and their share of the budget.

    Every unfinished fold gets the same training time: a fold is one sample of a configuration's quality, so
    configurations are compared at equal cost; a slower network simply runs fewer iterations.
    """
    todo = [(c, f) for c in configurations for f in folds if (c, f) not in finished]
    if not todo:
        return []
    minutes = None
    if budget_minutes is not None:
        minutes = budget_minutes * (1 - VALIDATION_RESERVE) / len(todo)
        if minutes < 0.5:
            raise AutosegError(f"a budget of {budget_minutes:g} minutes gives {minutes * 60:.0f} s per fold for "
                               f"{len(todo)} folds, too little; raise {option('budget_minutes')} or train fewer "
                               f"configurations ({option('configurations')}) or folds ({option('folds')})")
    step_seconds = step_seconds or {}
    return [Job(c, f, minutes, step_seconds.get(c)) for c, f in todo]


def jobs_table(jobs: Sequence[Job], skipped: Sequence[str]) -> str:
    """What will run, printed before it starts."""
    lines = [f"{'configuration':20s} {'fold':>4s} {'minutes':>8s} {'s/iteration':>12s} {'~iterations':>12s}"]
    for j in jobs:
        its = f"{j.minutes * 60 / j.step_seconds:.0f}" if j.minutes and j.step_seconds else "-"
        lines.append(f"{j.configuration:20s} {j.fold:>4s} {j.minutes if j.minutes else float('nan'):8.1f} "
                     f"{j.step_seconds if j.step_seconds else float('nan'):12.2f} {its:>12s}")
    lines += [f"skipped: {s}" for s in skipped]
    few = [j for j in jobs if j.minutes and j.step_seconds and j.minutes * 60 / j.step_seconds < MIN_USEFUL_ITERATIONS]
    if few:
        lines.append(f"warning: {len(few)} fold(s) get fewer than {MIN_USEFUL_ITERATIONS} iterations, too few for a "
                     f"network to learn much (on Hippocampus, ~40 iterations per fold gave Dice 0); raise --budget "
                     f"or train fewer configurations (-c) or folds (-f)")
    return "\n".join(lines)


def budget_mismatch(plans: Plans, jobs: Sequence[Job], raw_dir: str, tolerance: float = 0.25) -> str | None:
    """A note when the plans were fitted (``autoseg plan --budget``) to another time per fold than ``jobs`` give,
    with the ``plan`` command that fits them to this run's; ``None`` when they agree within ``tolerance`` (or
    there is no budget on either side)."""
    minutes = sorted({j.minutes for j in jobs if j.minutes})
    fitted = sorted({c.budget.minutes for c in plans.configurations.values() if c.budget is not None})
    if not minutes or not fitted:
        if minutes and not fitted and any(j.step_seconds and j.minutes * 60 / j.step_seconds < MIN_USEFUL_ITERATIONS
                                          for j in jobs):
            return (f"the plans are nnU-Net's (memory only); `autoseg plan {raw_dir} --budget {minutes[0]:.0f}` "
                    f"fits them to a training run of {minutes[0]:.0f} minutes" + _whole_run(jobs))
        return None
    if all(abs(f - m) <= tolerance * m for f in fitted for m in minutes):
        return None
    return (f"the plans were fitted to {', '.join(f'{f:g}' for f in fitted)} minutes per fold, this run gives "
            f"{minutes[0]:.0f}: `autoseg plan {raw_dir} --budget {minutes[0]:.0f}` fits them to a training run of "
            f"that length" + _whole_run(jobs))


def _whole_run(jobs: Sequence[Job]) -> str:
    """For a run of several folds: how to give its whole time to a run plan instead of splitting it evenly."""
    if len(jobs) < 2:
        return ""
    total = sum(j.minutes for j in jobs if j.minutes)
    return (f" (or let a run plan spend the whole {total:.0f} minutes where accuracy comes from: `autoseg train "
            f"DATASET --budget {total:.0f}` without -c, -f and --allocation uniform)")


def finished_folds(paths: DatasetPaths, configurations: Sequence[str], folds: Sequence[str]) -> set[tuple[str, str]]:
    """(configuration, fold) pairs whose final checkpoint exists."""
    return {(c, f) for c in configurations for f in folds if paths.fold(c, f).is_trained}


class StopAfter(Callback):
    """End a run once its training loop has taken ``seconds`` (a probe of a longer run): the run stops after the
    epoch that reaches them, with its final checkpoint, as if its planned length were reached, and
    ``state.stop_reason`` says so. The learning-rate schedule stays the longer run's, so extending the fold to
    that run's length later (:func:`continue_epochs`) continues the same curve."""

    def __init__(self, seconds: float, why: str = "probe"):
        self.seconds, self.why = float(seconds), why

    def on_epoch_end(self, trainer, log: EpochLog) -> None:
        st = trainer.state  # train_seconds is kept across resumes, so a killed probe stops at the same time
        if st.train_seconds >= self.seconds and st.epoch < st.total_epochs:
            st.stop_reason = (f"{self.why}: stopped after epoch {st.epoch} ({st.train_seconds / 60:.1f} of "
                              f"{self.seconds / 60:.1f} min) of {st.total_epochs} planned")
            st.total_epochs = st.epoch


def read_log(folder: FoldPaths) -> list[EpochLog]:
    """The fold's ``log.jsonl`` (empty when it has none)."""
    if not folder.log.is_file():
        return []
    return [from_jsonable(EpochLog, json.loads(line)) for line in folder.log.read_text().splitlines()
            if line.strip()]


def trained_minutes(logs: Sequence[EpochLog]) -> float:
    """Training-loop minutes of a fold so far."""
    return sum(e.epoch_seconds for e in logs) / 60.0


def probe_score(logs: Sequence[EpochLog]) -> float | None:
    """How well a probe learned: the mean pseudo-Dice (mean over classes) of the last third of its epochs.

    The trainer's smoothed pseudo-Dice (momentum 0.9) still weighs its first, near-zero epochs heavily after the
    few epochs of a probe; the mean of the last epochs is less noisy than the last alone.

    Examples
    --------
    >>> from autoseg.schema.training import EpochLog
    >>> log = lambda d: EpochLog(0, 1.0, 1.0, d, 0.0, 0.01, 1.0, 0.0, 1)
    >>> probe_score([log((0.0, 0.0)), log((0.2, 0.4)), log((0.5, 0.7))])
    0.6
    >>> probe_score([]) is None
    True
    """
    if not logs:
        return None
    last = logs[-max(1, math.ceil(len(logs) / 3)):]
    means = [sum(e.pseudo_dice) / len(e.pseudo_dice) if e.pseudo_dice else 0.0 for e in last]
    return sum(means) / len(means)


def continue_epochs(logs: Sequence[EpochLog], total_minutes: float) -> int:
    """The epoch count that brings a fold's training to ``total_minutes`` at its measured epoch time (at least one
    more epoch than it has).

    Examples
    --------
    >>> from autoseg.schema.training import EpochLog
    >>> logs = [EpochLog(k, 1.0, 1.0, (0.5,), 0.5, 0.01, 30.0, 0.0, 4) for k in range(4)]  # 4 epochs, 2 min
    >>> continue_epochs(logs, 10.0)
    20
    >>> continue_epochs(logs, 1.0)
    5
    """
    if not logs:
        raise ValueError("no epoch to measure")
    done = logs[-1].epoch + 1
    per_epoch = sum(e.epoch_seconds for e in logs) / len(logs)
    remaining = total_minutes * 60.0 - per_epoch * done
    return done + max(1, int(remaining // per_epoch))
