"""The optimiser recipe a fresh run gets: nnU-Net's for long runs, the short-run one for a few thousand
iterations (CPU budgets, budget-fitted plans), explicit numbers always kept, and resumed runs untouched."""

from __future__ import annotations

import pytest

from autoseg.errors import AutosegError
from autoseg.schema.plans import ArchitecturePlan, BudgetFit, ChannelNormalization, ConfigurationPlan
from autoseg.training.run import make_config, resolve_runtime
from autoseg.training.schedule import SHORT_RUN, learning_rate

ARCH = ArchitecturePlan("plain_unet", (8, 16), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)), (2, 2), (2,))
PLAN = ConfigurationPlan(name="3d_fullres", spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16), batch_size=2,
                         median_shape=(16.0, 16.0, 16.0), normalization=(ChannelNormalization("zscore"),),
                         architecture=ARCH, feature_map_voxels=1, estimated_memory_gb=1.0, batch_dice=False)
FIT = BudgetFit(minutes=60.0, device="cpu", seconds_per_tmac=29.0, seconds_per_iteration=7.0, iterations=500,
                min_iterations=500, trade_offs=(), nnunet_patch_size=(16, 16, 16), nnunet_batch_size=2,
                nnunet_spacing=(1.0, 1.0, 1.0))


def resolved(plan=PLAN, fresh=True, explicit=False, **overrides):
    config = make_config("0" * 64, "D", "3d_fullres", "0", overrides)
    given = frozenset(k for k, v in overrides.items() if v is not None)
    return resolve_runtime(config, plan, "cpu", fresh, explicit, None, given)[1:]


def test_cpu_budget_gets_the_short_recipe_and_says_so():
    config, note = resolved(budget_minutes=20)
    assert config.schedule == "short" and config.momentum == SHORT_RUN["momentum"]
    assert config.learning_rate == SHORT_RUN["learning_rate"] and config.warmup_fraction == SHORT_RUN["warmup_fraction"]
    assert "short run" in note and "schedule" in note


def test_long_runs_keep_nnunets_recipe():
    config, note = resolved(explicit=True, epochs=1000, iterations_per_epoch=250)
    assert (config.schedule, config.momentum, config.learning_rate, config.warmup_fraction) == ("nnunet", 0.99,
                                                                                                0.01, 0.0)
    assert "short run" not in note


def test_a_budget_fitted_plan_tells_the_length():
    fitted = ConfigurationPlan(**{**PLAN.__dict__, "budget": FIT})
    assert resolved(fitted, budget_minutes=30)[0].schedule == "short"          # ~250 iterations
    assert resolved(fitted, budget_minutes=60 * 20)[0].schedule == "nnunet"    # ~10,000


def test_explicit_numbers_and_schedules_are_kept():
    config, _ = resolved(budget_minutes=20, learning_rate=0.05)
    assert config.schedule == "short" and config.learning_rate == 0.05 and config.momentum == 0.9
    config, _ = resolved(budget_minutes=20, schedule="nnunet")
    assert config.momentum == 0.99 and config.learning_rate == 0.01
    config, _ = resolved(explicit=True, epochs=1000, schedule="short")
    assert config.momentum == 0.9
    with pytest.raises(AutosegError, match="schedule"):
        resolved(schedule="fast")


def test_a_resumed_run_is_not_changed():
    config, _ = resolved(fresh=False, budget_minutes=20)
    assert config.schedule == "auto" and config.momentum == 0.99


def test_warmup_ramps_then_follows_poly():
    lrs = [learning_rate(0.1, e, 20, 0.9, 0.1) for e in range(20)]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] == pytest.approx(0.1 * (1 - 2 / 20) ** 0.9)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
