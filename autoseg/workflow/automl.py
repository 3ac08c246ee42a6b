"""The training run of ``autoseg train DATASET``: a run plan's parts (one wall-clock budget for the whole run,
:mod:`autoseg.planning.run_plan`), or without one every planned configuration x every cross-validation fold
(a budget split evenly), then model selection. The rules (which jobs, their order and share of the budget) are
:mod:`autoseg.training.automl`'s and :mod:`autoseg.planning.run_plan`'s.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from autoseg.errors import AutosegError, option
from autoseg.planning.budget import MIN_ITERATIONS
from autoseg.planning.presets import load_preset
from autoseg.planning.allocation import RunRule, preferred_configuration
from autoseg.planning.run_plan import extend_run_plan, fit_run_plan, run_plan_table, trained_configurations
from autoseg.schema.base import load_json, save_json, sha256_of
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.run_plan import RunPart
from autoseg.schema.run_plan import RunPlan as BudgetRunPlan
from autoseg.schema.selection import BestChoice
from autoseg.training.automl import (Job, StopAfter, budget_mismatch, continue_epochs, finished_folds, jobs_table,
                                     measure_step_seconds, plan_jobs, probe_score, read_log, trainable_configurations,
                                     trained_minutes)
from autoseg.workflow.context import DatasetContext, load_context
from autoseg.workflow.fold import TrainResult, run_fold, train_fold
from autoseg.workflow.selection import best_so_far, find_best

#: ``train --allocation``: ``plan`` follows the run plan (default); ``uniform`` splits a budget evenly over every
#: configuration x fold (the behaviour before run plans, kept for comparison).
ALLOCATIONS = ("plan", "uniform")


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
              allocation: str = "plan", **overrides) -> tuple[list[TrainResult], BestChoice | None]:
    """Train the dataset's run: the run plan (:func:`follow_run_plan`), or every planned configuration (or
    ``configurations``) x every fold of the splits (or ``folds``), then select.

    Without ``configurations`` and ``folds`` and with ``allocation="plan"``, a run plan is followed: the one
    ``autoseg plan --budget`` stored, or one fitted to ``budget_minutes`` (:func:`resolve_run_plan`:
    ``budget_minutes`` is the wall-clock time of the whole training run). Otherwise finished folds are skipped and
    killed ones resumed, and ``budget_minutes`` is split evenly over the folds still to run (the measured speed of
    each configuration is shown in the printed plan). Model selection (:func:`autoseg.workflow.selection.find_best`)
    runs when at least one configuration has all folds.

    Returns
    -------
    tuple
        ``(results, best)``: the :class:`TrainResult` of every fold run, and the
        :class:`autoseg.schema.selection.BestChoice` (``None`` when nothing was complete enough to select).
    """
    if allocation not in ALLOCATIONS:
        raise AutosegError(f"{option('allocation')} {allocation!r}: expected one of {', '.join(ALLOCATIONS)}")
    if allocation == "plan" and not configurations and not folds:
        ctx, budget_run = resolve_run_plan(ctx, budget_minutes, device, progress, report)
        if budget_run is not None:
            return follow_run_plan(ctx, budget_run, device, progress, validate, select, report, **overrides)
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


# -- the run plan -------------------------------------------------------------------------------------------------

def load_run_plan(ctx: DatasetContext) -> BudgetRunPlan | None:
    """The dataset's ``run_plan.json`` when it was fitted with the current plans; ``None`` without one (or when
    it belongs to other plans: ``autoseg plan`` without ``--budget`` removes it, a hand-made change of the plans
    leaves it stale)."""
    if not ctx.paths.run_plan.is_file():
        return None
    run = load_json(BudgetRunPlan, ctx.paths.run_plan)
    return run if run.plans_sha256 == ctx.plans_sha256 else None


def _trained_minutes(ctx: DatasetContext) -> dict[tuple[str, str], float]:
    """(configuration, fold) -> training minutes of every finished fold."""
    out = {}
    for c in ctx.configurations:
        for f in ctx.trained_folds(c):
            out[(c, f)] = trained_minutes(read_log(ctx.fold(c, f)))
    return out


def _started(ctx: DatasetContext) -> bool:
    """Some fold of the current plans holds a checkpoint (finished or killed)."""
    return any(ctx.fold(c, f).final_checkpoint.is_file() or ctx.fold(c, f).latest_checkpoint.is_file()
               for c in ctx.configurations for f in (*ctx.folds, "all"))


def _main_configuration(run: BudgetRunPlan | None, ctx: DatasetContext) -> str:
    """The configuration an earlier run plan concentrated on (its probes' winner), else nnU-Net's default."""
    if run is not None:
        named = [p.configuration for p in run.parts if p.kind != "probe" and p.configuration]
        if named:
            return named[-1]
    return preferred_configuration([c for c, p in ctx.plans.configurations.items() if p.previous_stage is None])


def resolve_run_plan(ctx: DatasetContext, budget_minutes: float | None, device: str = "auto", progress: bool = True,
                     report: Callable[[str], Any] = print) -> tuple[DatasetContext, BudgetRunPlan | None]:
    """The run plan ``autoseg train DATASET`` follows, and the context it trains (new when the plans changed).

    Without ``budget_minutes``: the stored one (``None`` without: nnU-Net's AutoML as before). With a budget the
    stored one already has: that one. With another budget: before any fold of the current plans was trained,
    plans and run plan are fitted afresh (as ``autoseg plan --budget`` does, from the stored fingerprint; the
    configurations to train are preprocessed, unchanged data reused); once folds are trained, the plans are kept
    and the run plan is extended (:func:`autoseg.planning.run_plan.extend_run_plan`): nothing trained is lost.
    """
    run = load_run_plan(ctx)
    if budget_minutes is None or (run is not None and abs(run.budget_minutes - budget_minutes) < 1e-6):
        return ctx, run
    if budget_minutes <= 0:
        raise AutosegError(f"{option('budget_minutes')} {budget_minutes:g}: must be a positive number of minutes")
    from autoseg.workflow.plan import _replace_plans, device_throughput, preprocess_planned, with_busy_note

    speed = device_throughput(ctx.workspace.root, device)
    target = run.target_iterations if run is not None else MIN_ITERATIONS
    rule = RunRule(target_iterations=target)
    if _started(ctx):
        run = extend_run_plan(ctx.plans, budget_minutes, speed.device, speed.seconds_per_mac, _trained_minutes(ctx),
                              len(ctx.spec.training), len(ctx.folds), rule, _main_configuration(run, ctx))
        run = with_busy_note(run, speed)
        save_json(run, ctx.paths.run_plan)
        report(f"run plan extended to {budget_minutes:g} minutes; the plans and every trained fold are kept")
        return ctx, run
    if not ctx.paths.fingerprint.is_file():
        raise AutosegError(f"{ctx.paths.fingerprint}: no fingerprint to fit the plans to {option('budget_minutes')} "
                           f"{budget_minutes:g}; run `autoseg plan RAW_DIR --budget {budget_minutes:g}`")
    fingerprint = load_json(Fingerprint, ctx.paths.fingerprint)
    plans, run = fit_run_plan(fingerprint, load_preset(ctx.plans.preset), ctx.plans.memory_target_gb,
                              budget_minutes, speed.device, speed.seconds_per_mac, rule, len(ctx.folds))
    run = with_busy_note(run, speed)
    changed = sha256_of(plans) != ctx.plans_sha256
    _replace_plans(ctx.paths, plans)
    save_json(run, ctx.paths.run_plan)
    if changed:
        report(f"plans fitted to {budget_minutes:g} minutes for the whole training run (the previous plans are kept "
               f"as plans.<hash>.json)")
        preprocess_planned(ctx.raw_dir, ctx.spec, plans, ctx.paths, trained_configurations(run, plans), None,
                           progress, fingerprint)
    return load_context(ctx.workspace.root, ctx.name, create_splits=True), run


def _fold_done(ctx: DatasetContext, part: RunPart, fold: str) -> bool:
    """The part's work on ``fold`` is finished (trained, extended and validated as the part asks)."""
    if not part.configuration:
        return False
    folder = ctx.fold(part.configuration, fold)
    if not folder.is_trained:
        return False
    if part.kind == "continue":
        logs = read_log(folder)
        if part.epochs is None or not logs or logs[-1].epoch + 1 < part.epochs:
            return False
    return not (part.validate and fold != "all" and not folder.validation_summary.is_file())


def _progress(ctx: DatasetContext, run: BudgetRunPlan, index: int, fold: str, started: float) -> str:
    """The run-wide line printed before each fold: part, time done and left by the plan, ETA."""
    left = run.selection_minutes
    for i, p in enumerate(run.parts):
        for f in p.folds:
            if i < index or (i == index and p.folds.index(f) < p.folds.index(fold)) or _fold_done(ctx, p, f):
                continue
            spent = trained_minutes(read_log(ctx.fold(p.configuration, f))) if p.configuration else 0.0
            per_fold_val = p.validation_minutes / len(p.folds)
            left += max(p.minutes - max(spent, p.start_minutes), 0.0) + per_fold_val + run.overhead_minutes / max(
                sum(len(q.folds) for q in run.parts), 1)
    planned = run.planned_minutes
    done = max(planned - left, 0.0)
    eta = (datetime.datetime.now() + datetime.timedelta(minutes=left)).strftime("%H:%M")
    part = run.parts[index]
    return (f"\n== part {index + 1}/{len(run.parts)} ({part.kind}): {part.configuration or '?'} fold {fold}, "
            f"{part.minutes:g} min | run: ~{done:.0f} of {planned:.0f} min done, ~{left:.0f} min left (ETA {eta}), "
            f"{(time.monotonic() - started) / 60:.1f} min in this session")


def _train_probe(ctx: DatasetContext, part: RunPart, fold: str, full_minutes: float, device: str, progress: bool,
                 overrides: dict[str, Any], report: Callable[[str], Any] = print) -> None:
    """Train a probe: the fold's run planned for ``full_minutes`` (its learning-rate schedule is that run's),
    stopped after ``part.minutes``; no final validation."""
    from autoseg.training.run import make_config, resolve_run

    c = part.configuration
    folder = ctx.fold(c, fold)
    if folder.is_trained:
        return
    ov = dict(overrides, budget_minutes=full_minutes)
    start = resolve_run(folder, ctx.plans_sha256, lambda: make_config(ctx.plans_sha256, ctx.name, c, fold, ov), ov,
                        resume=True, overwrite=False)
    explicit = ov.get("epochs") is not None or ov.get("iterations_per_epoch") is not None
    state, _ = train_fold(ctx, c, fold, start, device, explicit, progress, callbacks=[StopAfter(part.minutes * 60.0)],
                          given=frozenset(k for k, v in ov.items() if v is not None))
    score = probe_score(read_log(folder))
    report(f"{c} fold {fold}: {state.stop_reason or f'{state.epoch} epochs'}; mean pseudo-Dice of its last epochs "
           + ("n/a" if score is None else f"{score:.3f}"))


def _choose_probe(ctx: DatasetContext, run: BudgetRunPlan, report: Callable[[str], Any]) -> BudgetRunPlan:
    """Fill in the probes' winner (best :func:`autoseg.training.automl.probe_score`; ties: nnU-Net's preference,
    the first probe) and store the run plan with it."""
    probes = [p for p in run.parts if p.kind == "probe"]
    scores = {p.configuration: probe_score(read_log(ctx.fold(p.configuration, p.folds[0]))) for p in probes}
    winner = max(scores, key=lambda c: (scores[c] if scores[c] is not None else -1.0, -list(scores).index(c)))
    parts = tuple(dataclasses.replace(p, configuration=winner) if not p.configuration else p for p in run.parts)
    # probes come only before strategies of one configuration: it is predicted with the folds trained after them
    predict = {winner: tuple(f for p in parts if p.kind != "probe" for f in p.folds)}
    run = dataclasses.replace(run, parts=parts, predict=predict)
    save_json(run, ctx.paths.run_plan)
    report("probes (mean pseudo-Dice of their last epochs): "
           + ", ".join(f"{c} {'n/a' if v is None else f'{v:.3f}'}" for c, v in scores.items())
           + f" -> {winner} continues")
    return run


def _continue_part(ctx: DatasetContext, run: BudgetRunPlan, index: int) -> tuple[BudgetRunPlan, int | None]:
    """The epoch count a ``continue`` part extends its fold to, fixed (and stored) when the part first starts;
    ``None`` when the fold has no epoch yet (it is then trained for the part's minutes)."""
    part = run.parts[index]
    if part.epochs is not None:
        return run, part.epochs
    logs = read_log(ctx.fold(part.configuration, part.folds[0]))
    if not logs:
        return run, None
    epochs = continue_epochs(logs, part.minutes)
    parts = list(run.parts)
    parts[index] = dataclasses.replace(part, epochs=epochs)
    run = dataclasses.replace(run, parts=tuple(parts))
    save_json(run, ctx.paths.run_plan)
    return run, epochs


def follow_run_plan(ctx: DatasetContext, run: BudgetRunPlan, device: str = "auto", progress: bool = True,
                    validate: bool = True, select: bool = True, report: Callable[[str], Any] = print,
                    **overrides) -> tuple[list[TrainResult], BestChoice | None]:
    """Train a run plan's parts in order, keeping ``best.json`` current as they finish.

    Finished work is skipped and killed folds resumed, so running it again (``train --resume``) continues the run
    plan. Probes train fold 0 of each candidate for a short time of the longer run it would get
    (:class:`autoseg.training.automl.StopAfter`); the best continues, extended to its full time. After every
    validated fold (and the model on all cases) ``best.json`` is rewritten from what exists
    (:func:`autoseg.workflow.selection.best_so_far`), so a run stopped early leaves the best model so far to
    ``autoseg predict``. Before every fold a line says the part, the whole run's time done and left, and its ETA.

    Returns
    -------
    tuple
        ``(results, best)`` as :func:`train_all`.
    """
    started = time.monotonic()
    report(run_plan_table(run))
    results: list[TrainResult] = []
    best = None
    overrides = {k: v for k, v in overrides.items() if k != "budget_minutes"}
    for index in range(len(run.parts)):
        if run.parts[index].kind != "probe" and not run.parts[index].configuration:
            run = _choose_probe(ctx, run, report)
        part = run.parts[index]
        for fold in part.folds:
            if _fold_done(ctx, part, fold):
                continue
            report(_progress(ctx, run, index, fold, started))
            check = part.validate and validate
            if part.kind == "probe":
                full = next((p.minutes for p in run.parts if p.kind == "continue" and part.configuration in
                             p.candidates), part.minutes)
                _train_probe(ctx, part, fold, full, device, progress, overrides, report)
                continue
            if part.kind == "continue":
                run, epochs = _continue_part(ctx, run, index)
                part = run.parts[index]
                fold_overrides = (dict(overrides, epochs=epochs, budget_minutes=None) if epochs is not None
                                  else dict(overrides, budget_minutes=part.minutes))
            else:
                fold_overrides = dict(overrides, budget_minutes=part.minutes)
            if not part.mirror and overrides.get("validation_mirroring") is None:
                fold_overrides["validation_mirroring"] = False  # the run plan's choice for a small budget
            results.append(run_fold(ctx, part.configuration, fold, fold_overrides, device=device, resume=True,
                                    validate=check, progress=progress))
            if validate and select:
                best = best_so_far(ctx, run.predict, progress=progress) or best
                if best is not None:
                    report(f"best.json: {' + '.join(best.chosen)} folds "
                           + "; ".join(", ".join(f) for f in best.folds.values())
                           + (f" (scored on the {best.basis})" if best.basis else " (cross-validation)"))
    if validate and select and best is None:
        best = best_so_far(ctx, run.predict, progress=progress)
    report(f"run plan done in {(time.monotonic() - started) / 60:.1f} min in this session (planned "
           f"{run.planned_minutes:.0f} of {run.budget_minutes:g} min)")
    return results, best
