"""The run-plan rule: one wall-clock budget for the whole training run, spent where accuracy comes from.

Table-driven: budget and measured speeds in, parts out. Speeds are fakes (seconds per iteration of the memory-only
plan, of the ladder's cheapest plan, and of validating one case), so the same table stands for a CPU or a GPU.
"""

import dataclasses

import pytest

from autoseg.errors import AutosegError
from autoseg.planning.allocation import (ConfigurationSpeed, RunRule, allocate, expected_iterations,
                                         preferred_configuration)
from autoseg.planning.run_plan import configuration_speeds, extend_run_plan, fit_run_plan, run_plan_table
from autoseg.schema.base import load_json, save_json
from autoseg.schema.run_plan import STRATEGIES, RunPlan

#: A 2-core CPU on Hippocampus (measured: ~2.4 s per 3d_fullres iteration at the fitted plan, ~9 s to validate a
#: case with mirroring, about 5x less without; nnU-Net's memory-only 2d plan has batch 292 and is far slower per
#: iteration).
CPU = {"2d": ConfigurationSpeed(8.0, 0.5, 6.0, 1.5), "3d_fullres": ConfigurationSpeed(2.4, 0.6, 9.0, 1.8)}
#: A GPU: the same configurations ~50x faster.
GPU = {"2d": ConfigurationSpeed(0.16, 0.01, 0.12, 0.03), "3d_fullres": ConfigurationSpeed(0.048, 0.012, 0.18, 0.04)}
#: A dataset with a cascade, on a GPU.
CASCADE = {"2d": ConfigurationSpeed(0.05, 0.01, 0.3), "3d_lowres": ConfigurationSpeed(0.08, 0.02, 1.0),
           "3d_fullres": ConfigurationSpeed(0.1, 0.02, 1.5), "3d_cascade_fullres": ConfigurationSpeed(0.1, 0.02, 1.6)}
PREVIOUS = {"3d_cascade_fullres": "3d_lowres"}
#: 2D images (DRIVE): the 2d configuration only.
TWO_D = {"2d": ConfigurationSpeed(4.6, 1.0, 20.0)}
FIVE = ("0", "1", "2", "3", "4")


def _shape(alloc):
    """(kind, configuration or the probes' candidates, folds) of every part."""
    return [(p.kind, p.configuration or "|".join(p.candidates), p.folds) for p in alloc.parts]


