"""One wall-clock budget for a whole training run, spent where accuracy comes from (``autoseg plan --budget``).

nnU-Net trains every configuration x 5 folds for 250,000 iterations each and picks the best by cross-validation.
With little time, splitting it evenly over all of those spreads it thinly: measured on Hippocampus (2-core CPU,
20 minutes), 2 configurations x 5 folds got 41-55 iterations per fold and hidden-test Dice 0.576 / 0.699 (the 2d
folds reached 0.000), while the same 20 minutes on one 3d_fullres fold gave 0.855 / 0.847. At 12.3 minutes (~400
iterations) per fold, 2d folds reached Dice 0.2-0.4 and 3d_fullres folds 0.85
(``benchmarks/results/automl_hippocampus.txt``). A model first needs enough iterations to learn; folds,
ensembles and model selection only pay once each model has them. :func:`allocate` therefore takes the first of
these strategies, largest first, whose every model reaches its iterations:

1. **nnU-Net AutoML** — every configuration x every fold, each fold at least ``ensemble_iterations``, equal
   time per fold (configurations compared at equal cost), then ``find-best`` with the pair ensembles and the
   postprocessing on the cross-validation. With a large budget this is exactly nnU-Net's AutoML (no fold trains
   longer than nnU-Net's 250,000 iterations).
2. **cross-validation** of one configuration — every fold at least ``ensemble_iterations``: a 5-fold ensemble and
   postprocessing chosen on every case's validation.
3. **fold 0 + all** — two models of at least ``ensemble_iterations`` each: fold 0 (its validation chooses the
   postprocessing and scores the model) and one on all cases (a quarter more training data than a fold); both
   are averaged at prediction. Five folds would cost 2.5x as much for an ensemble of models that saw less data.
4. **one fold** — everything on fold 0 of one configuration: the budget is too small for more than one model to
   learn, and one model trained longer beats several trained briefly.

The configuration of strategies 2-4 is nnU-Net's default: ``3d_fullres`` for 3D data, ``2d`` for 2D data (the
cascade needs every fold of its low-resolution stage, so it only enters with strategy 1). When the budget
affords it — the probes of the other candidates cost at most ``probe_share`` of the budget, each probe gets
``probe_iterations``, and the winner's fold 0 is still at least twice its probe — fold 0 of every candidate is
first trained for the same short time (successive halving with one round); the one with the best smoothed
pseudo-Dice continues, the others are dropped. The strategy after the probes is decided with the slowest
candidate's speed, so it holds whichever probe wins.

Iterations are priced from each configuration's seconds per iteration (the compute model at the device's measured
throughput, :func:`autoseg.planning.budget.plan_seconds_per_iteration`), so the rule is the same on a CPU or a
GPU; below ``target_iterations`` the plans' budget ladder (:mod:`autoseg.planning.budget`) makes a plan cheaper
until it reaches them (:func:`expected_iterations`). What is kept for validation (sliding window with mirroring,
priced per case by :func:`validation_seconds_per_case`), for start-up and for selection is taken off the budget
first. Everything here is pure: no torch, no files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

from autoseg.planning.budget import MIN_ITERATIONS, NNUNET_ITERATIONS
from autoseg.schema.run_plan import RunPart

#: Iterations each model must reach before a second model (more folds, a model on all cases, other
#: configurations) is trained. Not yet measured (issue 25, "the ladder, measured"): on Hippocampus 400-600
#: iterations gave fold-0 Dice 0.84-0.86 and nnU-Net's 250,000 iterations x 5 folds give 0.89 in cross-validation,
#: so in a short run more iterations of one model buy far more than an ensemble (nnU-Net reports about a point of
#: Dice for its 5-fold ensemble). 5,000 is where this project's runs stop being short runs (the short-run recipe's
#: threshold, :data:`autoseg.training.schedule.SHORT_RUN_ITERATIONS`): a model is past its steep start there.
ENSEMBLE_ITERATIONS = 5000
#: Iterations of a probe: on Hippocampus 160 iterations of the short-run recipe reached fold-0 Dice 0.82
#: (``benchmarks/results/short_schedule.txt``), enough to tell a configuration that learns from one that does not.
PROBE_ITERATIONS = 150
#: Largest share of the budget the probes of the configurations that lose may cost.
PROBE_SHARE = 0.15
#: Below this many iterations a model learns little (on Hippocampus, ~40 per fold gave Dice 0): the plan warns.
MIN_USEFUL_ITERATIONS = 300
#: Start-up of one part (network, data-loading processes, the first steps), s.
PART_OVERHEAD_SECONDS = 30.0
#: Reading and scoring one case's prediction in model selection (per candidate and postprocessing variant), s.
SELECTION_SECONDS_PER_CASE = 0.5
#: Sliding-window validation: the tile step, as a fraction of the patch (the validation's and predict's default).
VALIDATION_STEP = 0.5
#: Per-case cost of a validation besides the network (resampling to the raw geometry, writing, scoring), s.
VALIDATION_CASE_SECONDS = 1.0
#: The smallest training time a part is worth starting for, s.
MIN_PART_SECONDS = 30.0
#: Largest share of the budget the mirrored final validations may cost. Hippocampus fold 0 (42 cases) takes ~6 min
#: to validate with mirroring on this project's CPU, ~1.3 min without: in a 20-minute budget the difference is 40%
#: more training, while mirroring adds well under a point of Dice to the validation score.
MIRROR_SHARE = 0.1


@dataclass(frozen=True)
class ConfigurationSpeed:
    """How fast one configuration trains and validates on the device at hand.

    Attributes
    ----------
    seconds_per_iteration
        One training iteration of its memory-only (nnU-Net) plan, s.
    cheapest_seconds_per_iteration
        One iteration of the cheapest plan the budget ladder has for it, s (``None``: the plan cannot get cheaper,
        e.g. plans already trained).
    validation_seconds_per_case
        Sliding-window validation of one median case with mirroring (nnU-Net's), s.
    unmirrored_validation_seconds_per_case
        The same without mirroring, s (``None``: as with mirroring).
    """

    seconds_per_iteration: float
    cheapest_seconds_per_iteration: float | None = None
    validation_seconds_per_case: float = 0.0
    unmirrored_validation_seconds_per_case: float | None = None


@dataclass(frozen=True)
class RunRule:
    """The numbers of the allocation rule (module docstring); each is a parameter so measurements can change it.

    Attributes
    ----------
    target_iterations
        Iterations the plans' budget ladder fits each fold to reach (``--min-iterations``).
    ensemble_iterations
        Iterations every model must get before a second model is trained.
    probe_iterations
        Iterations of a probe of a candidate configuration (at its memory-only plan's speed).
    probe_share
        Largest share of the budget the losing probes may cost (0: never probe).
    min_useful_iterations
        Below this the plan warns that the model will learn little.
    part_overhead_seconds
        Start-up of each part, s.
    selection_seconds_per_case
        Model selection's cost per case and candidate, s.
    full_iterations
        No fold trains longer than this (nnU-Net's 1000 epochs x 250 iterations).
    mirror_share
        The final validations mirror (nnU-Net's test-time augmentation) while all of them together cost at most
        this share of the budget; beyond it they run without mirroring (2^dimensions fewer network passes) and
        the time goes to training.
    """

    target_iterations: int = MIN_ITERATIONS
    ensemble_iterations: int = ENSEMBLE_ITERATIONS
    probe_iterations: int = PROBE_ITERATIONS
    probe_share: float = PROBE_SHARE
    min_useful_iterations: int = MIN_USEFUL_ITERATIONS
    part_overhead_seconds: float = PART_OVERHEAD_SECONDS
    selection_seconds_per_case: float = SELECTION_SECONDS_PER_CASE
    full_iterations: int = NNUNET_ITERATIONS
    mirror_share: float = MIRROR_SHARE


@dataclass(frozen=True)
class Allocation:
    """What :func:`allocate` decided.

    Attributes
    ----------
    strategy
        One of :data:`autoseg.schema.run_plan.STRATEGIES`.
    parts
        What to train, in order (iterations priced as in :func:`expected_iterations`).
    fold_minutes
        Training minutes of one fold of the configurations trained (what their plans are fitted to).
    selection_seconds, overhead_seconds
        Kept for model selection, and for the parts' start-ups, s.
    predict
        Configuration -> folds averaged at prediction (empty: decided by ``find-best`` or by the probes).
    selection
        ``"find-best"`` or ``"validation"`` (see :class:`autoseg.schema.run_plan.RunPlan`).
    notes
        Warnings.
    """

    strategy: str
    parts: tuple[RunPart, ...]
    fold_minutes: float
    selection_seconds: float
    overhead_seconds: float
    predict: dict[str, tuple[str, ...]]
    selection: str
    notes: tuple[str, ...] = ()


def expected_iterations(speed: ConfigurationSpeed, seconds: float, target: int = MIN_ITERATIONS) -> int:
    """Training iterations of a configuration in ``seconds`` once its plan is fitted to them.

    The budget ladder keeps the memory-only plan when it reaches ``target`` and otherwise takes cheaper plans
    until one does, down to its cheapest.

    Examples
    --------
    >>> fast = ConfigurationSpeed(2.0, 0.5)
    >>> expected_iterations(fast, 2000.0), expected_iterations(fast, 600.0), expected_iterations(fast, 100.0)
    (1000, 500, 200)
    >>> expected_iterations(ConfigurationSpeed(2.0), 600.0)  # a fixed plan
    300
    """
    if seconds <= 0:
        return 0
    full = seconds / speed.seconds_per_iteration
    if full >= target or speed.cheapest_seconds_per_iteration is None:
        return int(full)
    return int(min(target, seconds / min(speed.cheapest_seconds_per_iteration, speed.seconds_per_iteration)))


def preferred_configuration(configurations: Sequence[str]) -> str:
    """nnU-Net's default: ``3d_fullres`` when planned (3D data), else ``2d`` (2D data), else the first.

    Examples
    --------
    >>> preferred_configuration(["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"]), preferred_configuration(["2d"])
    ('3d_fullres', '2d')
    """
    for name in ("3d_fullres", "2d"):
        if name in configurations:
            return name
    return configurations[0]


def minutes(seconds: float) -> float:
    """``seconds`` in minutes, rounded to 0.01 (how the run plan writes times)."""
    return round(seconds / 60.0, 2)


def _fmt_minutes(seconds: float) -> str:
    m = seconds / 60.0
    return f"{m / 60:.1f} h" if m >= 120 else f"{m:.0f} min" if m >= 10 else f"{m:.1f} min"


def _part(kind: str, configuration: str, folds: Sequence[str], seconds: float, speed: ConfigurationSpeed,
          rule: RunRule, validate: bool, validation_seconds: float, reason: str,
          candidates: Sequence[str] = ()) -> RunPart:
    its = expected_iterations(speed, seconds, rule.target_iterations)
    return RunPart(kind=kind, configuration=configuration, folds=tuple(folds), minutes=minutes(seconds),
                   iterations=its, seconds_per_iteration=round(seconds / its, 3) if its else speed.seconds_per_iteration,
                   validate=validate, validation_minutes=minutes(validation_seconds * len(folds)) if validate else 0.0,
                   reason=reason, candidates=tuple(candidates))


def allocate(budget_seconds: float, speeds: Mapping[str, ConfigurationSpeed], num_cases: int, num_folds: int = 5,
             previous_stage: Mapping[str, str] | None = None, rule: RunRule = RunRule(),
             preferred: str | None = None) -> Allocation:
    """Spend ``budget_seconds`` of wall clock on the parts of a training run (module docstring).

    The final validations mirror as nnU-Net's do while they cost at most ``rule.mirror_share`` of the budget;
    otherwise the parts are allocated again with validations without mirroring (``RunPart.mirror`` false).

    Parameters
    ----------
    budget_seconds
        The whole training run: training, validations, start-ups and model selection, s.
    speeds
        Configuration -> its speed on the device, in the plans' order (a low-resolution stage before its cascade).
    num_cases
        Training cases (a fold validates ``num_cases / num_folds`` of them).
    num_folds
        Cross-validation folds (nnU-Net's 5).
    previous_stage
        Cascade stage -> the configuration whose every fold it needs.
    rule
        The rule's numbers.
    preferred
        Configuration of strategies 2-4 when there are no probes (default :func:`preferred_configuration`).

    Returns
    -------
    Allocation
        The parts, with each part's reason.

    Examples
    --------
    >>> speeds = {"2d": ConfigurationSpeed(2.0, 0.5, 5.0), "3d_fullres": ConfigurationSpeed(2.4, 0.6, 9.0)}
    >>> allocate(20 * 60, speeds, 260).strategy  # 20 minutes on a CPU: one fold of 3d_fullres
    'one fold'
    >>> [p.configuration for p in allocate(20 * 60, speeds, 260).parts]
    ['3d_fullres']
    >>> allocate(10 ** 8, speeds, 260).strategy  # a large budget: nnU-Net's AutoML
    'nnU-Net AutoML'
    """
    alloc = _allocate(budget_seconds, speeds, num_cases, num_folds, previous_stage, rule, preferred)
    mirrored = sum(p.validation_minutes for p in alloc.parts) * 60
    if mirrored <= rule.mirror_share * budget_seconds:
        return alloc
    plain = {c: dataclasses.replace(s, validation_seconds_per_case=s.unmirrored_validation_seconds_per_case
                                    if s.unmirrored_validation_seconds_per_case is not None
                                    else s.validation_seconds_per_case) for c, s in speeds.items()}
    alloc = _allocate(budget_seconds, plain, num_cases, num_folds, previous_stage, rule, preferred)
    why = (f"; validation without mirroring: mirrored, the validations would take {_fmt_minutes(mirrored)}, more "
           f"than {rule.mirror_share:.0%} of the budget")
    parts = tuple(dataclasses.replace(p, mirror=False, reason=p.reason + why) if p.validate else p
                  for p in alloc.parts)
    return dataclasses.replace(alloc, parts=parts)


def _allocate(budget_seconds: float, speeds: Mapping[str, ConfigurationSpeed], num_cases: int, num_folds: int,
              previous_stage: Mapping[str, str] | None, rule: RunRule, preferred: str | None) -> Allocation:
    """:func:`allocate` at the given validation speeds: nnU-Net's AutoML when every configuration x fold gets its
    iterations, else one configuration's strategy, after probes of the candidates when they pay."""
    previous_stage = dict(previous_stage or {})
    if not speeds:
        raise ValueError("no configuration to train")
    price = _Pricing(speeds, rule, num_cases, num_folds)
    automl, automl_needs = _automl(price, budget_seconds, previous_stage, preferred)
    if automl is not None:
        return automl
    candidates = [c for c in speeds if c not in previous_stage]
    first = preferred if preferred is not None else preferred_configuration(candidates)
    probes, probe_seconds, worst, (strategy, t, selection) = _probes(price, budget_seconds, candidates, first)
    return _one_configuration(price, budget_seconds, strategy, t, selection, worst, first, probes, probe_seconds,
                              automl_needs)


@dataclass(frozen=True)
class _Pricing:
    """What the parts of a run cost: the configurations' speeds, the rule, the run's cases and folds."""

    speeds: Mapping[str, ConfigurationSpeed]
    rule: RunRule
    num_cases: int
    num_folds: int

    @property
    def n_val(self) -> float:
        """Validation cases of one fold."""
        return self.num_cases / max(self.num_folds, 1)

    def val(self, c: str) -> float:
        """Seconds of one fold's validation of ``c``."""
        return self.speeds[c].validation_seconds_per_case * self.n_val

    def its(self, c: str, seconds: float) -> int:
        return expected_iterations(self.speeds[c], seconds, self.rule.target_iterations)

    def cap(self, c: str, seconds: float) -> float:
        """No fold trains longer than nnU-Net's own length."""
        return min(seconds, self.rule.full_iterations * self.speeds[c].seconds_per_iteration)

    def slowest(self, pool: Sequence[str]) -> ConfigurationSpeed:
        """The strategy after the probes must hold whichever wins: it is decided with the slowest numbers."""
        speeds = [self.speeds[c] for c in pool]
        return ConfigurationSpeed(max(s.seconds_per_iteration for s in speeds),
                                  max((s.cheapest_seconds_per_iteration or s.seconds_per_iteration) for s in speeds),
                                  max(s.validation_seconds_per_case for s in speeds))

    def single(self, budget: float, worst: ConfigurationSpeed) -> tuple[str, float, float]:
        """(strategy, training seconds per fold, selection seconds) for one configuration in ``budget``."""
        rule, n_val, num_cases, num_folds = self.rule, self.n_val, self.num_cases, self.num_folds
        over, per_case = rule.part_overhead_seconds, rule.selection_seconds_per_case
        v = worst.validation_seconds_per_case * n_val
        cv_sel = per_case * num_cases * 2 + per_case * n_val * num_folds
        t = (budget - cv_sel - num_folds * (over + v)) / num_folds
        if expected_iterations(worst, t, rule.target_iterations) >= rule.ensemble_iterations:
            return "cross-validation", t, cv_sel
        sel = per_case * n_val * 3
        t = (budget - sel - 2 * over - v) / 2
        if expected_iterations(worst, t, rule.target_iterations) >= rule.ensemble_iterations:
            return "fold 0 + all", t, sel
        sel = per_case * n_val * 2
        return "one fold", budget - sel - over - v, sel



def _automl(price: _Pricing, budget_seconds: float, previous_stage: dict[str, str], preferred: str | None
            ) -> tuple[Allocation | None, float]:
    """1. nnU-Net's AutoML, every configuration (a cascade with its low-resolution stage) x every fold, when each
    gets :attr:`RunRule.ensemble_iterations`; and the seconds it would need (for the reasons of smaller plans)."""
    speeds, rule, num_folds, num_cases, n_val = price.speeds, price.rule, price.num_folds, price.num_cases, price.n_val
    names, folds = list(speeds), [str(k) for k in range(num_folds)]
    over, per_case = rule.part_overhead_seconds, rule.selection_seconds_per_case
    val, its, cap = price.val, price.its, price.cap
    every = [c for c in names if previous_stage.get(c) is None or previous_stage[c] in names]
    n = len(every)
    automl_selection = per_case * num_cases * (n + n * (n - 1) // 2 + 1) + per_case * n_val * n * num_folds
    automl_fixed = automl_selection + sum(num_folds * (over + val(c)) for c in every)
    automl_t = (budget_seconds - automl_fixed) / (n * num_folds)
    automl_needs = automl_fixed + n * num_folds * rule.ensemble_iterations * max(speeds[c].seconds_per_iteration
                                                                                 for c in every)
    if automl_t > 0 and all(its(c, automl_t) >= rule.ensemble_iterations for c in every):
        lead = preferred if preferred in every else preferred_configuration(every)
        order = sorted(every, key=lambda c: (c != lead, names.index(c)))  # the default first: anytime
        parts = tuple(_part("train", c, folds, cap(c, automl_t), speeds[c], rule, True, val(c),
                            f"nnU-Net's AutoML: every configuration x {num_folds} folds at equal time (configurations "
                            f"compared at equal cost), then find-best with pair ensembles and postprocessing"
                            + (f"; after every fold of {previous_stage[c]} (the cascade trains on its predictions)"
                               if c in previous_stage else "")
                            + ("; nnU-Net's full length reached" if cap(c, automl_t) < automl_t else ""))
                      for c in order)
        return Allocation("nnU-Net AutoML", parts, minutes(automl_t), automl_selection,
                          over * n * num_folds, {}, "find-best"), automl_needs
    return None, automl_needs


def _probes(price: _Pricing, budget_seconds: float, candidates: list[str], first: str):
    """2. Probes of the candidate configurations (successive halving) when they cost at most
    :attr:`RunRule.probe_share` of the budget and leave the winner its iterations: ``(probes, seconds of each,
    the speed the strategy is decided at, (strategy, training seconds per fold, selection seconds))``."""
    rule, its, single, slowest = price.rule, price.its, price.single, price.slowest
    over = rule.part_overhead_seconds
    probes: list[str] = []
    probe_seconds = 0.0
    worst = price.speeds[first]
    strategy, t, selection = single(budget_seconds, worst)
    if len(candidates) > 1 and rule.probe_share > 0:
        pool_speed = slowest(candidates)
        _, t0, _ = single(budget_seconds, pool_speed)
        # a probe runs the plan fitted to the winner's fold: priced at that plan's speed
        probe_seconds = max((rule.probe_iterations * t0 / max(its(c, t0), 1) for c in candidates), default=0.0)
        losers = (len(candidates) - 1) * (probe_seconds + over)
        if t0 > 0 and losers <= rule.probe_share * budget_seconds:
            body = budget_seconds - losers - over  # the winner's continuation starts once more
            s2, t2, sel2 = single(body, pool_speed)
            if t2 > 0:  # priced again at the winner's final fold time, so every probe gets its iterations
                probe_seconds = max(rule.probe_iterations * t2 / max(its(c, t2), 1) for c in candidates)
                body = budget_seconds - (len(candidates) - 1) * (probe_seconds + over) - over
                s2, t2, sel2 = single(body, pool_speed)
            if t2 >= 2 * probe_seconds and expected_iterations(pool_speed, t2, rule.target_iterations) \
                    >= rule.target_iterations:
                probes = [first] + [c for c in candidates if c != first]
                worst, (strategy, t, selection) = pool_speed, (s2, t2, sel2)
    return probes, probe_seconds, worst, (strategy, t, selection)


def _one_configuration(price: _Pricing, budget_seconds: float, strategy: str, t: float, selection: float,
                       worst: ConfigurationSpeed, first: str, probes: list[str], probe_seconds: float,
                       automl_needs: float) -> Allocation:
    """3. The parts of one configuration's strategy (one fold, fold 0 + all, or cross-validation), after its
    probes, with the reasons and warnings printed for them."""
    notes: list[str] = []
    t = max(t, 0.0)
    if t < MIN_PART_SECONDS:
        notes.append(f"a budget of {_fmt_minutes(budget_seconds)} leaves {t:.0f} s of training after the "
                     f"validation and start-up it needs: too little to train a model")
    parts = _probe_parts(price, probes, probe_seconds, t)
    trained, predict, selection_kind = _strategy_parts(price, strategy, t, worst, first, probes, automl_needs)
    parts += trained
    notes += _iteration_notes(parts[-1], price.rule)
    if probes:  # the winner's fold 0 was trained for the probe's time before it continues
        parts[len(probes)] = dataclasses.replace(parts[len(probes)], start_minutes=minutes(probe_seconds))
    overhead = price.rule.part_overhead_seconds * sum(len(p.folds) for p in parts)
    return Allocation(strategy, tuple(parts), minutes(t), selection, overhead, predict, selection_kind,
                      tuple(notes))


def _probe_parts(price: _Pricing, probes: Sequence[str], probe_seconds: float, t: float) -> list[RunPart]:
    """The probes: fold 0 of every candidate in ``probes`` for ``probe_seconds``, at the plan fitted to the
    winner's fold of ``t`` training seconds; the best continues, the others are dropped."""
    rule, over = price.rule, price.rule.part_overhead_seconds
    parts = []
    for c in probes:
        step = t / max(price.its(c, t), 1)  # the probe trains the plan fitted to the winner's fold
        parts.append(RunPart(
            kind="probe", configuration=c, folds=("0",), minutes=minutes(probe_seconds),
            iterations=int(probe_seconds / step + 1e-6), seconds_per_iteration=round(step, 3), validate=False,
            validation_minutes=0.0,
            reason=f"probe: fold 0 of {c} for {_fmt_minutes(probe_seconds)} of its {_fmt_minutes(t)} (at least "
                   f"{rule.probe_iterations} iterations); the probe with the best smoothed pseudo-Dice continues, "
                   f"the others ({_fmt_minutes((len(probes) - 1) * (probe_seconds + over))}, at most "
                   f"{rule.probe_share:.0%} of the budget) are dropped"))
    return parts


def _strategy_parts(price: _Pricing, strategy: str, t: float, worst: ConfigurationSpeed, first: str,
                    probes: list[str], automl_needs: float
                    ) -> tuple[list[RunPart], dict[str, tuple[str, ...]], str]:
    """The parts that train the configuration for ``strategy``, ``t`` seconds each: ``first``, or the best of
    ``probes`` when there are probes. Each reason says what a larger budget would buy.

    Returns
    -------
    parts, predict, selection
        The parts; configuration -> folds averaged at prediction (empty after probes: the winner is not known
        yet); ``"validation"`` or ``"find-best"``.
    """
    rule, num_folds, num_cases, n_val = price.rule, price.num_folds, price.num_cases, price.n_val
    folds = [str(k) for k in range(num_folds)]
    over, per_case = rule.part_overhead_seconds, rule.selection_seconds_per_case
    v = worst.validation_seconds_per_case * n_val
    c_name = "" if probes else first
    probe_note = (f" ({' or '.join(probes)}: the best of the probes)" if probes else
                  f" (nnU-Net's default for {'2D' if first == '2d' else '3D'} data)")
    if strategy == "one fold":
        fold0_all_needs = (2 * rule.ensemble_iterations * worst.seconds_per_iteration + per_case * n_val * 3
                           + 2 * over + v)
        ladder = ("" if worst.cheapest_seconds_per_iteration is None else
                  f"; the plan is made cheaper until it reaches {rule.target_iterations} iterations where it must")
        parts = [_fold0_part(price, t, worst, c_name, probes,
                             f"one model{probe_note}: the whole budget on fold 0, whose validation (1/{num_folds} "
                             f"of the cases) chooses postprocessing and scores the model{ladder}. Two models "
                             f"(fold 0 + all cases) need about {_fmt_minutes(fold0_all_needs)}, each "
                             f"{rule.ensemble_iterations} iterations at nnU-Net's plan")]
        return parts, ({c_name: ("0",)} if c_name else {}), "validation"
    if strategy == "fold 0 + all":
        cv_needs = (num_folds * (rule.ensemble_iterations * worst.seconds_per_iteration + over + v)
                    + per_case * num_cases * 2 + per_case * n_val * num_folds)
        parts = [_fold0_part(price, t, worst, c_name, probes,
                             f"validation model{probe_note}: fold 0's validation chooses postprocessing and scores "
                             f"the model; it is also half of the final ensemble"),
                 _part("train", c_name, ("all",), t, worst, rule, False, 0.0,
                       f"a model on all cases (a quarter more training data than a fold), averaged with fold 0 "
                       f"at prediction; {num_folds} folds of {rule.ensemble_iterations} iterations need about "
                       f"{_fmt_minutes(cv_needs)}", candidates=probes)]
        return parts, ({c_name: ("0", "all")} if c_name else {}), "validation"
    parts = [_fold0_part(price, t, worst, c_name, probes, f"cross-validation{probe_note}: fold 0 of {num_folds}"),
             _part("train", c_name, tuple(folds[1:]), t, worst, rule, True, v,
                   f"cross-validation: every fold at least {rule.ensemble_iterations} iterations gives a "
                   f"{num_folds}-fold ensemble and postprocessing chosen on every case; every configuration "
                   f"x {num_folds} folds (nnU-Net's AutoML) needs about {_fmt_minutes(automl_needs)}",
                   candidates=probes)]
    return parts, ({c_name: tuple(folds)} if c_name else {}), "find-best"


def _fold0_part(price: _Pricing, t: float, worst: ConfigurationSpeed, configuration: str, probes: list[str],
                reason: str) -> RunPart:
    """Fold 0 of the configuration, validated: trained for ``t`` seconds, or after probes the best probe's fold 0
    continued to them."""
    start = f"the best probe's fold 0 continues to {_fmt_minutes(t)}; " if probes else ""
    return _part("continue" if probes else "train", configuration, ("0",), t, worst, price.rule, True,
                 worst.validation_seconds_per_case * price.n_val, start + reason, candidates=probes)


def _iteration_notes(main: RunPart, rule: RunRule) -> list[str]:
    """The warning for the main part's model when it gets fewer iterations than it needs to learn, or than the
    plans aim for."""
    if 0 < main.iterations < rule.min_useful_iterations:
        return [f"the budget gives each model only ~{main.iterations} iterations (fewer than "
                f"{rule.min_useful_iterations}: it will learn little; on Hippocampus ~40 iterations gave Dice 0); "
                f"raise --budget"]
    if 0 < main.iterations < rule.target_iterations:
        return [f"the budget gives each model ~{main.iterations} iterations, short of the "
                f"{rule.target_iterations} the plans aim for (they keep their context rather than shrink the "
                f"patch further, or are at their cheapest): a longer budget trains better"]
    return []
