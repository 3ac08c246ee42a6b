"""The run plan: how one wall-clock budget for a whole training run is spent (``run_plan.json``, beside
``plans.json``).

``autoseg plan RAW --budget T`` writes it (:func:`autoseg.planning.run_plan.fit_run_plan`), ``autoseg train DATASET``
follows it part by part (:mod:`autoseg.workflow.automl`). Times are minutes of wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE

#: Part kinds. ``train``: train each fold for ``minutes`` (fresh, or continue a killed one); ``probe``: train fold 0
#: of a candidate configuration for ``minutes`` of a longer run, without the final validation (its smoothed
#: pseudo-Dice is compared with the other probes'); ``continue``: train a finished fold further, to ``minutes`` in
#: all (the winner of the probes, or a fold of a shorter run plan that a larger budget extends).
PART_KINDS = ("train", "probe", "continue")

#: Strategies of :func:`autoseg.planning.allocation.allocate`, smallest budget first.
STRATEGIES = ("one fold", "fold 0 + all", "cross-validation", "nnU-Net AutoML")


@dataclass(frozen=True)
class RunPart:
    """One step of a run plan: some folds of one configuration.

    Attributes
    ----------
    kind
        One of :data:`PART_KINDS`.
    configuration
        Configuration to train; ``""`` while it is the best of the probes named in ``candidates`` (the run fills it
        in, and records it in ``run_plan.json``, once the probes are done).
    folds
        Folds (``"0"`` ... ``"4"``, ``"all"``); each is trained for ``minutes``.
    minutes
        Training minutes per fold (the training loop; validation is ``validation_minutes``). For a ``continue``
        part: the fold's total training time when the part is done; for a ``probe``: the time after which it stops.
    iterations
        Expected training iterations per fold in ``minutes``.
    seconds_per_iteration
        Expected time of one iteration, s.
    validate
        The folds get the final sliding-window validation (their predictions choose postprocessing and score the
        model in ``best.json``).
    validation_minutes
        Expected time of those validations, all folds together (0 without).
    mirror
        The validations mirror (nnU-Net's test-time augmentation); false when mirrored validations would cost
        too large a share of a small budget (the fold's ``validation_mirroring``).
    reason
        Why the rule chose this part, for the printed table and the record.
    candidates
        The configurations whose probes decide ``configuration`` (empty when it is fixed).
    start_minutes
        ``continue`` parts: the fold's training minutes before this part (its probe, or an earlier run plan).
    epochs
        ``continue`` parts: the epoch count the fold is extended to, fixed by the run when the part starts (so a
        killed and resumed run extends to the same length); ``None`` before.
    """

    kind: str
    configuration: str
    folds: tuple[str, ...]
    minutes: float
    iterations: int
    seconds_per_iteration: float
    validate: bool
    validation_minutes: float
    reason: str
    candidates: tuple[str, ...] = ()
    start_minutes: float = 0.0
    mirror: bool = True
    epochs: int | None = field(default=None, metadata=OMIT_IF_NONE)

    @property
    def total_minutes(self) -> float:
        """Wall time this part is expected to take: training of every fold (beyond ``start_minutes``) plus the
        validations, min."""
        return max(self.minutes - self.start_minutes, 0.0) * len(self.folds) + self.validation_minutes


@dataclass(frozen=True)
class RunPlan:
    """A whole training run fitted to a wall-clock budget (``run_plan.json``).

    Attributes
    ----------
    dataset
        Dataset name.
    budget_minutes
        The wall-clock time of the whole training run it was fitted to, min.
    strategy
        One of :data:`STRATEGIES`.
    parts
        What to train, in order.
    fold_minutes
        Training minutes of one fold the plans were fitted to (``plans.json``'s ``budget.minutes``).
    selection
        ``"find-best"``: model selection on the cross-validation of complete configurations (nnU-Net's); or
        ``"validation"``: the model is chosen and its postprocessing decided on the validation folds that exist.
    selection_minutes
        Expected time of model selection and of keeping ``best.json`` current, min.
    overhead_minutes
        Expected start-up time of the parts (network, data loaders), all together, min.
    predict
        Configuration -> folds ``autoseg predict`` will average once the run is done (empty while it is decided by
        probes: ``best.json`` says it then).
    device
        Device whose measured throughput priced the iterations.
    seconds_per_tmac
        Its time per 10^12 multiply-accumulates of a training step, s.
    target_iterations
        Iterations per fold the plans' budget ladder aims for (``--min-iterations``).
    plans_sha256
        Hash of the ``plans.json`` the parts train (a run plan of other plans is not followed).
    notes
        Warnings for the user (e.g. a budget too small to learn much).
    earlier_minutes
        Training minutes that an earlier run plan spent on the folds this one continues (a run plan extended to
        a larger budget), min: part of the budget, in no part.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset: str
    budget_minutes: float
    strategy: str
    parts: tuple[RunPart, ...]
    fold_minutes: float
    selection: str
    selection_minutes: float
    overhead_minutes: float
    predict: dict[str, tuple[str, ...]]
    device: str
    seconds_per_tmac: float
    target_iterations: int
    plans_sha256: str
    notes: tuple[str, ...] = ()
    earlier_minutes: float = 0.0
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def planned_minutes(self) -> float:
        """Everything the plan expects to spend: parts, start-ups, selection and what an earlier run plan spent on
        the folds it continues, min (about the budget)."""
        return (sum(p.total_minutes for p in self.parts) + self.overhead_minutes + self.selection_minutes
                + self.earlier_minutes)