@pytest.mark.parametrize("name, speeds, previous, cases, minutes, strategy, parts, predict", [
    # the owners' Hippocampus measurement: 20 CPU minutes go to one 3d_fullres fold, not 2 x 5 thin folds
    ("hippocampus 20 min cpu", CPU, {}, 208, 20, "one fold", [("train", "3d_fullres", ("0",))],
     {"3d_fullres": ("0",)}),
    # an hour on the CPU: the probes of 2d would cost more than 15% of it, so still one 3d_fullres fold
    ("hippocampus 1 h cpu", CPU, {}, 208, 60, "one fold", [("train", "3d_fullres", ("0",))],
     {"3d_fullres": ("0",)}),
    # 2D data: the 2d configuration, fold 0
    ("drive 45 min cpu", TWO_D, {}, 20, 45, "one fold", [("train", "2d", ("0",))], {"2d": ("0",)}),
    # 10 GPU minutes: probes of both (24 s each), then one fold of the winner
    ("hippocampus 10 min gpu", GPU, {}, 208, 10, "one fold",
     [("probe", "3d_fullres", ("0",)), ("probe", "2d", ("0",)), ("continue", "3d_fullres|2d", ("0",))], {}),
    # a GPU hour: probes, then the winner's fold 0 and a model on all cases (5 folds of 5000 iterations of the
    # slower candidate need ~70 min)
    ("hippocampus 1 h gpu", GPU, {}, 208, 60, "fold 0 + all",
     [("probe", "3d_fullres", ("0",)), ("probe", "2d", ("0",)), ("continue", "3d_fullres|2d", ("0",)),
      ("train", "3d_fullres|2d", ("all",))], {}),
    # 100 GPU minutes: the winner's 5-fold cross-validation fits
    ("hippocampus 100 min gpu", GPU, {}, 208, 100, "cross-validation",
     [("probe", "3d_fullres", ("0",)), ("probe", "2d", ("0",)), ("continue", "3d_fullres|2d", ("0",)),
      ("train", "3d_fullres|2d", ("1", "2", "3", "4"))], {}),
    # 12 CPU hours: still one model (two of 5000 iterations at 2d's 8 s need ~22 h)
    ("hippocampus 12 h cpu", CPU, {}, 208, 12 * 60, "one fold",
     [("probe", "3d_fullres", ("0",)), ("probe", "2d", ("0",)), ("continue", "3d_fullres|2d", ("0",))], {}),
    ("hippocampus 3 days cpu", CPU, {}, 208, 3 * 24 * 60, "cross-validation",
     [("probe", "3d_fullres", ("0",)), ("probe", "2d", ("0",)), ("continue", "3d_fullres|2d", ("0",)),
      ("train", "3d_fullres|2d", ("1", "2", "3", "4"))], {}),
    # a large budget: nnU-Net's AutoML, every configuration x 5 folds, the default configuration first
    ("hippocampus 1 week cpu", CPU, {}, 208, 7 * 24 * 60, "nnU-Net AutoML",
     [("train", "3d_fullres", FIVE), ("train", "2d", FIVE)], {}),
    ("hippocampus 1 day gpu", GPU, {}, 208, 24 * 60, "nnU-Net AutoML",
     [("train", "3d_fullres", FIVE), ("train", "2d", FIVE)], {}),
    # the cascade enters only with the full AutoML, after every fold of its low-resolution stage
    ("cascade 2 days gpu", CASCADE, PREVIOUS, 100, 48 * 60, "nnU-Net AutoML",
     [("train", "3d_fullres", FIVE), ("train", "2d", FIVE), ("train", "3d_lowres", FIVE),
      ("train", "3d_cascade_fullres", FIVE)], {}),
    ("cascade 1 h gpu", CASCADE, PREVIOUS, 100, 60, "cross-validation",
     [("probe", "3d_fullres", ("0",)), ("probe", "2d", ("0",)), ("probe", "3d_lowres", ("0",)),
      ("continue", "3d_fullres|2d|3d_lowres", ("0",)), ("train", "3d_fullres|2d|3d_lowres", ("1", "2", "3", "4"))],
     {}),
])
def test_allocation(name, speeds, previous, cases, minutes, strategy, parts, predict):
    alloc = allocate(minutes * 60, speeds, cases, 5, previous)
    assert alloc.strategy == strategy, name
    assert _shape(alloc) == parts, name
    assert alloc.predict == predict, name
    assert alloc.selection == ("find-best" if strategy in ("nnU-Net AutoML", "cross-validation") else "validation")
    planned = (sum(p.total_minutes for p in alloc.parts) + (alloc.overhead_seconds + alloc.selection_seconds) / 60)
    assert planned <= minutes * 1.01, name  # every part, validation, start-up and the selection fit the budget
    assert all(p.reason for p in alloc.parts)
    for p in alloc.parts:
        if p.kind != "probe":
            assert p.validate == (p.folds != ("all",)), name  # every cross-validation fold is validated
            assert p.iterations >= RunRule().target_iterations, name  # no part spread thin


def test_large_budget_is_nnunets_automl_at_equal_time_per_fold():
    alloc = allocate(10 ** 8, CPU, 208)
    assert alloc.strategy == "nnU-Net AutoML" and alloc.selection == "find-best"
    assert {p.configuration for p in alloc.parts} == set(CPU)
    assert all(p.folds == FIVE and p.validate for p in alloc.parts)
    # no fold trains longer than nnU-Net's 250,000 iterations
    assert all(p.iterations == 250_000 for p in alloc.parts)


def test_automl_folds_get_equal_time():
    alloc = allocate(30 * 24 * 3600, CPU, 208)
    assert alloc.strategy == "nnU-Net AutoML"
    assert len({p.minutes for p in alloc.parts}) == 1  # configurations compared at equal cost


