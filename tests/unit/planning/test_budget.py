"""The budget rule: nnU-Net's plan when it fits the time, else batch, trimmed patch, coarser spacing, width, then
smaller patch, in that order; and the plans it writes."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoseg.planning.budget import (CONTEXT_FLOOR, MAX_COARSENING, MIN_BATCH, MIN_COARSE_EDGE, MIN_PATCH_FRACTION,
                                     MIN_TRIM_COVERAGE, TimeBudget, budget_advice, coarser_spacings, fit_to_budget,
                                     plan_seconds_per_iteration)
from autoseg.planning.configuration import fit_configuration
from autoseg.planning.planner import make_plans
from autoseg.planning.presets import load_preset
from autoseg.schema.base import from_jsonable, load_json, sha256_of, to_jsonable
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import Plans

PRESET = load_preset("default")
EXAMPLES = Path(__file__).resolve().parents[3] / "plans" / "examples"
# (spacing, median shape, cases, classes) in the planned axis order
HIPPOCAMPUS = ((1.0, 1.0, 1.0), (36.0, 50.0, 35.0), 208, 3)
LA2018 = ((0.625, 0.625, 0.625), (88.0, 143.0, 193.0), 24, 2)
PROSTATE = ((3.6, 0.62, 0.62), (20.0, 320.0, 320.0), 32, 3)   # anisotropic: z already coarse
CPU = 30e-12      # s per MAC, about this 2-core CPU in fp32
GPU = 1 / 2.0e13  # a fake fast device


def fit(case, minutes, seconds_per_mac, min_iterations=500):
    spacing, median, cases, classes = case
    return fit_to_budget(spacing, median, math.prod(median) * cases, classes, 1, PRESET, 8.0, minutes * 60,
                         seconds_per_mac, min_iterations)


def nnunet(case):
    spacing, median, cases, classes = case
    return fit_configuration(spacing, median, math.prod(median) * cases, classes, PRESET, 8.0)


@pytest.mark.parametrize("case, minutes, device", [
    (HIPPOCAMPUS, 10_000, CPU), (LA2018, 100_000, CPU), (LA2018, 60, GPU), (HIPPOCAMPUS, 20, GPU),
    (PROSTATE, 60, GPU)])
def test_enough_time_keeps_nnunets_plan(case, minutes, device):
    got = fit(case, minutes, device)
    assert got.trade_offs == () and got.enough and got.choice == nnunet(case)
    assert got.spacing == case[0] and got.median_shape == case[1]


@pytest.mark.parametrize("case, minutes, rungs", [
    (HIPPOCAMPUS, 60, ["batch"]),
    (HIPPOCAMPUS, 30, ["batch", "patch"]),                        # trimmed: still larger than the median case
    (HIPPOCAMPUS, 5, ["batch", "patch", "spacing", "features"]),
    (HIPPOCAMPUS, 1, ["batch", "patch", "spacing", "features", "patch"]),
    (LA2018, 600, ["patch", "spacing"]),                          # batch is 2 already
    (LA2018, 60, ["patch", "spacing", "features"]),               # the width goes before the field of view
    (LA2018, 5, ["patch", "spacing", "features", "patch"]),
    (PROSTATE, 60, ["spacing", "features"]),                      # 20 slices: only in-plane axes coarsen
    (PROSTATE, 30, ["spacing", "features", "patch"]),
])
def test_short_budgets_give_up_in_the_documented_order(case, minutes, rungs):
    got = fit(case, minutes, CPU)
    assert [t.split()[0] for t in got.trade_offs] == rungs
    # the full target until the width goes; context is given up only for CONTEXT_FLOOR of it
    assert got.enough and got.iterations >= (500 if "features" not in rungs else math.ceil(CONTEXT_FLOOR * 500))
    assert got.choice.batch_size >= MIN_BATCH
    assert got.seconds_per_iteration == pytest.approx(plan_seconds_per_iteration(
        got.choice.architecture, got.choice.patch_size, got.choice.batch_size, 1, case[3], CPU))
    # never coarser than the limits, and the median shape follows the spacing
    ratio = np.asarray(got.spacing) / np.asarray(case[0])
    assert (ratio >= 1).all() and (ratio <= MAX_COARSENING + 1e-6).all()
    assert np.allclose(np.asarray(got.median_shape) * ratio, case[1])


def test_context_is_given_up_only_for_the_floor_of_the_iterations():
    """At 20 minutes LA2018's whole field of view at width 16 falls short of 500 iterations but not of the floor:
    it is kept (a smaller patch would reach 500); at 5 minutes the patch shrinks, as far as the floor needs."""
    kept, shrunk = fit(LA2018, 20, CPU), fit(LA2018, 5, CPU)
    floor = math.ceil(CONTEXT_FLOOR * 500)
    assert kept.trade_offs[-1].startswith("features") and floor <= kept.iterations < 500 and kept.enough
    assert kept.choice.patch_size == fit(LA2018, 60, CPU).choice.patch_size
    assert shrunk.trade_offs[-1].startswith("patch") and shrunk.enough and floor <= shrunk.iterations < 500
    strict = fit(LA2018, 20, CPU, min_iterations=int(500 / CONTEXT_FLOOR) + 1)  # a floor above what 20 min give
    assert strict.trade_offs[-1].startswith("patch") and strict.iterations >= 500


@pytest.mark.parametrize("structure_mm, coarsened", [(None, True), (5.6, True), (1.6, False), (1.8, False)])
def test_thin_structures_keep_their_resolution(structure_mm, coarsened):
    """A left atrium (5.6 mm thick at 0.625 mm) may be coarsened to 1.25 mm; structures under 3 voxels across at
    the coarser spacing (vessels, thin walls) are not: the patch and width rungs pay for the budget instead."""
    spacing, median, cases, classes = LA2018
    got = fit_to_budget(spacing, median, math.prod(median) * cases, classes, 1, PRESET, 8.0, 60 * 60, CPU, 500,
                        structure_mm)
    rungs = [t.split()[0] for t in got.trade_offs]
    assert ("spacing" in rungs) == coarsened
    if not coarsened:
        assert got.spacing == spacing and rungs[:2] == ["patch", "features"]


def test_trim_keeps_most_of_the_median_case_and_the_spacing_rung_keeps_the_field_of_view():
    got = fit(LA2018, 600, CPU)
    base = nnunet(LA2018)
    trim, spacing = got.trade_offs
    assert "81% of the median case" in trim
    trimmed = tuple(int(v) for v in trim.split(" -> ")[1].split()[0].split("x"))
    assert math.prod(trimmed) >= MIN_TRIM_COVERAGE * math.prod(LA2018[1])
    assert math.prod(trimmed) < math.prod(base.patch_size)
    fov_before = np.asarray(trimmed) * np.asarray(LA2018[0])
    fov_after = np.asarray(got.choice.patch_size) * np.asarray(got.spacing)
    assert np.allclose(fov_after, fov_before, rtol=0.35)


def test_cheaper_rungs_for_shorter_budgets_and_an_honest_shortfall():
    costs = [fit(LA2018, minutes, CPU).seconds_per_iteration for minutes in (100_000, 600, 120, 60, 20)]
    assert costs == sorted(costs, reverse=True)
    tiny = fit(LA2018, 1, CPU)
    assert not tiny.enough and tiny.trade_offs[-1].startswith("patch") and tiny.iterations < 500
    assert tiny.choice.architecture.features_per_stage[0] == 16
    start = [int(v) for v in tiny.trade_offs[3].split()[1].split("x")]  # "patch 40x64x96 -> ..."
    assert math.prod(tiny.choice.patch_size) >= MIN_PATCH_FRACTION * math.prod(start)
    assert tiny.spacing == fit(LA2018, 60, CPU).spacing  # the width and patch rungs are at the coarsest spacing


def test_the_width_is_given_up_before_the_field_of_view():
    """A budget that the coarsest spacing's patch misses at full width keeps that patch at half width; only a
    shorter one shrinks the patch, and then at the narrowest width."""
    narrow, smaller = fit(LA2018, 60, CPU), fit(LA2018, 5, CPU)
    spacing = next(t for t in narrow.trade_offs if t.startswith("spacing"))  # "... (patch A -> B, same field ..."
    assert "x".join(map(str, narrow.choice.patch_size)) == spacing.split(" -> ")[-1].split(",")[0]
    assert narrow.choice.architecture.features_per_stage[0] == PRESET.base_features // 2
    assert math.prod(smaller.choice.patch_size) < math.prod(narrow.choice.patch_size)
    assert smaller.choice.architecture.features_per_stage[0] == narrow.choice.architecture.features_per_stage[0]


@pytest.mark.parametrize("spacing, median, step, expected_last", [
    ((1.0, 1.0, 1.0), (200, 200, 200), 1.5, (2.0, 2.0, 2.0)),                 # up to MAX_COARSENING
    ((1.0, 1.0, 1.0), (48, 200, 200), 1.03, (1.5, 2.0, 2.0)),                 # 48 voxels -> 32 at most
    ((1.0, 1.0, 1.0), (30, 200, 200), 1.03, (1.0, 2.0, 2.0)),                 # too small to coarsen
    ((1.0, 1.0, 1.0), (30, 30, 30), 1.03, None),                              # nothing to do
    ((5.0, 1.0, 1.0), (40, 300, 300), 1.03, (6.25, 2.0, 2.0)),                # fine axes first, then z to 32
])
def test_coarser_spacings(spacing, median, step, expected_last):
    steps = coarser_spacings(spacing, median, step)
    if expected_last is None:
        assert steps == []
        return
    assert np.allclose(steps[-1], expected_last)
    for a, b in zip([np.asarray(spacing)] + steps, steps):
        assert (b >= a - 1e-12).all() and (b > a).any()
    for s in steps:
        assert ((np.asarray(median) * np.asarray(spacing) / s >= MIN_COARSE_EDGE - 1e-6)
                | (s == np.asarray(spacing))).all()


def test_anisotropic_coarsens_the_fine_axes_first():
    steps = coarser_spacings((5.0, 1.0, 1.0), (40, 300, 300), 1.03)
    first_z = next(i for i, s in enumerate(steps) if s[0] > 5.0)
    assert np.allclose(steps[first_z - 1][1:], 2.0) and all(s[0] == 5.0 for s in steps[:first_z])


def _fingerprint(name):
    return load_json(Fingerprint, EXAMPLES / f"{name}.fingerprint.json")


@pytest.mark.parametrize("name", sorted(p.name.split(".")[0] for p in EXAMPLES.glob("*.fingerprint.json")))
def test_plans_with_a_large_budget_are_nnunets_and_without_one_unchanged(name):
    fp = _fingerprint(name)
    golden = load_json(Plans, EXAMPLES / f"{name}.plans.json")
    plain = make_plans(fp, PRESET, golden.memory_target_gb)
    # no budget: not a byte more in plans.json, so existing plans keep their hash (checkpoints refer to it)
    assert "budget" not in json.dumps(to_jsonable(plain))
    assert sha256_of(replace(plain, autoseg_version=golden.autoseg_version)) == sha256_of(golden)
    rich = make_plans(fp, PRESET, golden.memory_target_gb, TimeBudget(1e9, "cuda:0", GPU))
    assert rich.configurations.keys() == plain.configurations.keys()
    for key, c in rich.configurations.items():
        assert c.budget is not None and c.budget.trade_offs == () and c.budget.enough
        assert replace(c, budget=None) == plain.configurations[key]
    assert from_jsonable(Plans, json.loads(json.dumps(to_jsonable(rich)))) == rich


def test_short_budget_plans_record_the_trade_offs_and_drop_a_pointless_cascade():
    fp = _fingerprint("large-lowres")
    plain = make_plans(fp, PRESET, 8.0)
    assert "3d_lowres" in plain.configurations
    short = make_plans(fp, PRESET, 8.0, TimeBudget(30, "cpu", CPU))
    full = short.configurations["3d_fullres"]
    assert full.budget.trade_offs and full.budget.device == "cpu" and full.budget.minutes == 30
    assert full.budget.nnunet_patch_size == plain.configurations["3d_fullres"].patch_size
    if full.spacing != plain.configurations["3d_fullres"].spacing:
        assert "3d_lowres" not in short.configurations and "3d_cascade_fullres" not in short.configurations
        assert full.next_stage is None and "no cascade" in full.budget.trade_offs[-1]
    else:
        assert short.configurations["3d_cascade_fullres"].patch_size == full.patch_size
    for c in short.configurations.values():
        assert c.budget.iterations == int(30 * 60 // c.budget.seconds_per_iteration)


def test_budget_advice():
    text = budget_advice("3d_fullres", 134.0, 500)
    assert "~388 days" in text and "--budget 1117 or more" in text and "18.6 h" in text
    assert "~9 h" in budget_advice("2d", 0.13, 500) and "1 min" in budget_advice("2d", 0.1, 500)
