"""Planner presets (``plans/presets/*.json``): the numbers that differ between planner flavours."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import ClassVar

from autoseg.errors import AutosegError, option
from autoseg.schema.base import from_jsonable


@dataclass(frozen=True)
class PlannerPreset:
    """Numbers the planner works with.

    Attributes
    ----------
    name, description
        Identification; ``name`` is what ``--preset`` takes.
    network
        ``"plain_unet"`` or ``"resenc_unet"``.
    memory_target_gb
        Default accelerator memory target, GB; ``None`` means ``reference_memory_gb``, or the CUDA device's
        memory when that is less (never more: nnU-Net plans for its reference memory on any GPU).
    reference_memory_gb
        Memory that ``reference_value_3d`` / ``_2d`` correspond to, GB.
    reference_value_3d, reference_value_2d
        Feature-map voxels (see :mod:`autoseg.planning.memory`) that fit ``reference_memory_gb`` at
        ``reference_batch_3d`` / ``_2d``.
    blocks_per_stage_encoder, blocks_per_stage_decoder
        Convolutions (or residual blocks) per stage; truncated to the number of stages.
    base_features, max_features_3d, max_features_2d
        Features of the first stage (doubling per stage) and their cap.
    min_batch_size
        Lower bound of the batch size.
    featuremap_min_edge
        Smallest bottleneck edge, voxels.
    max_dataset_covered
        One batch may hold at most this fraction of the dataset's voxels (an overfitting guard).
    lowres_threshold, lowres_spacing_step
        A 3d_lowres configuration is made when the full-res patch covers less than this fraction of the median
        case; its spacing grows by this factor per search step.
    anisotropy_threshold
        Spacing ratio that makes data anisotropic (target spacing rule, separate-z resampling).
    initial_patch_edge_3d, initial_patch_edge_2d
        Start the patch search from the volume of a cube (square) of this edge.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    name: str
    description: str
    network: str
    memory_target_gb: float | None
    reference_memory_gb: float
    reference_value_3d: float
    reference_value_2d: float
    reference_batch_3d: int = 2
    reference_batch_2d: int = 12
    blocks_per_stage_encoder: tuple[int, ...] = (2,) * 14
    blocks_per_stage_decoder: tuple[int, ...] = (2,) * 13
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    min_batch_size: int = 2
    featuremap_min_edge: int = 4
    max_dataset_covered: float = 0.05
    lowres_threshold: float = 0.25
    lowres_spacing_step: float = 1.03
    anisotropy_threshold: float = 3.0
    initial_patch_edge_3d: int = 256
    initial_patch_edge_2d: int = 2048
    schema_version: int = field(default=SCHEMA_VERSION)


def _preset_dir():
    return resources.files("autoseg._plans").joinpath("presets")


def available_presets() -> list[str]:
    """Names of the presets shipped with autoseg."""
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> PlannerPreset:
    """Load a shipped preset by name.

    Raises
    ------
    AutosegError
        Unknown name (the message lists the known ones).
    """
    f = _preset_dir().joinpath(f"{name}.json")
    if not f.is_file():
        raise AutosegError(f"{option('preset')} {name}: unknown preset; available: {', '.join(available_presets())}")
    return from_jsonable(PlannerPreset, json.loads(f.read_text()))
