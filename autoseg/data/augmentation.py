"""The training augmentation pipeline (DESIGN.md), made reproducible.

Input batches come from :func:`autoseg.data.sampling.sample_batch`: ``"data"`` ``(B, C, *box)`` float32 and
``"seg"`` ``(B, S, *box)`` int8 (``S`` = 2 with a cascade's previous-stage segmentation), where ``box`` is the
pre-augmentation patch. Output: ``"data"`` ``(B, C', *patch)`` float32 (``C'`` adds the cascade's one-hot
channels) and ``"target"``: one ``(B, 1, *patch * scale)`` int8 array per deep-supervision scale, full resolution
first. Axis order is numpy ``(Z, Y, X)`` (2D: ``(Y, X)``) after the plans' ``transpose_forward``.

Steps, in order (probabilities per sample): spatial transform (rotation p 0.2, 3D +-30 deg or 2D / "2D-style"
+-180 deg; scaling 0.7-1.4 p 0.2; no elastic deformation; linear interpolation of the data and of the
segmentation's label indicators (argmax), as nnU-Net v2 does; outside the box data 0, segmentation -1) that also
centre-crops the box to the patch -- autoseg's own :mod:`autoseg.data.spatial`, several times faster than
batchgenerators' ``SpatialTransform`` on segmentations; then batchgenerators transforms: Gaussian noise p 0.1,
Gaussian blur p 0.2, multiplicative brightness p 0.15, contrast p 0.15, low-resolution simulation p 0.25 (nearest down, linear up, as nnU-Net v2), gamma on
the inverted image p 0.1, gamma p 0.3, mirroring of every axis (p 0.5 each); then optional masking of channels
normalised inside the nonzero mask; -1 -> 0 in the segmentation; cascade one-hot, randomly damaged in training
(:mod:`autoseg.data.previous_stage`); deep-supervision downsampling of the segmentation (nearest neighbour).

Reproducibility. The spatial step draws from the batch's :class:`numpy.random.Generator` directly.
batchgenerators draws from numpy's legacy global RNG (``np.random.*``) and from Python's
``random`` module. :func:`legacy_rng_seeded` is the one place in autoseg that touches those global generators: for
the duration of one batch's transforms it seeds both from the batch's own :class:`numpy.random.Generator`, and
restores their previous states afterwards, so the caller's global state is unchanged and the batch is a function
of its generator alone. It is not thread-safe against other threads drawing from the legacy generators at the same
time (autoseg's loader runs the pipeline in worker processes, or in the consumer's thread when it has no workers).
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform

from autoseg.data.previous_stage import perturb_previous_stage
from autoseg.data.sampling import one_hot_channels, pre_augmentation_patch_size
from autoseg.data.spatial import SpatialParams, spatial_augment
from autoseg.planning.topology import deep_supervision_scales
from autoseg.preprocessing.crop import OUTSIDE

ANISOTROPY_THRESHOLD = 3.0  # a 3D patch this many times longer in-plane than along axis 0 is augmented 2D-style


# --------------------------------------------------------------------------- randomness


@contextmanager
def legacy_rng_seeded(rng: np.random.Generator) -> Iterator[None]:
    """Seed numpy's legacy global RNG and Python's ``random`` from ``rng`` for the duration of the block, then
    restore both previous states.

    This is the one place autoseg touches those global generators, and only because batchgenerators draws from
    them internally. The seeds are the next draws of ``rng`` (so ``rng`` advances by a fixed amount).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    seeds = rng.integers(0, 2**32, size=8, dtype=np.uint32)
    try:
        np.random.seed(seeds[:4])
        random.seed(int.from_bytes(seeds[4:].tobytes(), "little"))
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# --------------------------------------------------------------------------- parameters


