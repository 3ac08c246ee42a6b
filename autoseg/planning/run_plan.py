"""The run plan of a dataset (``run_plan.json``): its configurations priced from the plans at the device's measured
throughput, the budget spent by :func:`autoseg.planning.allocation.allocate`, the plans fitted to the chosen
fold's time; extended when a run is resumed with more time, shown as a table. Pure: no torch, no files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from autoseg.errors import AutosegError, option
from autoseg.planning.allocation import (MIN_PART_SECONDS, VALIDATION_CASE_SECONDS, VALIDATION_STEP, Allocation,
                                         ConfigurationSpeed, RunRule, allocate, minutes)
from autoseg.planning.budget import TimeBudget, plan_seconds_per_iteration
from autoseg.planning.compute import forward_macs
from autoseg.planning.planner import make_plans
from autoseg.planning.presets import PlannerPreset
from autoseg.schema.base import sha256_of
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import Plans
from autoseg.schema.run_plan import RunPart, RunPlan



def validation_seconds_per_case(plans: Plans, configuration: str, seconds_per_mac: float,
                                mirror: bool = True) -> float:
    """Expected sliding-window validation time of one median case, s: tiles at :data:`VALIDATION_STEP` x mirrors
    (every axis, as the validation does) x one forward pass of a patch, priced at the device's training
    seconds per multiply-accumulate, plus :data:`VALIDATION_CASE_SECONDS`.

    On Hippocampus (patch 40x48x32, median case 36x50x35: 4 tiles x 8 mirrors) this gives ~12 s per case at 27.7 s
    per 10^12 multiply-accumulates; ~9 s were measured.
    """
    plan = plans.configurations[configuration]
    tiles = 1
    for size, p in zip(plan.median_shape, plan.patch_size):
        tiles *= math.ceil(max(size - p, 0) / (p * VALIDATION_STEP)) + 1
    if len(plan.patch_size) == 2:  # a 2D configuration predicts every slice
        tiles *= max(1, round(_slices(plans)))
    macs = forward_macs(plan.architecture, plan.patch_size, plans.input_channels(configuration), plans.num_outputs)
    mirrors = 2 ** len(plan.patch_size) if mirror else 1
    return tiles * mirrors * macs * seconds_per_mac + VALIDATION_CASE_SECONDS


def _slices(plans: Plans) -> float:
    for c in plans.configurations.values():
        if len(c.median_shape) == 3:
            return c.median_shape[0]
    return plans.original_median_shape[plans.transpose_forward[0]]


def configuration_speeds(plans: Plans, seconds_per_mac: float, cheapest: Plans | None = None
                         ) -> dict[str, ConfigurationSpeed]:
    """Each configuration's :class:`ConfigurationSpeed` from its plan (``cheapest``: the same dataset's plans at the
    budget ladder's cheapest rungs; ``None``: the plans are fixed)."""
    out = {}
    for name, c in plans.configurations.items():
        s = plan_seconds_per_iteration(c.architecture, c.patch_size, c.batch_size, plans.input_channels(name),
                                       plans.num_outputs, seconds_per_mac)
        low = None
        if cheapest is not None and name in cheapest.configurations:
            k = cheapest.configurations[name]
            low = plan_seconds_per_iteration(k.architecture, k.patch_size, k.batch_size,
                                             cheapest.input_channels(name), cheapest.num_outputs, seconds_per_mac)
        out[name] = ConfigurationSpeed(s, low, validation_seconds_per_case(plans, name, seconds_per_mac),
                                       validation_seconds_per_case(plans, name, seconds_per_mac, mirror=False))
    return out


def _record(alloc: Allocation, plans: Plans, budget_minutes: float, device: str, seconds_per_mac: float,
            target: int, speeds: Mapping[str, ConfigurationSpeed], num_cases: int, num_folds: int) -> RunPlan:
    """The run plan of ``alloc`` with iterations and validation times re-priced at the plans it trains."""
    fitted = configuration_speeds(plans, seconds_per_mac)
    n_val = num_cases / max(num_folds, 1)
    parts = []
    for p in alloc.parts:
        names = [p.configuration] if p.configuration else list(p.candidates)
        if names and all(n in fitted for n in names):
            s = max(fitted[n].seconds_per_iteration for n in names)
            v = max(fitted[n].validation_seconds_per_case if p.mirror else
                    fitted[n].unmirrored_validation_seconds_per_case for n in names) * n_val
            p = dataclasses.replace(p, seconds_per_iteration=round(s, 3), iterations=int(p.minutes * 60 / s),
                                    validation_minutes=minutes(v * len(p.folds)) if p.validate else 0.0)
        parts.append(p)
    return RunPlan(dataset=plans.dataset_name, budget_minutes=float(budget_minutes), strategy=alloc.strategy,
                   parts=tuple(parts), fold_minutes=alloc.fold_minutes, selection=alloc.selection,
                   selection_minutes=minutes(alloc.selection_seconds),
                   overhead_minutes=minutes(alloc.overhead_seconds), predict=dict(alloc.predict), device=device,
                   seconds_per_tmac=round(seconds_per_mac * 1e12, 3), target_iterations=int(target),
                   plans_sha256=sha256_of(plans), notes=alloc.notes)


