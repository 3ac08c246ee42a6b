"""The budget rule: nnU-Net's plan when it fits the time, else batch, then patch, then width, in that order."""

import math

import pytest

from autoseg.planning.budget import MIN_BATCH, MIN_PATCH_FRACTION, fit_to_budget
from autoseg.planning.compute import training_macs
from autoseg.planning.configuration import fit_configuration
from autoseg.planning.presets import load_preset

PRESET = load_preset("default")
# (spacing, median shape, cases, classes) in the planned axis order
HIPPOCAMPUS = ((1.0, 1.0, 1.0), (36.0, 50.0, 35.0), 208, 3)
LA2018 = ((0.625, 0.625, 0.625), (88.0, 144.0, 188.0), 24, 2)
CPU = 1 / 1.5e11      # s per MAC, about this 2-core CPU in fp32
GPU = 1 / 2.0e13      # a fake fast device


def fit(case, minutes, seconds_per_mac, min_iterations=1000):
    spacing, median, cases, classes = case
    return fit_to_budget(spacing, median, math.prod(median) * cases, classes, 1, PRESET, 8.0, minutes * 60,
                         seconds_per_mac, min_iterations)


def nnunet(case):
    spacing, median, cases, classes = case
    return fit_configuration(spacing, median, math.prod(median) * cases, classes, PRESET, 8.0)


@pytest.mark.parametrize("case, minutes, device", [
    (HIPPOCAMPUS, 10_000, CPU), (LA2018, 100_000, CPU), (LA2018, 60, GPU), (HIPPOCAMPUS, 20, GPU)])
def test_enough_time_keeps_nnunets_plan(case, minutes, device):
    got = fit(case, minutes, device)
    assert got.trade_offs == () and got.enough and got.choice == nnunet(case)


@pytest.mark.parametrize("case, minutes, first", [
    (HIPPOCAMPUS, 20, "batch"), (HIPPOCAMPUS, 10, "batch"), (LA2018, 120, "patch"), (LA2018, 60, "patch")])
def test_short_budgets_give_up_batch_then_patch(case, minutes, first):
    got = fit(case, minutes, CPU)
    base = nnunet(case)
    assert got.trade_offs and got.trade_offs[0].startswith(first)
    assert got.enough and got.iterations >= 1000
    assert got.choice.batch_size >= MIN_BATCH or got.choice.batch_size == base.batch_size
    assert math.prod(got.choice.patch_size) >= MIN_PATCH_FRACTION * math.prod(base.patch_size)
    cost = training_macs(got.choice.architecture, got.choice.patch_size, got.choice.batch_size, 1, case[3])
    assert got.seconds_per_iteration == pytest.approx(cost * CPU)


def test_cheaper_rungs_for_shorter_budgets_and_an_honest_shortfall():
    costs = []
    for minutes in (100_000, 600, 120, 60, 20):
        got = fit(LA2018, minutes, CPU)
        costs.append(got.seconds_per_iteration)
    assert costs == sorted(costs, reverse=True)
    tiny = fit(LA2018, 1, CPU)
    assert not tiny.enough and tiny.trade_offs[-1].startswith("features") and tiny.iterations < 1000
