"""Fingerprint: what the planner needs to know about a dataset, measured once per dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from autoseg.schema.base import OMIT_IF_NONE
from autoseg.schema.dataset import Region


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel, pooled over the training cases.

    Every case weighs the same, whatever its foreground volume (as in nnU-Net's fixed samples per case).
    """

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    """One training case.

    Attributes
    ----------
    case_id
        The case.
    spacing
        ``(z, y, x)`` mm.
    shape_before_crop, shape_after_crop
        ``(z, y, x)`` voxels, before and after cropping to the nonzero region of all channels.
    relative_size_after_crop
        Voxels after cropping / voxels before.
    foreground_voxels
        Number of labelled (nonzero label) voxels.
    thinnest_structure_mm
        Typical thickness of the case's thinnest foreground class: twice the median distance of its voxels to its
        border, mm (``None`` in fingerprints made before it was measured, or without foreground). The budget rule
        does not coarsen the spacing beyond what keeps such structures several voxels across.
    class_voxels
        Voxels per label value ``0 .. L-1`` in the dataset's label order (ignore-label voxels are no class).
    image_sha256
        sha256 of the image array (every channel's float32 voxels, dtype and shape): equal for the same pixels in
        another file or under another case id.
    image_signature
        Coarse content signature for near-duplicate detection: per channel, the image's mean over a fixed grid of
        blocks (4 x 4 x 4, or 1 x 8 x 8 for a single slice), z-scored over the blocks, channels concatenated.
        These three are ``None`` in fingerprints made before autoseg measured them.
    """

    case_id: str
    spacing: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    relative_size_after_crop: float
    foreground_voxels: int
    thinnest_structure_mm: float | None = field(default=None, metadata=OMIT_IF_NONE)
    class_voxels: tuple[int, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    image_sha256: str | None = field(default=None, metadata=OMIT_IF_NONE)
    image_signature: tuple[float, ...] | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass(frozen=True)
class Fingerprint:
    """Dataset fingerprint (``fingerprint.json``).

    Attributes
    ----------
    dataset_name
        Workspace folder name.
    channel_names, labels
        From the dataset spec.
    cases
        One entry per training case, in dataset order.
    intensity
        One entry per channel.
    median_relative_size_after_crop
        Median of the cases' ``relative_size_after_crop``.
    source_sha256
        Hash of ``dataset.json`` and of every listed file's size and modification time; an unchanged hash lets a
        re-run reuse this fingerprint.
    regions, regions_class_order
        From the dataset spec (region-based datasets).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: tuple[str, ...]
    cases: tuple[CaseFingerprint, ...]
    intensity: tuple[IntensityStats, ...]
    median_relative_size_after_crop: float
    source_sha256: str
    regions: tuple[Region, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    regions_class_order: tuple[int, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def spacings(self) -> list[tuple[float, ...]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[tuple[int, ...]]:
        return [c.shape_after_crop for c in self.cases]

    @property
    def thinnest_structure_mm(self) -> float | None:
        """Median over the cases of their thinnest structure's thickness, mm (``None`` when not measured)."""
        values = [c.thinnest_structure_mm for c in self.cases if c.thinnest_structure_mm is not None]
        return float(np.median(values)) if values else None
