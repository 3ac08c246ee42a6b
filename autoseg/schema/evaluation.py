"""Evaluation results (``summary.json``): per case and class metrics, and their means.

Undefined values (a class absent from both prediction and reference) are ``null`` in JSON, ``None`` here, and are
left out of every mean. Distances are in mm. See :mod:`autoseg.evaluation.metrics` for the definitions and the
conventions for empty masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case.

    Attributes
    ----------
    dice, iou
        Overlap in [0, 1]; ``None`` when the class is in neither prediction nor reference.
    hd95
        95% Hausdorff distance, mm (the image diagonal when exactly one mask is empty); ``None`` when both are.
    nsd
        Normalised surface Dice at the summary's tolerance, in [0, 1]; ``None`` when both masks are empty.
    tp, fp, fn
        True positive, false positive and false negative voxels.
    n_ref, n_pred
        Voxels of the class in the reference and in the prediction.
    """

    dice: float | None
    iou: float | None
    hd95: float | None
    nsd: float | None
    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int


@dataclass(frozen=True)
class CaseEvaluation:
    """One evaluated case.

    Attributes
    ----------
    case_id
        File name without its ending.
    prediction, reference
        The two files compared.
    classes
        Label value (as a string, a JSON key) -> metrics.
    """

    case_id: str
    prediction: str
    reference: str
    classes: dict[str, ClassMetrics]


@dataclass(frozen=True)
class MeanMetrics:
    """Means over the cases where a class is defined.

    Attributes
    ----------
    dice, iou, hd95, nsd
        Means of the defined per-case values (``None`` when the class is undefined in every case).
    n_cases
        Cases where the class is defined (present in the prediction or the reference).
    """

    dice: float | None
    iou: float | None
    hd95: float | None
    nsd: float | None
    n_cases: int


@dataclass(frozen=True)
class EvaluationSummary:
    """A folder of predictions evaluated against a folder of references (``summary.json``).

    Attributes
    ----------
    pred_dir, gt_dir
        The folders compared.
    labels
        Label values evaluated.
    label_names
        Label value (as a string) -> name.
    nsd_tolerance_mm
        Tolerance of the normalised surface Dice, mm.
    cases
        Per case metrics, sorted by case id.
    mean
        Label value (as a string) -> means over cases.
    foreground_mean_dice
        Mean over the foreground labels (value > 0) of their mean Dice: the model-selection score.
    regions
        When regions were scored: region number (as a string, the entries of ``labels``) -> its label values.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    pred_dir: str
    gt_dir: str
    labels: tuple[int, ...]
    label_names: dict[str, str]
    nsd_tolerance_mm: float
    cases: tuple[CaseEvaluation, ...]
    mean: dict[str, MeanMetrics]
    foreground_mean_dice: float | None
    regions: dict[str, tuple[int, ...]] | None = field(default=None, metadata=OMIT_IF_NONE)
    schema_version: int = field(default=SCHEMA_VERSION)