def needs_2d_style_augmentation(patch_size: Sequence[int], spacing: Sequence[float] | None = None,
                                threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    """Whether a 3D patch is so flat along axis 0 that spatial augmentation should act in-plane only.

    nnU-Net's rule compares voxel counts: ``max(patch) / patch[0] > 3``. With ``spacing`` (mm per axis) the
    comparison uses the patch's physical extent instead. Axis 0 is the planner's out-of-plane axis (the
    transpose puts the coarsest spacing first). 2D patches: always False.
    """
    if len(patch_size) != 3:
        return False
    extent = np.asarray(patch_size, dtype=float)
    if spacing is not None:
        extent = extent * np.asarray(spacing, dtype=float)
    return bool(extent.max() / extent[0] > threshold)


@dataclass(frozen=True)
class AugmentationParams:
    """Every number of the training augmentation pipeline.

    Attributes
    ----------
    patch_size
        Final patch, voxels (2 or 3 axes).
    max_rotation
        Largest absolute rotation angle, radians (about every axis in 3D; in-plane for 2D and 2D-style).
    do_2d_style
        3D patch augmented spatially slice by slice in the ``(Y, X)`` plane (strongly anisotropic patches).
    mirror_axes
        Spatial axes (0-based) mirrored with probability 0.5 each.
    deep_supervision_scales
        Per output, the scale per axis of its target (see :func:`deep_supervision_scales`); ``None``: one target
        at full resolution.
    num_extra_classes
        Cascade: label values (background included) of the previous stage; 0 disables.
    mask_channels
        Channels normalised inside the nonzero mask: set to 0 where the segmentation is -1 (outside), after
        augmentation.
    p_rotation, p_scaling, scale_range
        Spatial transform (:mod:`autoseg.data.spatial`): probabilities per sample, scale factor range (> 1 samples
        a larger region, i.e. zooms out).
    p_noise, noise_variance, p_blur, blur_sigma, p_blur_per_channel, p_brightness, brightness_range, p_contrast,
    contrast_range, p_low_res, low_res_zoom, p_low_res_per_channel, p_gamma_inverted, p_gamma, gamma_range
        Intensity transforms (probabilities per sample unless named per channel); sigma in voxels.
    p_previous_morphology, previous_radius_range, p_previous_remove_component, previous_max_component_fraction
        Cascade: random damage to the previous stage's one-hot input (see
        :func:`autoseg.data.previous_stage.perturb_previous_stage`).
    """

    patch_size: tuple[int, ...]
    max_rotation: float
    do_2d_style: bool = False
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    deep_supervision_scales: tuple[tuple[float, ...], ...] | None = None
    num_extra_classes: int = 0
    mask_channels: tuple[int, ...] = ()
    p_rotation: float = 0.2
    p_scaling: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_blur_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_low_res: float = 0.25
    low_res_zoom: tuple[float, float] = (0.5, 1.0)
    p_low_res_per_channel: float = 0.5
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    pre_patch_scale_range: tuple[float, float] = field(default=(0.85, 1.25))
    p_previous_morphology: float = 0.4
    previous_radius_range: tuple[float, float] = (1.0, 8.0)
    p_previous_remove_component: float = 0.2
    previous_max_component_fraction: float = 0.15

    def __post_init__(self) -> None:
        if len(self.patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 axes, got {self.patch_size}")
        if self.do_2d_style and len(self.patch_size) != 3:
            raise ValueError("2D-style augmentation applies to 3D patches only")

    @property
    def pre_patch_size(self) -> tuple[int, ...]:
        """The box the sampler must cut so that rotation and scaling find content (see
        :func:`autoseg.data.sampling.pre_augmentation_patch_size`)."""
        return pre_augmentation_patch_size(self.patch_size, self.max_rotation, self.pre_patch_scale_range,
                                           keep_first_axis=self.do_2d_style)


def training_params(patch_size: Sequence[int], strides: Sequence[Sequence[int]] | None = None,
                    spacing: Sequence[float] | None = None, num_extra_classes: int = 0,
                    mask_channels: Sequence[int] = (), anisotropy_in_mm: bool = False) -> AugmentationParams:
    """DESIGN.md's training augmentation for a patch.

    Parameters
    ----------
    patch_size
        Final patch, voxels.
    strides
        The architecture's strides (one list per stage, one entry per axis), for deep-supervision targets;
        ``None``: a single full-resolution target.
    spacing
        Target spacing, mm; used for the 2D-style decision only when ``anisotropy_in_mm``.
    num_extra_classes, mask_channels
        See :class:`AugmentationParams`.
    anisotropy_in_mm
        Decide 2D-style augmentation on the patch's physical extent instead of nnU-Net's voxel counts.
    """
    patch = tuple(int(v) for v in patch_size)
    dims = len(patch)
    do_2d_style = needs_2d_style_augmentation(patch, spacing if anisotropy_in_mm else None)
    if dims == 2:
        # a free in-plane rotation of an elongated patch would mostly show padding: keep it to +-15 deg
        rotation_deg = 15.0 if max(patch) / min(patch) > 1.5 else 180.0
    else:
        rotation_deg = 180.0 if do_2d_style else 30.0
    return AugmentationParams(
        patch_size=patch, max_rotation=math.radians(rotation_deg), do_2d_style=do_2d_style,
        mirror_axes=tuple(range(dims)),
        deep_supervision_scales=deep_supervision_scales(strides) if strides is not None else None,
        num_extra_classes=int(num_extra_classes), mask_channels=tuple(int(c) for c in mask_channels))


def training_params_from_plan(plan, num_extra_classes: int = 0, anisotropy_in_mm: bool = False
                              ) -> AugmentationParams:
    """:func:`training_params` for a :class:`autoseg.schema.plans.ConfigurationPlan`."""
    mask = [i for i, n in enumerate(plan.normalization) if n.use_nonzero_mask]
    return training_params(plan.patch_size, plan.architecture.strides, plan.spacing, num_extra_classes, mask,
                           anisotropy_in_mm)


# --------------------------------------------------------------------------- deterministic steps


def downsample_seg_nearest(seg: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """Nearest-neighbour resize of ``(B, S, *spatial)`` labels to ``round(spatial * scale)`` (each output voxel
    takes the input voxel under its centre)."""
    out = seg
    for axis, (n_in, s) in enumerate(zip(seg.shape[2:], scale), start=2):
        n_out = max(1, int(round(n_in * s)))
        if n_out != n_in:
            centres = ((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64)
            out = np.take(out, np.minimum(centres, n_in - 1), axis=axis)
    return out


def finalize_batch(data: np.ndarray, seg: np.ndarray, num_extra_classes: int = 0,
                   scales: Sequence[Sequence[float]] | None = None, mask_channels: Sequence[int] = ()) -> dict:
    """The deterministic tail shared by training and validation: mask, -1 -> 0, cascade one-hot, targets.

    Parameters
    ----------
    data
        ``(B, C, *patch)`` float.
    seg
        ``(B, S, *patch)`` labels; channel 0 the target, channel 1 (if any) the previous stage's segmentation.
    num_extra_classes
        Cascade label values (background included); requires ``S == 2``.
    scales
        Deep-supervision scales; ``None``: full resolution only.
    mask_channels
        Data channels set to 0 where ``seg[:, 0]`` is ``OUTSIDE`` (the nonzero mask).

    Returns
    -------
    dict
        ``"data"`` ``(B, C + num_extra_classes - 1, *patch)`` float32, ``"target"`` list of ``(B, 1, ...)`` int8.
    """
    data = np.ascontiguousarray(data, dtype=np.float32)
    seg = np.asarray(seg)
    if mask_channels:
        outside = seg[:, 0] == OUTSIDE
        for c in mask_channels:
            data[:, c][outside] = 0.0
    # -1 (outside / padding) is background for the loss; IGNORE (outside a region-of-interest mask) stays negative,
    # which the losses and the pseudo-Dice leave out
    seg = np.where(seg == OUTSIDE, 0, seg).astype(np.int8)
    if num_extra_classes > 0:
        if seg.shape[1] < 2:
            raise ValueError("cascade: num_extra_classes > 0 but the batch has no previous-stage segmentation")
        data = np.concatenate([data, one_hot_channels(seg[:, 1], num_extra_classes)], axis=1)
    seg = np.ascontiguousarray(seg[:, :1])
    targets = [np.ascontiguousarray(downsample_seg_nearest(seg, s)) for s in scales] if scales else [seg]
    return {"data": data, "target": targets}


# --------------------------------------------------------------------------- pipelines


class TrainingAugmentation:
    """DESIGN.md's augmentation as a callable ``(batch, rng) -> batch`` (see the module docstring).

    Parameters
    ----------
    params
        The pipeline's numbers; ``params.pre_patch_size`` is what the sampler must cut.
    """

    def __init__(self, params: AugmentationParams):
        self.params = params
        p = params
        self._spatial = SpatialParams(p.patch_size, p.max_rotation, p.do_2d_style, p.p_rotation, p.p_scaling,
                                      p.scale_range)
        # the low-resolution simulation must not resample the slice axis of a 2D-style 3D patch
        ignore_axes = (0,) if p.do_2d_style else None
        self._intensity = [
            GaussianNoiseTransform(p.noise_variance, p_per_sample=p.p_noise),
            GaussianBlurTransform(p.blur_sigma, different_sigma_per_channel=True, p_per_sample=p.p_blur,
                                  p_per_channel=p.p_blur_per_channel),
            BrightnessMultiplicativeTransform(multiplier_range=p.brightness_range, p_per_sample=p.p_brightness),
            ContrastAugmentationTransform(p.contrast_range, p_per_sample=p.p_contrast),
            SimulateLowResolutionTransform(zoom_range=p.low_res_zoom, per_channel=True,
                                           p_per_channel=p.p_low_res_per_channel, order_downsample=0,
                                           order_upsample=1, p_per_sample=p.p_low_res, ignore_axes=ignore_axes),
            GammaTransform(p.gamma_range, invert_image=True, per_channel=True, retain_stats=True,
                           p_per_sample=p.p_gamma_inverted),
            GammaTransform(p.gamma_range, invert_image=False, per_channel=True, retain_stats=True,
                           p_per_sample=p.p_gamma),
        ]
        self._mirror = MirrorTransform(p.mirror_axes) if p.mirror_axes else None

    @property
    def pre_patch_size(self) -> tuple[int, ...]:
        return self.params.pre_patch_size

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        """Augment one sampled batch.

        Parameters
        ----------
        batch
            ``"data"`` ``(B, C, *box)`` float32, ``"seg"`` ``(B, S, *box)`` int8, optional ``"keys"``.
        rng
            The batch's generator; every random draw derives from it.

        Returns
        -------
        dict
            ``"data"`` ``(B, C', *patch)`` float32, ``"target"`` list of int8 arrays, ``"keys"`` passed through.
        """
        p = self.params
        data = np.asarray(batch["data"], dtype=np.float32)
        seg = np.asarray(batch["seg"])
        data, seg = spatial_augment(data, seg, self._spatial, rng)
        with legacy_rng_seeded(rng):
            d = {"data": data, "seg": seg}
            for t in self._intensity:
                d = t(**d)
            if self._mirror is not None:
                d = self._mirror(**d)
        out = finalize_batch(d["data"], d["seg"], p.num_extra_classes,
                             p.deep_supervision_scales, p.mask_channels)
        if p.num_extra_classes > 1:
            perturb_previous_stage(out["data"][:, -(p.num_extra_classes - 1):], rng, p.p_previous_morphology,
                                   p.previous_radius_range, p.p_previous_remove_component,
                                   p.previous_max_component_fraction)
        if "keys" in batch:
            out["keys"] = batch["keys"]
        return out


class ValidationTransforms:
    """No augmentation: the deterministic tail only (sample at the final patch size). ``rng`` is unused."""

    def __init__(self, deep_supervision_scales: Sequence[Sequence[float]] | None = None,
                 num_extra_classes: int = 0, mask_channels: Sequence[int] = ()):
        self.scales = deep_supervision_scales
        self.num_extra_classes = num_extra_classes
        self.mask_channels = tuple(mask_channels)

    def __call__(self, batch: dict, rng: np.random.Generator | None = None) -> dict:
        out = finalize_batch(batch["data"], batch["seg"], self.num_extra_classes, self.scales, self.mask_channels)
        if "keys" in batch:
            out["keys"] = batch["keys"]
        return out
