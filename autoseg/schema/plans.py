"""Plans: everything the planner decides, per configuration. The keys documented here are stable.

``plans.json`` keys a user or a tool may rely on (axis order is the numpy order *after* ``transpose_forward``):

- ``transpose_forward`` / ``transpose_backward``: axis permutations of ``(z, y, x)`` arrays.
- ``configurations.<name>.spacing``: target spacing, mm.
- ``configurations.<name>.patch_size``: training patch, voxels.
- ``configurations.<name>.batch_size``.
- ``configurations.<name>.architecture``: ``features_per_stage``; ``strides`` and ``kernel_sizes`` as one list per
  stage holding one entry per axis.
- ``configurations.<name>.normalization``: one entry per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE
from autoseg.schema.dataset import Region


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalised.

    Attributes
    ----------
    scheme
        ``"zscore"`` (per image), ``"ct"`` (clip to the dataset's foreground percentiles, then dataset-wide
        z-score), ``"none"``, ``"rescale_0_1"`` (per-image min-max) or ``"rgb_0_1"`` (divided by ``scale``).
    use_nonzero_mask
        z-score statistics are taken inside the nonzero region only, and voxels outside it stay 0.
    clip_low, clip_high
        CT only: the foreground 0.5 / 99.5 percentiles of the training data.
    mean, std
        CT only: the foreground mean and standard deviation of the training data.
    scale
        ``rgb_0_1`` only: the full scale of the pixel values (255 for 8-bit colour, 65535 for 16-bit).
    """

    scheme: str
    use_nonzero_mask: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None
    scale: float | None = field(default=None, metadata=OMIT_IF_NONE)


@dataclass(frozen=True)
class ArchitecturePlan:
    """A U-Net topology.

    Attributes
    ----------
    network
        ``"plain_unet"`` (two convolutions per stage) or ``"resenc_unet"`` (residual encoder blocks).
    features_per_stage
        Output channels of every encoder stage.
    kernel_sizes, strides
        One list per stage, one entry per axis. The first stage has stride 1.
    blocks_per_stage_encoder, blocks_per_stage_decoder
        Convolutions (plain) or residual blocks (resenc) per encoder stage; convolutions per decoder stage.
    """

    network: str
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    blocks_per_stage_encoder: tuple[int, ...]
    blocks_per_stage_decoder: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def poolings_per_axis(self) -> tuple[int, ...]:
        return tuple(sum(1 for s in self.strides if s[a] == 2) for a in range(len(self.strides[0])))


@dataclass(frozen=True)
class BudgetFit:
    """How a configuration was fitted to a training-time budget (``autoseg plan --budget``).

    Attributes
    ----------
    minutes
        Training time of one fold the plan was fitted to, min.
    device
        Device whose throughput was measured (``cpu``, ``cuda:0`` ...).
    seconds_per_tmac
        Its measured time per 10^12 multiply-accumulates of a training step, s.
    seconds_per_iteration
        Expected time of one training iteration of this plan, s.
    iterations
        Expected iterations of one fold in ``minutes``.
    min_iterations
        Iterations the rule aimed for.
    trade_offs
        What was given up relative to nnU-Net's plan, in order; empty when nnU-Net's plan fits.
    nnunet_patch_size, nnunet_batch_size, nnunet_spacing
        nnU-Net's plan for this configuration, for reference.
    """

    minutes: float
    device: str
    seconds_per_tmac: float
    seconds_per_iteration: float
    iterations: int
    min_iterations: int
    trade_offs: tuple[str, ...]
    nnunet_patch_size: tuple[int, ...]
    nnunet_batch_size: int
    nnunet_spacing: tuple[float, ...]

    @property
    def enough(self) -> bool:
        return self.iterations >= self.min_iterations


@dataclass(frozen=True)
class ConfigurationPlan:
    """One trainable configuration (``2d``, ``3d_fullres``, ``3d_lowres``, ``3d_cascade_fullres``).

    Attributes
    ----------
    name
        Configuration name, the key of this plan in ``Plans.configurations``.
    spacing
        Target spacing, mm, in transposed axis order (2D: the in-plane axes only).
    patch_size
        Training patch, voxels.
    batch_size
        Patches per training step.
    median_shape
        Median case shape at this spacing after cropping, voxels.
    normalization
        One entry per input channel.
    architecture
        The U-Net to build.
    feature_map_voxels
        The planner's memory estimate for one patch: summed sizes of the network's feature maps.
    estimated_memory_gb
        What training at ``batch_size`` is expected to need on the accelerator, GB.
    batch_dice
        Compute the Dice loss over the whole batch instead of per sample.
    resample_order_data, resample_order_label, separate_z_anisotropy
        Interpolation orders (images 3, one-hot labels 1) and the spacing ratio above which the coarse axis is
        resampled separately with nearest neighbour.
    previous_stage, next_stage
        Cascade links: ``3d_cascade_fullres`` takes the predictions of ``previous_stage`` as extra input.
    budget
        How the plan was fitted to a training-time budget; ``None`` (and absent from the JSON) for nnU-Net's
        memory-only plan.
    """

    name: str
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    median_shape: tuple[float, ...]
    normalization: tuple[ChannelNormalization, ...]
    architecture: ArchitecturePlan
    feature_map_voxels: int
    estimated_memory_gb: float
    batch_dice: bool
    resample_order_data: int = 3
    resample_order_label: int = 1
    separate_z_anisotropy: float = 3.0
    previous_stage: str | None = None
    next_stage: str | None = None
    budget: BudgetFit | None = field(default=None, metadata=OMIT_IF_NONE)

    @property
    def dims(self) -> int:
        return len(self.patch_size)


@dataclass(frozen=True)
class Plans:
    """All configurations planned for one dataset, plus what produced them.

    Attributes
    ----------
    dataset_name
        Workspace folder name.
    preset
        Planner preset used (``default``, ``resenc-m`` ...).
    memory_target_gb
        Accelerator memory the batch and patch sizes were fitted to, GB.
    transpose_forward, transpose_backward
        Axis permutations between raw ``(z, y, x)`` arrays and the planned axis order.
    original_median_spacing, original_median_shape
        Raw data medians (mm, voxels after cropping) in transposed order, for reference.
    channel_names, labels
        From the dataset spec: input channels, and label names indexed by value.
    configurations
        Name -> plan, in the order they should be trained.
    fingerprint_sha256
        Hash of the fingerprint these plans were derived from.
    regions, regions_class_order
        Region-based training (:class:`autoseg.schema.dataset.Region`): one sigmoid output per region, written as
        the label values of ``regions_class_order``; ``None`` for softmax outputs, one per label.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset_name: str
    preset: str
    memory_target_gb: float
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    original_median_spacing: tuple[float, ...]
    original_median_shape: tuple[float, ...]
    channel_names: tuple[str, ...]
    labels: tuple[str, ...]
    configurations: dict[str, ConfigurationPlan]
    fingerprint_sha256: str
    autoseg_version: str
    regions: tuple[Region, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    regions_class_order: tuple[int, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per region (sigmoid), else one per label, background included (softmax)."""
        return len(self.regions) if self.regions else len(self.labels)

    def input_channels(self, configuration: str) -> int:
        """Network input channels of a configuration: the image channels, plus for a cascade stage one one-hot
        channel per foreground label of the previous stage's segmentation (as in nnU-Net)."""
        extra = len(self.labels) - 1 if self.configurations[configuration].previous_stage else 0
        return len(self.channel_names) + extra