def test_the_old_uniform_split_would_spread_thin():
    """The measured failure: 20 minutes over 2 configurations x 5 folds gave ~40 iterations per fold. The rule
    gives one model hundreds of iterations instead."""
    per_fold = 20 * 60 * 0.85 / 10  # the old rule: 15% kept, the rest split over 10 folds of memory-only plans
    fixed = {c: ConfigurationSpeed(s.seconds_per_iteration) for c, s in CPU.items()}
    assert expected_iterations(fixed["3d_fullres"], per_fold) == 42 and expected_iterations(fixed["2d"], per_fold) == 12
    one = allocate(20 * 60, CPU, 208).parts[0]
    assert one.configuration == "3d_fullres" and one.iterations >= RunRule().target_iterations > 10 * 42


def test_strategies_only_grow_with_the_budget():
    seen = []
    for minutes in (5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960):
        alloc = allocate(minutes * 60, CPU, 208)
        seen.append(STRATEGIES.index(alloc.strategy))
        # the main model never gets fewer iterations with more time
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == len(STRATEGIES) - 1


def test_device_agnostic_same_plan_from_a_faster_device():
    """The rule only sees seconds: a device k times faster with a budget k times smaller gets the same parts."""
    k = 37.0
    fast = {c: ConfigurationSpeed(s.seconds_per_iteration / k, s.cheapest_seconds_per_iteration / k,
                                  s.validation_seconds_per_case / k) for c, s in CPU.items()}
    rule = RunRule(part_overhead_seconds=0.0, selection_seconds_per_case=0.0)
    for minutes in (20, 300, 900, 3000, 30000):
        slow_alloc = allocate(minutes * 60, CPU, 208, rule=rule)
        fast_alloc = allocate(minutes * 60 / k, fast, 208, rule=rule)
        assert fast_alloc.strategy == slow_alloc.strategy
        assert _shape(fast_alloc) == _shape(slow_alloc)
        assert [p.iterations for p in fast_alloc.parts] == pytest.approx([p.iterations for p in slow_alloc.parts],
                                                                          rel=0.01, abs=2)


@pytest.mark.parametrize("rule, strategy", [
    (RunRule(), "one fold"),
    (RunRule(ensemble_iterations=2000), "fold 0 + all"),   # the measured "enough iterations" can move the tiers
    (RunRule(ensemble_iterations=800), "cross-validation"),
    (RunRule(ensemble_iterations=300), "nnU-Net AutoML"),
])
def test_the_thresholds_are_parameters(rule, strategy):
    assert allocate(4 * 3600, CPU, 208, rule=dataclasses.replace(rule, probe_share=0.0)).strategy == strategy


def test_no_probes_when_they_cost_too_much_or_are_switched_off():
    assert [p.kind for p in allocate(3600, GPU, 208, rule=RunRule(probe_share=0.0)).parts] == ["train", "train"]
    # on the CPU an hour's probes of 2d would cost ~20 min: more than 15%
    assert all(p.kind != "probe" for p in allocate(3600, CPU, 208).parts)


def test_probe_parts_are_short_and_equal():
    alloc = allocate(3600, GPU, 208)
    probes = [p for p in alloc.parts if p.kind == "probe"]
    assert len({p.minutes for p in probes}) == 1 and not any(p.validate for p in probes)
    winner = alloc.parts[len(probes)]
    assert winner.kind == "continue" and winner.start_minutes == probes[0].minutes
    assert winner.minutes >= 2 * probes[0].minutes
    losers = (len(probes) - 1) * probes[0].minutes
    assert losers <= RunRule().probe_share * 60
    assert all(p.iterations >= RunRule().probe_iterations for p in probes)


def test_the_iteration_target_is_a_parameter():
    """The ladder's target (what the plans are made cheaper to reach) is the rule's parameter: with 12 CPU minutes
    (~4.6 of them training after fold 0's mirrored validation) the default target makes the plan cheaper to ~460
    iterations, a target of 100 keeps nnU-Net's plan at ~110 and warns that it will learn little."""
    default = allocate(12 * 60, CPU, 208, rule=RunRule(mirror_share=1.0))
    low = allocate(12 * 60, CPU, 208, rule=RunRule(target_iterations=100, mirror_share=1.0))
    assert 400 < default.parts[0].iterations < 500 and "short of the 500" in default.notes[0]
    assert 100 <= low.parts[0].iterations < 130 and "learn little" in low.notes[0]


