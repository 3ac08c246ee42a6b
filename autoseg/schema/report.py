"""DatasetReport: what ``autoseg plan`` tells the user about a dataset (``dataset_report.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class ClassReport:
    """One label value of a dataset.

    Attributes
    ----------
    value
        Label value (index into the dataset's labels; 0 is the background).
    name
        Label name from the dataset spec.
    voxel_share
        Fraction of all annotated voxels (background included, ignore label excluded) holding this value; ``None``
        when the fingerprint has no per-class counts.
    foreground_share
        Fraction of the foreground voxels (label > 0) holding this value; ``None`` for the background, without
        per-class counts, or without any foreground.
    case_fraction
        Fraction of the training cases with at least one voxel of this value; ``None`` without per-class counts.
    """

    value: int
    name: str
    voxel_share: float | None
    foreground_share: float | None
    case_fraction: float | None


@dataclass(frozen=True)
class DuplicateGroup:
    """Training cases whose images are the same or nearly so.

    Attributes
    ----------
    case_ids
        The cases, in dataset order.
    kind
        ``"identical"`` (equal pixel data) or ``"near-identical"`` (equal shapes within a voxel per axis and
        correlated coarse signatures).
    similarity
        1 for identical images; else the lowest signature correlation of the pairs that joined the group.
    """

    case_ids: tuple[str, ...]
    kind: str
    similarity: float


@dataclass(frozen=True)
class DatasetReport:
    """Summary of a dataset's training cases, made from its fingerprint (``dataset_report.json``).

    Attributes
    ----------
    dataset_name
        Workspace folder name.
    num_cases
        Number of training cases.
    channel_names
        One name per input channel (the modality).
    spacing_min, spacing_median, spacing_max
        Per axis ``(z, y, x)``, mm.
    shape_min, shape_median, shape_max
        Image size per axis ``(z, y, x)`` before cropping, voxels.
    classes
        One entry per label value, background first.
    cases_without_foreground
        Training cases whose label map has no foreground voxel.
    duplicates
        Groups of duplicate images; ``None`` when the fingerprint has no image hashes (see ``notes``).
    warnings
        One line each: class imbalance, absent classes, cases without foreground, duplicates.
    notes
        What the report could not tell, one line each (fingerprints made by an older autoseg).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset_name: str
    num_cases: int
    channel_names: tuple[str, ...]
    spacing_min: tuple[float, ...]
    spacing_median: tuple[float, ...]
    spacing_max: tuple[float, ...]
    shape_min: tuple[int, ...]
    shape_median: tuple[float, ...]
    shape_max: tuple[int, ...]
    classes: tuple[ClassReport, ...]
    cases_without_foreground: tuple[str, ...]
    duplicates: tuple[DuplicateGroup, ...] | None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    schema_version: int = field(default=SCHEMA_VERSION)
