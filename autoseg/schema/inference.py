"""``inference.json``: everything a runtime other than autoseg needs to run the exported ONNX networks.

Written by ``autoseg export --format onnx`` next to the networks (``models/<config>/fold_<k>/network.onnx``).
The steps, in order, for one image ``(C, z, y, x)`` (axes as the file stores them, e.g. NIfTI ``(x, y, z)``
reversed):

1. transpose the spatial axes by ``transpose_forward``;
2. crop to the bounding box of the voxels that are non-zero in any channel (``crop_to_nonzero``);
3. normalise each channel by its ``normalization`` entry (``zscore``: subtract ``mean`` and divide by ``std``,
   computed on the image itself when they are ``null``, inside the non-zero mask when ``use_nonzero_mask``; ``ct``:
   clip to ``clip_low``/``clip_high``, then the fixed ``mean``/``std``; ``rgb_0_1``: divide by ``scale``; ``none``);
4. resample to the configuration's ``spacing`` (mm, after the transpose; cubic spline for images);
5. predict with a sliding window of ``patch_size`` tiles at ``step`` x patch apart, each tile's logits weighted by a
   Gaussian of standard deviation ``gaussian_sigma_scale`` x patch, and averaged with the logits of the tile
   mirrored along every combination of ``mirror_axes`` (axes of the patch); the networks of every fold are averaged;
6. softmax over the outputs (sigmoid per output for ``regions``), resample the probabilities back to the cropped
   box's original size (linear), paste them into the image's shape (outside: background), transpose back by
   ``transpose_backward``;
7. argmax (``regions``: write ``regions_class_order[k]`` where output ``k`` exceeds 0.5, in order).

A configuration with a ``previous_stage`` (cascade) also takes that stage's label map, resampled to its spacing
(nearest), as one extra one-hot input channel per foreground label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE
from autoseg.schema.dataset import Region
from autoseg.schema.plans import ChannelNormalization, Plans


@dataclass(frozen=True)
class ExportedNetwork:
    """One exported network.

    Attributes
    ----------
    fold
        The fold it was trained on.
    file
        Its ``.onnx`` file, relative to ``inference.json``'s folder.
    sha256
        sha256 of that file.
    """

    fold: str
    file: str
    sha256: str


@dataclass(frozen=True)
class InferenceConfiguration:
    """How one configuration's networks are run.

    Attributes
    ----------
    dims
        3 (3D patches) or 2 (2D slices ``(y, x)`` of every ``z``).
    spacing
        Target spacing, mm, in transposed axis order (``(z, y, x)`` after ``transpose_forward``).
    patch_size
        Network input tile, voxels, same axes; the networks take ``(batch, input_channels, *patch_size)`` float32
        (input ``"input"``, dynamic batch) and return ``(batch, outputs, *patch_size)`` logits (``"logits"``).
    input_channels
        Image channels plus, for a cascade stage, one per foreground label of the previous stage.
    normalization
        One entry per image channel (:class:`~autoseg.schema.plans.ChannelNormalization`).
    step
        Sliding-window step as a fraction of the patch.
    mirror_axes
        Test-time mirroring axes of the patch.
    gaussian_sigma_scale
        Tile weighting: Gaussian standard deviation as a fraction of the patch per axis.
    resample_order_data, resample_order_label
        Spline orders of image and label resampling.
    previous_stage
        The configuration whose label map is an input (cascade), ``None`` otherwise.
    networks
        The exported folds.
    """

    dims: int
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    input_channels: int
    normalization: tuple[ChannelNormalization, ...]
    step: float
    mirror_axes: tuple[int, ...]
    gaussian_sigma_scale: float
    resample_order_data: int
    resample_order_label: int
    previous_stage: str | None
    networks: tuple[ExportedNetwork, ...]


@dataclass(frozen=True)
class InferenceSpec:
    """``inference.json`` (see the module docs for the steps).

    Attributes
    ----------
    dataset
        Dataset name.
    channel_names
        Input channels, in order.
    labels
        Label names by value (``labels[0]``: background).
    transpose_forward, transpose_backward
        Spatial axis permutations applied before and undone after prediction.
    crop_to_nonzero
        Whether images are cropped to the bounding box of their non-zero voxels first (always, as in nnU-Net).
    configurations
        Name -> how it runs.
    plans_sha256
        Hash of the plans the networks were trained with.
    regions, regions_class_order
        Region-based models: one sigmoid output per region, and the label value written for each.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset: str
    channel_names: tuple[str, ...]
    labels: tuple[str, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    crop_to_nonzero: bool
    configurations: dict[str, InferenceConfiguration]
    plans_sha256: str
    regions: tuple[Region, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    regions_class_order: tuple[int, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    schema_version: int = field(default=SCHEMA_VERSION)


def inference_spec(plans: Plans, plans_sha256: str, networks: dict[str, tuple[ExportedNetwork, ...]],
                   step: float = 0.5, mirror: bool = True, gaussian_sigma_scale: float = 1.0 / 8) -> InferenceSpec:
    """The :class:`InferenceSpec` of ``plans`` for the exported ``networks`` (configuration -> folds).

    Examples
    --------
    >>> from autoseg.schema.base import load_json
    >>> from importlib.resources import files
    >>> plans = load_json(Plans, files("autoseg._plans") / "examples" / "hippocampus.plans.json")
    >>> spec = inference_spec(plans, "0" * 64, {"3d_fullres": (ExportedNetwork("0", "f0.onnx", "1" * 64),)})
    >>> c = spec.configurations["3d_fullres"]
    >>> c.dims, c.patch_size, c.mirror_axes, c.input_channels
    (3, (40, 56, 40), (0, 1, 2), 1)
    """
    configurations = {}
    for name, nets in networks.items():
        plan = plans.configurations[name]
        configurations[name] = InferenceConfiguration(
            dims=plan.dims, spacing=tuple(plan.spacing), patch_size=tuple(plan.patch_size),
            input_channels=plans.input_channels(name), normalization=tuple(plan.normalization), step=step,
            mirror_axes=tuple(range(plan.dims)) if mirror else (), gaussian_sigma_scale=gaussian_sigma_scale,
            resample_order_data=plan.resample_order_data, resample_order_label=plan.resample_order_label,
            previous_stage=plan.previous_stage, networks=tuple(nets))
    return InferenceSpec(dataset=plans.dataset_name, channel_names=tuple(plans.channel_names),
                         labels=tuple(plans.labels), transpose_forward=tuple(plans.transpose_forward),
                         transpose_backward=tuple(plans.transpose_backward), crop_to_nonzero=True,
                         configurations=configurations, plans_sha256=plans_sha256, regions=plans.regions,
                         regions_class_order=plans.regions_class_order)
