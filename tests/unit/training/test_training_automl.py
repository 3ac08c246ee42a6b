"""Which configurations a training run takes on: a cascade stage waits for all five folds of its low-res stage."""

from pathlib import Path

import pytest

from autoseg.schema.base import load_json
from autoseg.schema.plans import Plans
from autoseg.training.automl import trainable_configurations

PLANS = load_json(Plans, Path(__file__).resolve().parents[3] / "plans" / "examples" / "large-lowres.plans.json")
ALL = ("0", "1", "2", "3", "4")
LOW = {("3d_lowres", f) for f in ALL}


@pytest.mark.parametrize("folds, finished, requested, expected", [
    (ALL, set(), None, ["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"]),  # low-res trains first
    (("0",), set(), None, ["2d", "3d_lowres", "3d_fullres"]),  # one low-res fold is not enough
    (("0",), LOW, None, ["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"]),  # ... unless all are trained
    (ALL, set(), ["3d_cascade_fullres"], []),
    (ALL, LOW - {("3d_lowres", "4")}, ["3d_cascade_fullres"], []),
    (ALL, LOW, ["3d_cascade_fullres"], ["3d_cascade_fullres"]),
    (ALL, set(), ["3d_cascade_fullres", "3d_lowres"], ["3d_lowres", "3d_cascade_fullres"]),  # plans' order
])
def test_trainable_configurations(folds, finished, requested, expected):
    names, skipped = trainable_configurations(PLANS, folds, finished, requested)
    assert names == expected
    if "3d_cascade_fullres" not in expected and (requested is None or "3d_cascade_fullres" in requested):
        assert skipped and skipped[0].startswith("3d_cascade_fullres (needs all five folds of 3d_lowres")


def test_input_channels():
    assert PLANS.input_channels("3d_lowres") == len(PLANS.channel_names)
    assert PLANS.input_channels("3d_cascade_fullres") == len(PLANS.channel_names) + len(PLANS.labels) - 1


def _fitted(minutes):
    from dataclasses import replace

    from autoseg.schema.plans import BudgetFit

    fit = BudgetFit(minutes, "cpu", 30.0, 5.0, int(minutes * 12), 500, (), (1, 1, 1), 2, (1.0, 1.0, 1.0))
    return replace(PLANS, configurations={k: replace(c, budget=fit) for k, c in PLANS.configurations.items()})


@pytest.mark.parametrize("plans, minutes, step, expected", [
    (PLANS, None, None, None),                      # no budget anywhere
    (PLANS, 60.0, 1.0, None),                       # nnU-Net's plans, and enough iterations
    (PLANS, 60.0, 30.0, "--budget 60` fits them"),  # nnU-Net's plans, too few iterations
    (_fitted(60), 55.0, 5.0, None),                 # fitted to about this run's minutes
    (_fitted(60), 20.0, 5.0, "fitted to 60 minutes per fold, this run gives 20"),
    (_fitted(60), None, None, None),
])
def test_budget_mismatch(plans, minutes, step, expected):
    from autoseg.training.automl import Job, budget_mismatch

    got = budget_mismatch(plans, [Job("3d_fullres", "0", minutes, step)], "/data/raw")
    if expected is None:
        assert got is None
    else:
        assert expected in got and "autoseg plan /data/raw --budget" in got


def test_stop_after_ends_a_probe_at_its_time_with_the_longer_runs_schedule():
    from types import SimpleNamespace

    from autoseg.training.automl import StopAfter
    from autoseg.training.trainer import TrainState

    state = TrainState(40, 10, 2)  # the longer run: 40 epochs planned
    trainer = SimpleNamespace(state=state)
    stop = StopAfter(60.0)
    state.epoch, state.train_seconds = 5, 59.0
    stop.on_epoch_end(trainer, None)
    assert state.total_epochs == 40 and state.stop_reason is None  # not yet
    state.epoch, state.train_seconds = 6, 61.0
    stop.on_epoch_end(trainer, None)
    assert state.total_epochs == 6 and state.stop_reason.startswith("probe: stopped after epoch 6")


def test_whole_run_hint_for_an_even_split():
    from autoseg.training.automl import Job, budget_mismatch

    jobs = [Job("3d_fullres", str(k), 12.0, 30.0) for k in range(5)]
    got = budget_mismatch(PLANS, jobs, "/data/raw")
    assert "autoseg train DATASET --budget 60" in got and "--allocation uniform" in got
