"""The AutoML run: every planned configuration x every cross-validation fold (within a wall-clock budget), then
model selection. The rules (which jobs, their order and share of the budget) are :mod:`autoseg.training.automl`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autoseg.schema.selection import BestChoice
from autoseg.training.automl import (Job, budget_mismatch, finished_folds, jobs_table, measure_step_seconds,
                                     plan_jobs, trainable_configurations)
from autoseg.workflow.context import DatasetContext
from autoseg.workflow.fold import TrainResult, run_fold
from autoseg.workflow.selection import find_best


@dataclass(frozen=True)
class RunPlan:
    """What ``autoseg train DATASET`` will train: the configurations, the fold jobs still to run, what is skipped."""

    dataset: str
    names: list[str]
    jobs: list[Job]
    skipped: list[str]
    done: int
    note: str | None

    def summary(self) -> str:
        """The plan as printed before training starts."""
        text = f"training plan for {self.dataset} ({self.done} fold(s) already finished):\n"
        text += jobs_table(self.jobs, self.skipped)
        return text + (f"\nnote: {self.note}" if self.note else "")


def plan_run(ctx: DatasetContext, configurations: Sequence[str] | None = None, folds: Sequence[str] | None = None,
             budget_minutes: float | None = None, device: str = "auto", precision: str | None = None) -> RunPlan:
    """The fold jobs of the AutoML run and their share of ``budget_minutes`` (seconds per iteration measured on
    ``device`` when there is a budget); finished folds are left out."""
    if configurations:
        ctx.check_configurations(configurations)
    all_folds = ctx.folds
    folds = [str(f) for f in (folds or all_folds)]
    for fold in folds:
        ctx.check_fold(fold)
    finished = finished_folds(ctx.paths, ctx.configurations, sorted(set(folds) | set(all_folds)))
    names, skipped = trainable_configurations(ctx.plans, folds, finished, configurations or None, all_folds)
    todo_configs = sorted({c for c in names for f in folds if (c, f) not in finished}, key=names.index)
    steps = {c: measure_step_seconds(ctx.plans, c, device, precision or "auto")
             for c in todo_configs} if budget_minutes is not None else {}
    jobs = plan_jobs(names, folds, budget_minutes, steps, finished)
    done = sum((c, f) in finished for c in names for f in folds)
    note = budget_mismatch(ctx.plans, jobs, ctx.spec.raw_dir or "RAW_DIR")
    return RunPlan(ctx.name, names, jobs, skipped, done, note)


def train_all(ctx: DatasetContext, configurations: Sequence[str] | None = None, folds: Sequence[str] | None = None,
              budget_minutes: float | None = None, device: str = "auto", progress: bool = True,
              validate: bool = True, select: bool = True, report: Callable[[str], Any] = print,
              **overrides) -> tuple[list[TrainResult], BestChoice | None]:
    """Train every planned configuration (or ``configurations``) x every fold of the splits (or ``folds``), then
    select.

    Finished folds are skipped and killed ones resumed. With ``budget_minutes`` the training time is split over
    the folds still to run (the measured speed of each configuration is shown in the printed plan). Model
    selection (:func:`autoseg.workflow.selection.find_best`) runs when at least one configuration has all folds.

    Returns
    -------
    tuple
        ``(results, best)``: the :class:`TrainResult` of every fold run, and the
        :class:`autoseg.schema.selection.BestChoice` (``None`` when nothing was complete enough to select).
    """
    run = plan_run(ctx, configurations, folds, budget_minutes, device, overrides.get("precision"))
    report(run.summary())
    names, jobs, all_folds = run.names, run.jobs, ctx.folds
    results = []
    for job in jobs:
        report(f"\n== {job.configuration} fold {job.fold}")
        results.append(run_fold(ctx, job.configuration, job.fold, dict(overrides, budget_minutes=job.minutes),
                                device=device, resume=True, validate=validate, progress=progress))
    best = None
    if validate and select and any(len(finished_folds(ctx.paths, [c], all_folds)) == len(all_folds) for c in names):
        best = find_best(ctx, progress=progress)
    return results, best
