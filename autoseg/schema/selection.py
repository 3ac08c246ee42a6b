"""Model selection results: ``best.json`` (ranked candidates, the chosen configuration(s)) and
``postprocessing.json`` (the connected-component rules kept on cross-validation).

Dice values are means over the cases where a class is defined (present in prediction or reference), as in
:class:`autoseg.schema.evaluation.EvaluationSummary`; ``None`` when a class is defined in no case. Per-class
dictionaries are keyed by the label value as a string (``"1"``), like ``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE


def foreground_mean(dice: dict[str, float | None]) -> float | None:
    """Mean of the defined per-class Dice values of the foreground labels (keys other than ``"0"``)."""
    values = [v for k, v in dice.items() if k != "0" and v is not None]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Candidate:
    """One configuration, or an ensemble of two, scored on the merged cross-validation predictions.

    Attributes
    ----------
    name
        Folder under ``crossval/``: the configuration name, or ``ensemble__<a>__<b>``.
    configurations
        The configuration(s) whose probabilities are averaged (one or two).
    mean_foreground_dice
        Mean over the foreground labels of their mean Dice: the ranking score (``None``: undefined everywhere).
    dice_per_class
        Label value (as a string) -> mean Dice over the cases.
    n_cases
        Cases evaluated (every training case).
    """

    name: str
    configurations: tuple[str, ...]
    mean_foreground_dice: float | None
    dice_per_class: dict[str, float | None]
    n_cases: int


@dataclass(frozen=True)
class BestChoice:
    """The outcome of ``autoseg find-best`` (``best.json``).

    Attributes
    ----------
    dataset
        Dataset name.
    candidates
        Every candidate evaluated, best first (ties keep single configurations before ensembles).
    chosen
        Configuration(s) to predict with: one, or two whose probabilities are averaged.
    folds
        Configuration -> folds whose networks are averaged at prediction time.
    postprocessing_file
        Postprocessing rules to apply after prediction, relative to the dataset's workspace folder
        (``postprocessing.json``), ``None`` for none.
    labels
        Label value (region number for region datasets, as a string) -> name, for tables.
    skipped
        Configuration -> why it was not a candidate (e.g. folds not trained).
    regions
        Region-based datasets: region number (as a string) -> its label values; ``None`` otherwise (left out of
        the JSON).
    basis
        What the candidates were scored on when it is not the cross-validation of every case: e.g. the
        validation of fold 0 while a budgeted run is under way (:func:`autoseg.workflow.selection.best_so_far`);
        ``None`` (left out of the JSON): the full cross-validation (``find-best``).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset: str
    candidates: tuple[Candidate, ...]
    chosen: tuple[str, ...]
    folds: dict[str, tuple[str, ...]]
    postprocessing_file: str | None
    labels: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    schema_version: int = field(default=SCHEMA_VERSION)
    regions: dict[str, tuple[int, ...]] | None = field(default=None, metadata=OMIT_IF_NONE)
    basis: str | None = field(default=None, metadata=OMIT_IF_NONE)

    @property
    def region_names(self) -> dict[tuple[int, ...], str]:
        """A region's label values -> its name (empty for label datasets)."""
        return {tuple(v): self.labels.get(k, k) for k, v in (self.regions or {}).items()}

    @property
    def best(self) -> Candidate:
        """The winning candidate."""
        return self.candidates[0]


@dataclass(frozen=True)
class Postprocessing:
    """Connected-component rules chosen on cross-validation (``postprocessing.json``), applied in this order.

    Attributes
    ----------
    keep_largest_foreground
        Keep only the largest connected component of all foreground labels together (26-connectivity in 3D).
    keep_largest_per_class
        Label values for which only the largest connected component of that label is kept, in order.
    keep_largest_per_region
        Region-based datasets: the label values of each region (as they appear in the predicted label map) whose
        largest connected component alone is kept, in order, after the rules above; ``None`` for label datasets
        (left out of the JSON, so label datasets' files are unchanged).
    dice_before
        Label value (region number for region datasets, as a string) -> mean cross-validation Dice without
        postprocessing.
    dice_after
        The same with the rules above.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    keep_largest_foreground: bool
    keep_largest_per_class: tuple[int, ...]
    dice_before: dict[str, float | None]
    dice_after: dict[str, float | None]
    schema_version: int = field(default=SCHEMA_VERSION)
    keep_largest_per_region: tuple[tuple[int, ...], ...] | None = field(default=None, metadata=OMIT_IF_NONE)

    @property
    def is_identity(self) -> bool:
        """No rule is kept: postprocessing changes nothing."""
        return (not self.keep_largest_foreground and not self.keep_largest_per_class
                and not self.keep_largest_per_region)

    @property
    def mean_dice_before(self) -> float | None:
        return foreground_mean(self.dice_before)

    @property
    def mean_dice_after(self) -> float | None:
        return foreground_mean(self.dice_after)