def fit_run_plan(fingerprint: Fingerprint, preset: PlannerPreset, memory_gb: float, budget_minutes: float,
                 device: str, seconds_per_mac: float, rule: RunRule = RunRule(), num_folds: int = 5
                 ) -> tuple[Plans, RunPlan]:
    """Plans and run plan of a dataset for a whole training run of ``budget_minutes`` (``autoseg plan --budget``).

    The configurations are priced at their memory-only plans and at the budget ladder's cheapest ones,
    :func:`allocate` chooses the parts, and every configuration's plan is then fitted to the time of one fold
    of the run (:func:`autoseg.planning.planner.make_plans` with that time), so every part reaches
    ``rule.target_iterations`` where the ladder can. A configuration the fitted plans drop (a low-resolution
    stage when the budget coarsens ``3d_fullres`` itself) is left out and the parts allocated again.

    Returns
    -------
    tuple
        ``(plans, run plan)``; the run plan names the plans' hash.
    """
    if budget_minutes <= 0:
        raise AutosegError(f"{option('budget_minutes')} {budget_minutes:g}: must be a positive number of minutes")
    base = make_plans(fingerprint, preset, memory_gb)
    cheapest = make_plans(fingerprint, preset, memory_gb,
                          TimeBudget(1e-9, device, seconds_per_mac, rule.target_iterations))
    speeds = configuration_speeds(base, seconds_per_mac, cheapest)
    fitter = _PlanFitter(fingerprint, preset, memory_gb, budget_minutes, device, seconds_per_mac, rule, num_folds,
                         base)
    # The first allocation, at the memory-only and cheapest plans' speeds, chooses the configurations; later ones
    # only price them (choosing again at each step flips between strategies, e.g. with and without probes).
    first = fitter.allocated(list(base.configurations), speeds)
    names = _chosen_configurations(first, base)
    plans, alloc, speeds = _fit_to_the_fold(fitter, names, speeds, first.fold_minutes)
    run = _record(alloc, plans, budget_minutes, device, seconds_per_mac, rule.target_iterations, speeds,
                  len(fingerprint.cases), num_folds)
    _check_trainable(run)
    return plans, run


@dataclass(frozen=True)
class _PlanFitter:
    """What :func:`fit_run_plan` fits plans and allocates parts with: its arguments and the memory-only plans."""

    fingerprint: Fingerprint
    preset: PlannerPreset
    memory_gb: float
    budget_minutes: float
    device: str
    seconds_per_mac: float
    rule: RunRule
    num_folds: int
    base: Plans

    def allocated(self, names: list[str], speeds: Mapping[str, ConfigurationSpeed]) -> Allocation:
        """:func:`allocate` of the whole budget over the configurations ``names`` at ``speeds``."""
        previous = {n: c.previous_stage for n, c in self.base.configurations.items()
                    if c.previous_stage and n in names}
        return allocate(self.budget_minutes * 60.0, {n: speeds[n] for n in names}, len(self.fingerprint.cases),
                        self.num_folds, previous, self.rule)

    def fit(self, minutes: float) -> Plans:
        """The plans fitted to folds of ``minutes`` of training (the budget ladder)."""
        return make_plans(self.fingerprint, self.preset, self.memory_gb,
                          TimeBudget(max(minutes, 1e-6), self.device, self.seconds_per_mac,
                                     self.rule.target_iterations))

    def evaluate(self, minutes: float, names: list[str], speeds: Mapping[str, ConfigurationSpeed]
                 ) -> tuple[Plans, Allocation, dict[str, ConfigurationSpeed]]:
        """The plans fitted to folds of ``minutes``, the parts allocated with them, and the speeds those are priced
        at: ``speeds`` with the fitted plans' validation times.

        Only the configurations of ``names`` that the fitted plans keep are allocated.
        """
        plans = self.fit(minutes)
        pool = [n for n in names if n in plans.configurations]  # e.g. 3d_lowres dropped by the fit
        new = configuration_speeds(plans, self.seconds_per_mac)
        priced = {n: dataclasses.replace(s, validation_seconds_per_case=new[n].validation_seconds_per_case,
                                         unmirrored_validation_seconds_per_case=(
                                             new[n].unmirrored_validation_seconds_per_case))
                  if n in new else s for n, s in speeds.items()}
        return plans, self.allocated(pool, priced), priced


