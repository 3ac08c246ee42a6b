"""Learning-rate schedule, the short-run recipe and the time budget: pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass


def poly_lr(initial: float, epoch: int, total_epochs: int, exponent: float = 0.9) -> float:
    """Polynomial decay ``initial * (1 - epoch / total_epochs) ** exponent`` (0 once ``epoch >= total``)."""
    if total_epochs <= 0 or epoch >= total_epochs:
        return 0.0
    return initial * (1.0 - epoch / total_epochs) ** exponent


def learning_rate(initial: float, epoch: int, total_epochs: int, exponent: float = 0.9,
                  warmup_fraction: float = 0.0) -> float:
    """Poly decay after a linear warm-up over the first ``warmup_fraction`` of the epochs.

    The warm-up lets the momentum buffer and the normalisation statistics settle before full steps are taken;
    a function of the epoch alone, so a resumed run follows the same curve.

    Examples
    --------
    >>> learning_rate(0.01, 0, 10)
    0.01
    >>> round(learning_rate(0.01, 0, 10, warmup_fraction=0.2), 5)  # 2 warm-up epochs: 1/3, 2/3, then poly
    0.00333
    >>> round(learning_rate(0.01, 2, 10, warmup_fraction=0.2), 5) == round(poly_lr(0.01, 2, 10), 5)
    True
    """
    warmup = math.ceil(warmup_fraction * total_epochs) if warmup_fraction > 0 else 0
    ramp = min(1.0, (epoch + 1) / (warmup + 1))
    return ramp * poly_lr(initial, epoch, total_epochs, exponent)


#: Runs expected to take fewer iterations than this use :data:`SHORT_RUN` instead of nnU-Net's recipe. Measured on
#: Hippocampus at 160 iterations (benchmarks/results/short_schedule.txt): fold-0 Dice 0.65 with nnU-Net's recipe
#: and much better with SHORT_RUN. Momentum 0.99 averages the gradients of the last ~100 steps, a large part of a
#: run of a few thousand; nnU-Net's 250,000 iterations keep its own recipe.
SHORT_RUN_ITERATIONS = 5000
#: The short-run recipe: the same effective step as nnU-Net's (lr / (1 - momentum) = 1), with a momentum that
#: forgets in ~10 steps, after a linear warm-up over the first 10% of the epochs.
SHORT_RUN = {"momentum": 0.9, "learning_rate": 0.1, "warmup_fraction": 0.1}
SCHEDULES = ("auto", "nnunet", "short")


def expected_iterations(epochs: int, iterations_per_epoch: int, budget_minutes: float | None,
                        planned_minutes: float | None = None, planned_iterations: int | None = None
                        ) -> float | None:
    """How many iterations a run will take, as far as it is known before it starts.

    Parameters
    ----------
    epochs, iterations_per_epoch
        The run's length without a budget.
    budget_minutes
        Its time budget, min (``None``: the epochs decide).
    planned_minutes, planned_iterations
        The plans' budget fit (``plan --budget``): the iterations expected in those minutes.

    Returns
    -------
    float or None
        ``None`` when it cannot be told (a budget with plans fitted to memory only).

    Examples
    --------
    >>> expected_iterations(1000, 250, None)
    250000
    >>> expected_iterations(1000, 250, 30, planned_minutes=60, planned_iterations=500)
    250.0
    >>> expected_iterations(1000, 250, 60) is None
    True
    """
    if budget_minutes is None:
        return epochs * iterations_per_epoch
    if planned_minutes and planned_iterations:
        return planned_iterations * budget_minutes / planned_minutes
    return None


def choose_schedule(iterations: float | None, on_cpu: bool = False) -> str:
    """``"short"`` below :data:`SHORT_RUN_ITERATIONS`, else ``"nnunet"``. An unknown length counts as short on a
    CPU (a budget of minutes to hours never reaches that many steps of a segmentation network there) and as long
    elsewhere.

    Examples
    --------
    >>> choose_schedule(500), choose_schedule(250000), choose_schedule(None), choose_schedule(None, on_cpu=True)
    ('short', 'nnunet', 'nnunet', 'short')
    """
    if iterations is None:
        return "short" if on_cpu else "nnunet"
    return "short" if iterations < SHORT_RUN_ITERATIONS else "nnunet"


@dataclass(frozen=True)
class BudgetPlan:
    """How a wall-clock budget is spent.

    Attributes
    ----------
    epochs
        Total epochs (including those already run).
    iterations_per_epoch, validation_iterations
        Training and validation batches per epoch.
    """

    epochs: int
    iterations_per_epoch: int
    validation_iterations: int


def plan_budget(budget_seconds: float, step_seconds: float, val_step_seconds: float,
                max_iterations_per_epoch: int, max_validation_iterations: int,
                target_epochs: int = 40, min_iterations_per_epoch: int = 10) -> BudgetPlan:
    """Fit epochs to a time budget from measured step times.

    An epoch should be short enough that checkpoints, logs and the learning-rate decay have a useful resolution
    (about ``target_epochs`` epochs in the budget), but long enough that per-epoch overhead stays small
    (at least ``min_iterations_per_epoch`` steps). Validation costs about a fifth of the training steps.

    Parameters
    ----------
    budget_seconds
        Time for the whole training loop, s.
    step_seconds, val_step_seconds
        Measured seconds per training step (forward + backward + update, data wait included) and per
        validation step.
    max_iterations_per_epoch, max_validation_iterations
        Upper bounds (the configured values).
    target_epochs
        Desired number of epochs when the budget allows.
    min_iterations_per_epoch
        Lower bound of steps per epoch.
    """
    total_steps = max(1.0, budget_seconds / max(step_seconds, 1e-6))
    iters = int(min(max_iterations_per_epoch, max(min_iterations_per_epoch, round(total_steps / target_epochs))))
    val_iters = int(min(max_validation_iterations, validation_iterations_for(iters)))
    epoch_seconds = iters * step_seconds + val_iters * val_step_seconds
    epochs = max(1, int(math.floor(budget_seconds / epoch_seconds)))
    return BudgetPlan(epochs, iters, val_iters)


def epochs_that_fit(epochs_done: int, elapsed_seconds: float, budget_seconds: float) -> int:
    """Total epochs once ``epochs_done`` took ``elapsed_seconds``: as many more as the remaining time allows."""
    if epochs_done <= 0:
        raise ValueError("need at least one finished epoch to measure")
    per_epoch = elapsed_seconds / epochs_done
    remaining = max(0.0, budget_seconds - elapsed_seconds)
    return epochs_done + int(math.floor(remaining / per_epoch))


def validation_iterations_for(iterations_per_epoch: int) -> int:
    """Patch-validation iterations per epoch for a number of training iterations: nnU-Net's ratio of 50 to 250.

    Examples
    --------
    >>> validation_iterations_for(250), validation_iterations_for(4), validation_iterations_for(1000)
    (50, 1, 200)
    """
    return max(1, round(iterations_per_epoch / 5))
