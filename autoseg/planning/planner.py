"""The planner: composes the heuristics into :class:`~autoseg.schema.plans.Plans`. Pure; no I/O, no torch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from autoseg import __version__
from autoseg.planning.budget import TimeBudget, fit_to_budget
from autoseg.planning.configuration import ConfigurationChoice, fit_configuration
from autoseg.planning.normalization import choose_normalization
from autoseg.planning.presets import PlannerPreset
from autoseg.planning.spacing import resampled_shape, target_spacing, transpose_axes
from autoseg.schema.base import sha256_of
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import BudgetFit, ChannelNormalization, ConfigurationPlan, Plans


def _config(name: str, spacing, median_shape, choice: ConfigurationChoice,
            normalization: tuple[ChannelNormalization, ...], batch_dice: bool, aniso: float) -> ConfigurationPlan:
    return ConfigurationPlan(
        name=name, spacing=tuple(float(s) for s in spacing), patch_size=choice.patch_size,
        batch_size=choice.batch_size, median_shape=tuple(float(m) for m in median_shape),
        normalization=normalization, architecture=choice.architecture,
        feature_map_voxels=choice.feature_map_voxels, estimated_memory_gb=round(choice.estimated_memory_gb, 3),
        batch_dice=batch_dice, separate_z_anisotropy=aniso)


def fit_plan_to_budget(plan: ConfigurationPlan, dataset_voxels: float, num_classes: int, in_channels: int,
                       preset: PlannerPreset, memory_gb: float, budget: TimeBudget,
                       structure_mm: float | None = None) -> ConfigurationPlan:
    """``plan`` (nnU-Net's) refitted by :func:`autoseg.planning.budget.fit_to_budget`, with its
    :class:`~autoseg.schema.plans.BudgetFit` recorded; spacing, median shape, patch, batch and network may change.
    """
    got = fit_to_budget(plan.spacing, plan.median_shape, dataset_voxels, num_classes, in_channels, preset,
                        memory_gb, budget.minutes * 60, budget.seconds_per_mac, budget.min_iterations, structure_mm)
    fit = BudgetFit(minutes=float(budget.minutes), device=budget.device,
                    seconds_per_tmac=round(budget.seconds_per_mac * 1e12, 3),
                    seconds_per_iteration=round(got.seconds_per_iteration, 3), iterations=got.iterations,
                    min_iterations=budget.min_iterations, trade_offs=got.trade_offs,
                    nnunet_patch_size=plan.patch_size, nnunet_batch_size=plan.batch_size,
                    nnunet_spacing=plan.spacing)
    fitted = _config(plan.name, got.spacing, got.median_shape, got.choice, plan.normalization, plan.batch_dice,
                     plan.separate_z_anisotropy)
    return replace(fitted, previous_stage=plan.previous_stage, next_stage=plan.next_stage, budget=fit)


def _fit_all(configs: dict[str, ConfigurationPlan], voxels: dict[str, float], num_classes: int, channels: int,
             preset: PlannerPreset, memory_gb: float, budget: TimeBudget, structure_mm: float | None
             ) -> dict[str, ConfigurationPlan]:
    fitted = {name: fit_plan_to_budget(c, voxels[name], num_classes, channels, preset, memory_gb, budget,
                                       structure_mm)
              for name, c in configs.items() if name != "3d_cascade_fullres"}
    full = fitted.get("3d_fullres")
    if "3d_lowres" in fitted and full is not None and full.spacing != configs["3d_fullres"].spacing:
        # the budget already put 3d_fullres at a coarser spacing: a second, low-resolution stage adds nothing
        del fitted["3d_lowres"]
        fitted["3d_fullres"] = replace(full, next_stage=None, budget=replace(full.budget, trade_offs=(
            *full.budget.trade_offs, "no cascade: 3d_fullres is already at a coarser spacing")))
    elif "3d_cascade_fullres" in configs:
        fitted["3d_cascade_fullres"] = replace(fitted["3d_fullres"], name="3d_cascade_fullres",
                                               previous_stage="3d_lowres")
    return {name: fitted[name] for name in configs if name in fitted}


def make_plans(fingerprint: Fingerprint, preset: PlannerPreset, memory_gb: float,
               budget: TimeBudget | None = None) -> Plans:
    """Derive every configuration for a dataset.

    ``3d_fullres`` at the target spacing; ``3d_lowres`` (+ ``3d_cascade_fullres``) when the full-res patch covers
    less than ``preset.lowres_threshold`` of the median case: the spacing grows by ``lowres_spacing_step`` (the
    anisotropic axes first, until within 2x of the others) until the low-res patch covers enough, and the
    low-res stage is dropped when it shrinks the median case by less than 2x. ``2d`` on the in-plane axes.

    With ``budget``, every configuration is then fitted to the time of one fold
    (:func:`fit_plan_to_budget`); the cascade is dropped when the budget coarsens ``3d_fullres`` itself.

    Parameters
    ----------
    fingerprint
        Dataset fingerprint.
    preset
        Planner numbers.
    memory_gb
        Accelerator memory target, GB.
    budget
        Training time per fold and the device's measured speed; ``None``: nnU-Net's plans, from memory alone.
    """
    # network outputs: one sigmoid per region, or one softmax channel per label
    num_classes = len(fingerprint.regions) if fingerprint.regions else len(fingerprint.labels)
    num_cases = len(fingerprint.cases)
    aniso = preset.anisotropy_threshold
    spacings = fingerprint.spacings
    shapes = fingerprint.shapes_after_crop

    fullres = np.asarray(target_spacing(spacings, shapes, aniso))
    forward, backward = transpose_axes(fullres)
    fwd = list(forward)
    fullres_t = fullres[fwd]
    new_shapes = [resampled_shape(sh, sp, fullres) for sp, sh in zip(spacings, shapes)]
    median_t = np.median(np.asarray(new_shapes, dtype=np.float64), axis=0)[fwd]
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * num_cases)
    normalization = choose_normalization(fingerprint.channel_names, fingerprint.intensity,
                                         fingerprint.median_relative_size_after_crop)

    configs: dict[str, ConfigurationPlan] = {}
    if median_t[0] != 1:
        configs = _volume_configurations(fullres_t, median_t, num_cases, num_classes, preset, memory_gb,
                                         normalization)
    two_d = fit_configuration(fullres_t[1:], median_t[1:], dataset_voxels, num_classes, preset, memory_gb)
    configs = {"2d": _config("2d", fullres_t[1:], median_t[1:], two_d, normalization, True, aniso), **configs}
    if budget is not None:
        voxels = {name: (dataset_voxels if name in ("2d", "3d_fullres")
                         else float(np.prod(c.median_shape, dtype=np.float64)) * num_cases)
                  for name, c in configs.items()}
        configs = _fit_all(configs, voxels, num_classes, len(fingerprint.channel_names), preset, memory_gb,
                           budget, fingerprint.thinnest_structure_mm)

    return Plans(
        dataset_name=fingerprint.dataset_name,
        preset=preset.name,
        memory_target_gb=float(memory_gb),
        transpose_forward=tuple(int(i) for i in forward),
        transpose_backward=tuple(int(i) for i in backward),
        original_median_spacing=tuple(float(v) for v in np.median(np.asarray(spacings), axis=0)[fwd]),
        original_median_shape=tuple(float(v) for v in np.median(np.asarray(shapes), axis=0)[fwd]),
        channel_names=fingerprint.channel_names,
        labels=fingerprint.labels,
        configurations=configs,
        fingerprint_sha256=sha256_of(fingerprint),
        autoseg_version=__version__,
        regions=fingerprint.regions,
        regions_class_order=fingerprint.regions_class_order,
    )


def _volume_configurations(fullres_t: np.ndarray, median_t: np.ndarray, num_cases: int, num_classes: int,
                           preset: PlannerPreset, memory_gb: float, normalization) -> dict[str, ConfigurationPlan]:
    """``3d_fullres``, and ``3d_lowres`` + ``3d_cascade_fullres`` when the full-resolution patch covers too little
    of the median case (:func:`make_plans`); spacing and shape in the planned axis order."""
    aniso = preset.anisotropy_threshold
    full = fit_configuration(fullres_t, median_t, float(np.prod(median_t, dtype=np.float64) * num_cases),
                             num_classes, preset, memory_gb)
    low, low_spacing, low_median = _lowres_stage(fullres_t, median_t, full, num_cases, num_classes, preset,
                                                 memory_gb)
    configs: dict[str, ConfigurationPlan] = {}
    if low is not None:
        configs["3d_lowres"] = replace(
            _config("3d_lowres", low_spacing, low_median, low, normalization, False, aniso),
            next_stage="3d_cascade_fullres")
    configs["3d_fullres"] = _config("3d_fullres", fullres_t, median_t, full, normalization, low is not None, aniso)
    if low is not None:
        configs["3d_cascade_fullres"] = replace(configs["3d_fullres"], name="3d_cascade_fullres",
                                                previous_stage="3d_lowres")
    return configs


def _lowres_stage(fullres_t: np.ndarray, median_t: np.ndarray, full, num_cases: int, num_classes: int,
                  preset: PlannerPreset, memory_gb: float):
    """``(choice, spacing, median shape)`` of the low-resolution stage, or ``(None, ...)`` when the full-resolution
    patch covers enough of the median case or coarsening gains less than 2x."""
    median_voxels = float(np.prod(median_t, dtype=np.float64))
    patch_voxels = float(np.prod(full.patch_size, dtype=np.float64))
    low, low_spacing, low_median = None, fullres_t.copy(), median_t
    while patch_voxels / median_voxels < preset.lowres_threshold:
        coarsest = low_spacing.max()
        fine_axes = coarsest / low_spacing > 2
        # catch up the fine axes first so the low-res data becomes more isotropic, then grow all of them
        if fine_axes.any():
            low_spacing[fine_axes] *= preset.lowres_spacing_step
        else:
            low_spacing *= preset.lowres_spacing_step
        low_median_f = fullres_t / low_spacing * median_t
        median_voxels = float(np.prod(low_median_f, dtype=np.float64))
        low_median = np.array([round(float(m)) for m in low_median_f], dtype=np.float64)
        low = fit_configuration(low_spacing, low_median, median_voxels * num_cases, num_classes, preset, memory_gb)
        patch_voxels = float(np.prod(low.patch_size, dtype=np.float64))
    if low is not None and float(np.prod(median_t, dtype=np.float64)) / median_voxels < 2:
        low = None  # too little gained over full resolution to be worth a second stage
    return low, low_spacing, low_median