def test_expected_iterations_follow_the_ladder():
    s = ConfigurationSpeed(2.0, 0.5)
    assert expected_iterations(s, 2000) == 1000   # nnU-Net's plan reaches the target: unchanged
    assert expected_iterations(s, 600) == 500     # the ladder makes it cheaper until it reaches the target
    assert expected_iterations(s, 100) == 200     # ... down to its cheapest
    assert expected_iterations(s, 0) == 0


def test_preferred_configuration():
    assert preferred_configuration(list(CASCADE)) == "3d_fullres"
    assert preferred_configuration(["2d"]) == "2d"
    assert allocate(600, CASCADE, 100, previous_stage=PREVIOUS, preferred="2d",
                    rule=RunRule(probe_share=0)).parts[0].configuration == "2d"


# -- from a fingerprint: plans fitted to a fold's time, the record, the extension ------------------------------

@pytest.fixture(scope="module")
def tiny_fingerprint(tiny_raw, tmp_path_factory):
    from autoseg import api
    from autoseg.schema.fingerprint import Fingerprint

    result = api.plan(tiny_raw, tmp_path_factory.mktemp("ws"), progress=False, preprocess=False, num_workers=1)
    return load_json(Fingerprint, result.paths.fingerprint), result.plans


def _fit(fingerprint, minutes, seconds_per_tmac=60.0, **rule):
    from autoseg.planning.presets import load_preset

    return fit_run_plan(fingerprint, load_preset("default"), 8.0, minutes, "cpu", seconds_per_tmac * 1e-12,
                        RunRule(**rule))


def _hippocampus_like(fingerprint, n=208, shape=(36, 50, 35)):
    """The tiny fingerprint with Hippocampus' case count and median shape (1 mm isotropic)."""
    import dataclasses

    case = dataclasses.replace(fingerprint.cases[0], spacing=(1.0, 1.0, 1.0), shape_before_crop=shape,
                               shape_after_crop=shape)
    return dataclasses.replace(fingerprint, cases=tuple(dataclasses.replace(case, case_id=f"c{i:03d}")
                                                        for i in range(n)))


@pytest.mark.parametrize("seconds_per_tmac", [27.7, 100.0, 201.0, 600.0])
def test_fit_run_plan_plans_the_whole_budget_on_slow_devices(tiny_fingerprint, seconds_per_tmac):
    """A cheaper plan has more tiles to validate, so less time to train, so a cheaper plan again: whatever the
    device's speed, the run plan's parts are priced with the plans they train and fill the budget (at 201 s per
    10^12 MACs, a loaded 2-core CPU, Hippocampus at 20 minutes once left 8 minutes unplanned)."""
    fingerprint, _ = tiny_fingerprint
    plans, run = _fit(_hippocampus_like(fingerprint), 20, seconds_per_tmac)
    assert run.planned_minutes == pytest.approx(20, rel=0.02)
    # and each part is priced at the plan it trains
    speeds = configuration_speeds(plans, seconds_per_tmac * 1e-12)
    for part in run.parts:
        if part.kind == "train" and part.configuration:
            assert part.seconds_per_iteration == pytest.approx(speeds[part.configuration].seconds_per_iteration,
                                                               rel=0.01)


def test_fit_run_plan_small_budget_fits_the_plans_to_the_fold(tiny_fingerprint, tmp_path):
    fingerprint, _ = tiny_fingerprint
    plans, run = _fit(fingerprint, 2)
    assert run.strategy == "one fold" and [p.configuration for p in run.parts] == ["3d_fullres"]
    full = plans.configurations["3d_fullres"]
    assert full.budget is not None and full.budget.minutes == run.fold_minutes
    # plans.json keeps the step time to the ms: the iterations agree to that rounding
    assert run.parts[0].iterations == pytest.approx(run.fold_minutes * 60 / full.budget.seconds_per_iteration, rel=0.01)
    assert run.planned_minutes <= 2 * 1.02
    from autoseg.schema.base import sha256_of
    assert run.plans_sha256 == sha256_of(plans)
    save_json(run, tmp_path / "run_plan.json")  # JSON, no pickle, with its schema version
    assert load_json(RunPlan, tmp_path / "run_plan.json") == run
    table = run_plan_table(run)
    for word in ("part", "configuration", "fold(s)", "minutes", "~iterations", "reason", "3d_fullres", "one fold"):
        assert word in table