def _chosen_configurations(first: Allocation, base: Plans) -> list[str]:
    """The configurations of ``base`` that the first allocation trains (probe candidates included) and the
    low-resolution stages of the cascades among them, in the plans' order; all of them when it names none."""
    names = list(base.configurations)
    used = _trained(first.parts)
    return [n for n in names if n in used or any(n == base.configurations[u].previous_stage
                                                 for u in used if u in base.configurations)] or names


def _fit_to_the_fold(fitter: _PlanFitter, names: list[str], speeds: Mapping[str, ConfigurationSpeed],
                     minutes: float) -> tuple[Plans, Allocation, dict[str, ConfigurationSpeed]]:
    """The plans of the longest fold time whose run plan still gives a fold at least that long, with their
    allocation and the speeds it is priced at (:meth:`_PlanFitter.evaluate`).

    A plan the budget makes cheaper has a smaller patch, so more tiles to validate and less time to train; and the
    ladder is not monotonic (a longer fold may keep the width and shrink the patch, and validate far longer:
    Hippocampus at 201 s per 10^12 MACs). So the parts are always priced with the validation times of the plans
    they train, and the plans are the largest model that reaches its iterations: from ``minutes`` (the first
    allocation's fold time) down until the fold gets its time, then up while it keeps getting it.
    """
    def holds(alloc: Allocation, minutes: float) -> bool:
        return alloc.fold_minutes >= 0.99 * minutes

    plans, alloc, priced = fitter.evaluate(minutes, names, speeds)
    for _ in range(40):
        if holds(alloc, minutes) or minutes < 0.01:
            break
        minutes *= 0.93
        plans, alloc, priced = fitter.evaluate(minutes, names, speeds)
    for _ in range(6):
        if abs(alloc.fold_minutes - minutes) <= 0.01 * max(minutes, 1e-6):
            break
        step = fitter.evaluate(alloc.fold_minutes, names, speeds)
        if not holds(step[1], alloc.fold_minutes):
            break  # a longer fold's plan would not get its time: keep the last one that does
        minutes = alloc.fold_minutes
        plans, alloc, priced = step
    if minutes != alloc.fold_minutes and abs(alloc.fold_minutes - minutes) <= 0.01 * minutes:
        plans = fitter.fit(alloc.fold_minutes)  # settled within 1%: the plans name the part's own time
    return plans, alloc, priced


def _check_trainable(run: RunPlan) -> None:
    """A budget whose validation and start-up leave no time to train is refused (nothing is written)."""
    short = [p for p in run.parts if p.kind != "probe" and p.minutes * 60 < MIN_PART_SECONDS]
    if short:
        kept = sum(p.validation_minutes for p in run.parts) + run.overhead_minutes + run.selection_minutes
        raise AutosegError(f"{option('budget_minutes')} {run.budget_minutes:g}: the validation, start-up and "
                           f"selection of even one fold take ~{kept:.1f} min of it, leaving "
                           f"{short[0].minutes * 60:.0f} s to train; give at least {kept + 2:.0f} minutes")


