"""DatasetSpec: what a raw dataset folder contains, read once from its ``dataset.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE


#: Label value, in arrays read from label files and in preprocessed segmentations, of voxels whose label does not
#: count: the dataset's ``ignore`` label, and everything outside a case's region-of-interest mask. The losses and
#: the pseudo-Dice leave them out (negative targets), random training patches are centred on the other voxels.
IGNORE = -2


@dataclass(frozen=True)
class CaseSpec:
    """One case of a raw dataset.

    Attributes
    ----------
    case_id
        Identifier used for every derived file (``hippocampus_001``).
    images
        Image files relative to the raw folder: one per channel (nnU-Net v2 ``_0000`` naming, MSD 3D), or a
        single 4D file holding every channel (MSD ``tensorImageSize: 4D``).
    label
        Label file relative to the raw folder, ``None`` for test cases.
    roi
        Region-of-interest mask relative to the raw folder (nonzero inside), or ``None``: the whole image counts.
        Outside it training ignores the labels, prediction writes background and evaluation does not look.
    """

    case_id: str
    images: tuple[str, ...]
    label: str | None = None
    roi: str | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass(frozen=True)
class Region:
    """A region of nnU-Net's region-based training: a name and the label values it is the union of.

    Attributes
    ----------
    name
        ``"whole tumour"``.
    labels
        Label values of the files, sorted (``(1, 2, 3, 4)``).
    """

    name: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A raw dataset: channels, labels and cases, in a layout-independent form (MSD or nnU-Net v2 raw).

    Attributes
    ----------
    name
        Dataset name (``Hippocampus``); names the workspace folder.
    raw_dir
        Absolute path of the raw folder at the time of reading.
    layout
        ``"msd"`` or ``"nnunetv2"``.
    channel_names
        One name per input channel, in channel order (``("MRI",)``, ``("CT",)``, ``("FLAIR", "T1c")``).
    labels
        Label names indexed by their integer value: ``labels[0]`` is the background; values are consecutive.
    file_ending
        Image file ending (``.nii.gz``).
    training, test
        The labelled training cases and the test cases (images to predict, never trained on).
    unlabelled
        Training images without labels (``imagesTrUnlabelled/``), for semi-supervised training; ``None`` when
        there are none. They are verified like training images, never fingerprinted (the plans and the intensity
        normalisation stay those of the labelled cases) and never in a cross-validation fold.
    source_label_values
        The value each label had in the source files before ``autoseg convert`` made them consecutive
        (``(0, 255)`` for 0/255 vessel masks), indexed like ``labels``; predictions are written with these values.
        ``None``: the values are the label indices.
    ignore_label
        Value of the ``ignore`` label in the label files (the highest, after every class), or ``None``. Voxels
        holding it are not annotated: training, sampling and evaluation leave them out; it is not a class of
        ``labels`` and never predicted.
    regions, regions_class_order
        Region-based datasets (nnU-Net v2's labels with list values, or an MSD dataset's ``regions.json``): the
        regions in declaration order, and the label value written where each is predicted (later ones overwrite
        earlier ones). ``labels`` then names the label values of the files (``label_<v>`` when no entry names a
        single value). ``None`` for label-based datasets.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    name: str
    raw_dir: str
    layout: str
    channel_names: tuple[str, ...]
    labels: tuple[str, ...]
    file_ending: str
    training: tuple[CaseSpec, ...]
    test: tuple[CaseSpec, ...] = ()
    source_label_values: tuple[int, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    ignore_label: int | None = field(default=None, metadata=OMIT_IF_NONE)
    regions: tuple[Region, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    regions_class_order: tuple[int, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    schema_version: int = field(default=SCHEMA_VERSION)
    unlabelled: tuple[CaseSpec, ...] | None = field(default=None, metadata=OMIT_IF_NONE)

    @property
    def has_roi(self) -> bool:
        """Whether any case has a region-of-interest mask."""
        return any(c.roi is not None for c in self.training + self.test)

    @property
    def unlabelled_cases(self) -> tuple[CaseSpec, ...]:
        """The unlabelled training images (empty when there are none)."""
        return self.unlabelled or ()

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """Number of output classes including the background."""
        return len(self.labels)