def test_fit_run_plan_large_budget_keeps_nnunets_plans(tiny_fingerprint):
    fingerprint, plain = tiny_fingerprint
    plans, run = _fit(fingerprint, 10 ** 6)
    assert run.strategy == "nnU-Net AutoML" and run.predict == {} and run.selection == "find-best"
    assert {p.configuration for p in run.parts} == set(plain.configurations)
    for name, c in plans.configurations.items():
        assert c.patch_size == plain.configurations[name].patch_size and c.budget.trade_offs == ()


def test_a_budget_too_small_to_train_is_refused(tiny_fingerprint):
    with pytest.raises(AutosegError, match="budget_minutes 0.5: the validation"):
        _fit(tiny_fingerprint[0], 0.5)


def test_extending_keeps_trained_folds_and_continues_them(tiny_fingerprint):
    fingerprint, _ = tiny_fingerprint
    plans, run = _fit(fingerprint, 2)
    fold0 = run.parts[0]
    bigger = extend_run_plan(plans, 30, "cpu", 60e-12, {("3d_fullres", "0"): fold0.minutes}, 8)
    assert bigger.plans_sha256 == run.plans_sha256  # the same plans: the trained fold stays valid
    first = bigger.parts[0]
    assert first.kind == "continue" and first.configuration == "3d_fullres" and first.folds == ("0",)
    assert first.start_minutes == pytest.approx(fold0.minutes) and first.minutes > fold0.minutes
    assert bigger.earlier_minutes == pytest.approx(fold0.minutes)
    assert bigger.planned_minutes <= 30 * 1.02
    # the same budget again: the fold is kept as it is
    same = extend_run_plan(plans, 2, "cpu", 60e-12, {("3d_fullres", "0"): fold0.minutes}, 8)
    assert [p.kind for p in same.parts] == ["train"] and same.parts[0].reason.startswith("trained already")


def test_validation_mirrors_only_where_it_costs_little():
    """At 20 CPU minutes the mirrored validation of fold 0 (42 cases x 9 s) would take a third of the budget: it
    runs without mirroring and the minutes go to training; with a large budget it mirrors as nnU-Net's does."""
    small = allocate(20 * 60, CPU, 208)
    mirrored = allocate(20 * 60, CPU, 208, rule=RunRule(mirror_share=1.0))
    assert not small.parts[0].mirror and "without mirroring" in small.parts[0].reason
    assert mirrored.parts[0].mirror
    assert small.parts[0].minutes > mirrored.parts[0].minutes + 4
    assert all(p.mirror for p in allocate(10 ** 8, CPU, 208).parts)


def test_the_same_rule_from_a_gpus_measured_throughput(tiny_fingerprint):
    """A fake GPU (0.5 s per 10^12 multiply-accumulates) with the same 3 minutes: nnU-Net's plans fit, the run plan
    is priced at its speed and records the device."""
    from autoseg.planning.presets import load_preset

    fingerprint, plain = tiny_fingerprint
    plans, run = fit_run_plan(fingerprint, load_preset("default"), 8.0, 3, "cuda:0", 0.5e-12)
    slow_plans, slow = _fit(fingerprint, 3, seconds_per_tmac=3000.0)
    assert run.device == "cuda:0" and run.seconds_per_tmac == 0.5
    assert all(c.budget.trade_offs == () for c in plans.configurations.values())
    assert any(c.budget.trade_offs for c in slow_plans.configurations.values())
    assert max(p.iterations for p in run.parts) > 10 * max(p.iterations for p in slow.parts)