def extend_run_plan(plans: Plans, budget_minutes: float, device: str, seconds_per_mac: float,
                    trained_minutes: Mapping[tuple[str, str], float], num_cases: int, num_folds: int = 5,
                    rule: RunRule = RunRule(), preferred: str | None = None, tolerance: float = 0.1) -> RunPlan:
    """A run plan for ``budget_minutes`` that keeps what is trained (``train --budget`` / ``--resume`` with a new
    budget): the plans stay as they are (their folds stay valid), so no plan is made cheaper and nothing is
    probed again; :func:`allocate` spends the whole budget as if from the start, a trained fold the new plan
    gives more time becomes a ``continue`` part, and trained folds it gives no more time are kept as they are.

    Parameters
    ----------
    trained_minutes
        ``(configuration, fold)`` -> training minutes of every finished fold.
    preferred
        The configuration strategies 2-4 continue (the earlier run's choice).
    tolerance
        A trained fold within this fraction of its new minutes is not extended.
    """
    speeds = configuration_speeds(plans, seconds_per_mac)
    previous = {n: c.previous_stage for n, c in plans.configurations.items() if c.previous_stage}
    alloc = allocate(budget_minutes * 60.0, speeds, num_cases, num_folds, previous,
                     dataclasses.replace(rule, probe_share=0.0), preferred)
    parts: list[RunPart] = []
    for p in alloc.parts:
        fresh = [f for f in p.folds if (p.configuration, f) not in trained_minutes]
        longer = [f for f in p.folds if (p.configuration, f) in trained_minutes
                  and trained_minutes[(p.configuration, f)] < p.minutes * (1 - tolerance)]
        done = [f for f in p.folds if f not in fresh and f not in longer]
        if done:
            parts.append(dataclasses.replace(p, folds=tuple(done),
                                             validation_minutes=p.validation_minutes * len(done) / len(p.folds),
                                             reason="trained already; " + p.reason))
        for f in longer:
            before = round(trained_minutes[(p.configuration, f)], 2)
            parts.append(dataclasses.replace(
                p, kind="continue", folds=(f,), start_minutes=before,
                validation_minutes=p.validation_minutes / len(p.folds),
                reason=f"trained for {before:g} min by the earlier run plan: continued to {p.minutes:g} min (same "
                       f"plans, so nothing is lost); " + p.reason))
        if fresh:
            parts.append(dataclasses.replace(p, folds=tuple(fresh),
                                             validation_minutes=p.validation_minutes * len(fresh) / len(p.folds)))
    alloc = dataclasses.replace(alloc, parts=tuple(parts))
    run = _record(alloc, plans, budget_minutes, device, seconds_per_mac, rule.target_iterations, speeds, num_cases,
                  num_folds)
    run = dataclasses.replace(run, earlier_minutes=round(sum(p.start_minutes * len(p.folds) for p in run.parts
                                                             if p.kind == "continue"), 2))
    _check_trainable(run)
    return run


def run_plan_table(run: RunPlan) -> str:
    """The run plan as printed before training: part, configuration, fold(s), minutes, expected iterations,
    reason."""
    rows = [("part", "configuration", "fold(s)", "minutes", "~iterations", "reason")]
    for i, p in enumerate(run.parts, 1):
        conf = p.configuration or " or ".join(p.candidates)
        each = (f"{p.start_minutes:g}->" if p.start_minutes else "") + f"{p.minutes:g}" + (
            " each" if len(p.folds) > 1 else "")
        if p.validate:
            each += f" +{p.validation_minutes:g} val"
        rows.append((f"{i} {p.kind}", conf, ",".join(p.folds), each, f"{p.iterations:,}", p.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"run plan for {run.dataset}: {run.strategy}, {run.budget_minutes:g} minutes of wall clock for the whole "
             f"training run ({run.device}, {run.seconds_per_tmac:.3g} s per 10^12 multiply-accumulates)"]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:5], widths)) + "  " + r[5])
    lines.insert(2, "  ".join("-" * w for w in widths) + "  ------")
    kept = (f"kept: {run.selection_minutes:g} min for "
            + ("model selection (find-best on the cross-validation)" if run.selection == "find-best"
               else "choosing postprocessing on the validation and keeping best.json current")
            + f", {run.overhead_minutes:g} min for start-ups; planned in all {run.planned_minutes:.1f} of "
              f"{run.budget_minutes:g} min")
    lines.append(kept)
    if run.predict:
        lines.append("predict will use: " + "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in run.predict.items()))
    lines += [f"note: {n}" for n in run.notes]
    return "\n".join(lines)


def trained_configurations(run: RunPlan, plans: Plans) -> list[str]:
    """Configurations a run plan trains (probe candidates included), in the plans' order (what ``plan --budget``
    preprocesses)."""
    used = _trained(run.parts)
    return [name for name in plans.configurations if name in used]


def _trained(parts: Sequence[RunPart]) -> set[str]:
    """The configurations ``parts`` train, probe candidates included."""
    return {p.configuration for p in parts if p.configuration} | {c for p in parts for c in p.candidates}
