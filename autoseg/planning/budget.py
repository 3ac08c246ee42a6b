"""Fitting a configuration to a time budget as well as to memory (``autoseg plan --budget``).

The budget here is the training time of one fold; the run plan (:mod:`autoseg.planning.run_plan`) decides it from
the wall-clock budget of the whole training run, and its target of iterations (``min_iterations``) is the run
rule's ``target_iterations``, a parameter so that measurements can change it.

nnU-Net plans the largest patch that fits the accelerator's memory and trains it 250,000 iterations. On a CPU or a
small GPU the same plan may get a few hundred iterations in the time a user has, too few to learn. The rule here
keeps nnU-Net's plan whenever it reaches ``min_iterations`` in the budget (so with a large budget the plans stay
identical to nnU-Net's), and otherwise walks down a fixed ladder of cheaper plans, taking the first that does:

1. the batch size, down to :data:`MIN_BATCH` (nnU-Net's own minimum): the cheapest loss, it only makes gradients
   noisier;
2. the patch trimmed at the planned spacing while it still holds :data:`MIN_TRIM_COVERAGE` of the median case's
   voxels (nnU-Net's patch is often as large as the whole case: trimming it costs little context);
3. the target spacing, coarser in steps of the preset's ``lowres_spacing_step`` (the finest axes first, as nnU-Net
   does for its ``3d_lowres``) up to :data:`MAX_COARSENING` per axis, never below :data:`MIN_COARSE_EDGE` voxels
   of the median case and never so coarse that the thinnest structure is less than :data:`MIN_VOXELS_ACROSS`
   voxels across, with the patch fitted to the memory target scaled by the voxel ratio, so the patch keeps
   nnU-Net's field of view in mm: the network keeps its context and loses resolution (predictions are resampled
   to full resolution anyway);
4. the width, at the coarsest spacing's patch: base features halved (down to :data:`MIN_BASE_FEATURES`):
   capacity is lost, which a network trained a few hundred iterations does not yet use;
5. the patch, at the narrowest width, by fitting it to smaller memory targets with the memory planner itself
   (:func:`autoseg.planning.configuration.fit_configuration`: the axis largest relative to the median case shrinks
   first, and the topology follows the patch), down to :data:`MIN_PATCH_FRACTION` of that rung's patch volume:
   context is lost, the last thing to give up, and only as far as :data:`CONTEXT_FLOOR` of ``min_iterations``
   needs (the whole field of view is taken at that lower target first).

Step times come from the compute model (:mod:`autoseg.planning.compute`) and the device's measured seconds per
multiply-accumulate, so the rule is pure and works with any device's throughput.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from autoseg.planning.compute import step_seconds, training_macs
from autoseg.planning.configuration import ConfigurationChoice, fit_configuration
from autoseg.planning.presets import PlannerPreset

#: Smallest batch the ladder goes to.
MIN_BATCH = 2
#: The trim rung keeps patches that hold at least this fraction of the median case's voxels.
MIN_TRIM_COVERAGE = 0.75
#: Memory-target factor between successive patches of the trim and patch rungs (fine steps, so the rule stops
#: at the largest patch that reaches the iterations).
PATCH_STEP = 0.9
#: Coarsest target spacing the ladder goes to, as a factor of the planned spacing per axis.
MAX_COARSENING = 2.0
#: The spacing rung stops coarsening an axis once the median case would have fewer voxels along it.
MIN_COARSE_EDGE = 32
#: The spacing rung keeps the dataset's thinnest structure (its typical thickness, see
#: :func:`autoseg.fingerprint.case.thinnest_structure_mm`) at least this many voxels across: a left atrium
#: (5.6 mm) may go from 0.625 to 1.25 mm, hippocampi (2.8 mm at 1 mm) and retinal vessels (2 pixels) are never
#: coarsened; their budget is met by the patch and width rungs instead.
MIN_VOXELS_ACROSS = 3.0
#: Smallest patch volume the patch rung goes to, as a fraction of the patch it starts from.
MIN_PATCH_FRACTION = 1 / 8
#: Smallest base width the ladder goes to.
MIN_BASE_FEATURES = 16
#: A fold's wall time per iteration over the compute model's step time at the probe's measured throughput
#: (:mod:`autoseg.training.calibration`): on this project's 2-core CPU the probe measures 27-29 s per 10^12 MACs
#: and a LA2018 fold (28x48x64 patch, batch 2, width 32) trained at 29 s per 10^12 MACs, data loading and
#: per-epoch validation included; narrow networks run up to 1.4x slower per MAC (compute_model.txt).
TRAINING_OVERHEAD = 1.1
#: Iterations a fold should reach by default. On Hippocampus ~600 iterations reached Dice 0.86 and ~40 gave 0
#: (nnU-Net trains 250,000); fewer than this and a network is still learning the basics when the time is up.
MIN_ITERATIONS = 500
#: The patch rung (context) is given up only to reach this fraction of ``min_iterations``: on LA2018 in 20 minutes,
#: the whole 40x64x96 field of view at width 16 reached validation Dice 0.876 in 396 iterations where 500
#: iterations of a 24x40x48 patch (a third of the atrium's context) reached 0.58-0.61.
CONTEXT_FLOOR = 0.6
#: Base width of the throughput probe's network (the default preset's 3D U-Net): its seconds per MAC are the
#: device's. Narrower networks use a CPU less well per MAC: half the width measured 1.33x the seconds per MAC
#: (46.6 vs 35.0 s per 10^12, Hippocampus, compute_model.txt) and a LA2018 fold at width 16 trained 396
#: iterations where its MACs priced 592. A network of base width ``w`` is priced ``(PROBE_WIDTH / w) **
#: NARROW_EXPONENT`` times its MACs' (never less than its MACs').
PROBE_WIDTH = 32
NARROW_EXPONENT = 0.415


@dataclass(frozen=True)
class TimeBudget:
    """What the budget rule needs besides the dataset: the time per fold and the device's speed.

    Attributes
    ----------
    minutes
        Training time of one fold, min.
    device
        The device measured (recorded in the plans).
    seconds_per_mac
        Its measured time per multiply-accumulate of a training step, s.
    min_iterations
        Iterations a fold should reach.
    """

    minutes: float
    device: str
    seconds_per_mac: float
    min_iterations: int = MIN_ITERATIONS


@dataclass(frozen=True)
class BudgetChoice:
    """A plan fitted to a budget.

    Attributes
    ----------
    choice
        Patch, batch and architecture.
    spacing
        Target spacing, mm (transposed axis order): the planned one unless the spacing rung was taken.
    median_shape
        Median case shape at ``spacing``, voxels.
    seconds_per_iteration
        Expected, from the compute model and the device's throughput.
    iterations
        Expected training iterations in the budget.
    trade_offs
        What was given up relative to nnU-Net's plan, in order (empty: nnU-Net's plan).
    enough
        ``iterations >= min_iterations``, or, for a plan that gave up context (the patch rung), ``>=``
        :data:`CONTEXT_FLOOR` of it (``False``: even the cheapest rung is short of that).
    """

    choice: ConfigurationChoice
    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    seconds_per_iteration: float
    iterations: int
    trade_offs: tuple[str, ...]
    enough: bool


def _shape(values) -> str:
    return "x".join(str(int(v)) for v in values)


def _smaller_patches(spacing, median_shape, dataset_voxels: float, num_classes: int, preset: PlannerPreset,
                     memory_gb: float, min_voxels: float, max_batch: int, start: tuple[int, ...]):
    """``(choice, memory target)`` of ever smaller patches at one spacing, fitted by the memory planner to targets
    :data:`PATCH_STEP` apart below ``memory_gb`` (where the patch is ``start``), each distinct, none under
    ``min_voxels``; batch at most ``max_batch``."""
    target, previous = memory_gb, tuple(start)
    while True:
        target *= PATCH_STEP
        choice = fit_configuration(spacing, median_shape, dataset_voxels, num_classes, preset, target)
        if math.prod(choice.patch_size) < min_voxels:
            return
        if choice.patch_size != previous:
            previous = choice.patch_size
            yield dataclasses.replace(choice, batch_size=min(choice.batch_size, max_batch)), target


def coarser_spacings(spacing: Sequence[float], median_shape: Sequence[float], step: float,
                     structure_mm: float | None = None) -> list[np.ndarray]:
    """The spacing rung's candidates, finest first (the planned spacing itself excluded).

    Each step multiplies the finest axes (those more than 2x finer than the coarsest) by ``step``, or all axes when
    none is, leaving out axes that reached :data:`MAX_COARSENING`, whose median extent would drop below
    :data:`MIN_COARSE_EDGE` voxels, or whose spacing would leave a structure ``structure_mm`` thick fewer than
    :data:`MIN_VOXELS_ACROSS` voxels across.

    Examples
    --------
    >>> steps = coarser_spacings((1.0, 1.0, 1.0), (200, 200, 200), 1.5)
    >>> [s.tolist() for s in steps]
    [[1.5, 1.5, 1.5], [2.0, 2.0, 2.0]]
    >>> coarser_spacings((1.0, 1.0, 1.0), (30, 200, 200), 2.0)[0].tolist()  # 30 voxels: too few to coarsen
    [1.0, 2.0, 2.0]
    >>> coarser_spacings((1.0, 1.0), (584, 565), 1.5, structure_mm=2.0)  # 2-pixel vessels: never coarsened
    []
    """
    base = np.asarray(spacing, dtype=np.float64)
    median = np.asarray(median_shape, dtype=np.float64)
    limit = np.minimum(base * MAX_COARSENING, np.maximum(base, base * median / MIN_COARSE_EDGE))
    if structure_mm is not None:
        limit = np.minimum(limit, np.maximum(base, structure_mm / MIN_VOXELS_ACROSS))
    current, out = base.copy(), []
    while True:
        open_axes = current < limit - 1e-9
        if not open_axes.any():
            return out
        fine = open_axes & (current.max() / current > 2)
        grow = fine if fine.any() else open_axes
        current = np.where(grow, np.minimum(current * step, limit), current)
        out.append(current.copy())


def fit_to_budget(spacing: Sequence[float], median_shape: Sequence[float], dataset_voxels: float,
                  num_classes: int, in_channels: int, preset: PlannerPreset, memory_gb: float,
                  budget_seconds: float, seconds_per_mac: float, min_iterations: int = MIN_ITERATIONS,
                  structure_mm: float | None = None) -> BudgetChoice:
    """The first plan of the ladder (module docstring) that reaches ``min_iterations`` in ``budget_seconds`` (on
    the patch rung: :data:`CONTEXT_FLOOR` of it).

    Parameters
    ----------
    spacing, median_shape, dataset_voxels, num_classes, preset, memory_gb
        As for :func:`~autoseg.planning.configuration.fit_configuration` (spacing in mm, shape in voxels, both in
        the planned axis order; 2D: the in-plane axes).
    in_channels
        Network input channels.
    budget_seconds
        Training time of one fold, s.
    seconds_per_mac
        The device's measured time per multiply-accumulate of a training step (see
        :func:`autoseg.planning.compute.training_macs`); a fold's iteration is expected to take
        :data:`TRAINING_OVERHEAD` times the step this prices.
    min_iterations
        Iterations a fold needs.
    structure_mm
        Thickness of the dataset's thinnest structure, mm (limits the spacing rung; ``None``: not known).

    Returns
    -------
    BudgetChoice
        nnU-Net's plan (no trade-offs) when it reaches ``min_iterations``; else the first cheaper rung that does;
        else the cheapest rung, with ``enough`` false.

    Examples
    --------
    >>> from autoseg.planning.presets import load_preset
    >>> preset = load_preset("default")
    >>> fit = lambda budget: fit_to_budget((1.0, 1.0, 1.0), (36, 50, 35), 208 * 36 * 50 * 35, 3, 1, preset, 8.0,
    ...                                    budget, 1e-11, 1000)
    >>> fit(1e7).trade_offs  # plenty of time: nnU-Net's plan
    ()
    >>> fit(600).trade_offs[0].startswith("batch")
    True
    """
    spacing0 = tuple(float(s) for s in spacing)
    median0 = tuple(float(m) for m in median_shape)
    data = _Dataset(spacing0, median0, dataset_voxels, num_classes, preset, memory_gb)
    got = None
    for rung, needed in _ladder(data, structure_mm, min_iterations):
        seconds = plan_seconds_per_iteration(rung.choice.architecture, rung.choice.patch_size, rung.choice.batch_size,
                                             in_channels, num_classes, seconds_per_mac)
        its = int(budget_seconds // seconds)
        got = BudgetChoice(rung.choice, rung.spacing, rung.median_shape, seconds, its, rung.trade_offs, its >= needed)
        if got.enough:
            return got
    return got


class _Dataset(NamedTuple):
    """What the memory planner needs of a dataset at its planned spacing (as :func:`fit_to_budget` gets it)."""

    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    voxels: float
    num_classes: int
    preset: PlannerPreset
    memory_gb: float

    def median_at(self, spacing) -> tuple[float, ...]:
        """The median case's shape at a coarser ``spacing``, voxels."""
        return tuple(float(m) * s0 / s for m, s0, s in zip(self.median_shape, self.spacing, spacing))


class _Rung(NamedTuple):
    """One plan of the ladder and what was given up for it."""

    choice: ConfigurationChoice
    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    trade_offs: tuple[str, ...]


def _ladder(data: _Dataset, structure_mm: float | None, min_iterations: int):
    """Every rung of the ladder (module docstring), cheaper and cheaper, each with the iterations it must reach;
    evaluated lazily."""
    base = fit_configuration(data.spacing, data.median_shape, data.voxels, data.num_classes, data.preset,
                             data.memory_gb)
    nnunet = _Rung(base, data.spacing, data.median_shape, ())
    yield nnunet, min_iterations
    last = yield from _batch_rungs(nnunet, min_iterations)
    batch = last.choice.batch_size
    last, kept = yield from _trim_rungs(data, last, min_iterations)
    last = yield from _spacing_rungs(data, last, kept, batch, structure_mm, min_iterations)
    yield from _width_then_patch_rungs(data, last, kept, min_iterations)


def _batch_rungs(start: _Rung, min_iterations: int):
    """1. The batch halved down to :data:`MIN_BATCH`; returns the last rung."""
    base, last = start.choice, start
    batch = base.batch_size
    while batch > MIN_BATCH:
        batch = max(MIN_BATCH, batch // 2)
        last = start._replace(choice=dataclasses.replace(base, batch_size=batch),
                              trade_offs=(f"batch {base.batch_size} -> {batch}",))
        yield last, min_iterations
    return last


def _trim_rungs(data: _Dataset, start: _Rung, min_iterations: int):
    """2. The patch trimmed at the planned spacing while it holds :data:`MIN_TRIM_COVERAGE` of the median case;
    returns the last rung and its memory target (the next rungs keep its field of view)."""
    base, last, kept = start.choice, start, data.memory_gb
    median_voxels = math.prod(data.median_shape)
    for trimmed, target in _smaller_patches(data.spacing, data.median_shape, data.voxels, data.num_classes,
                                            data.preset, data.memory_gb, MIN_TRIM_COVERAGE * median_voxels,
                                            base.batch_size, base.patch_size):
        last, kept = start._replace(choice=trimmed, trade_offs=start.trade_offs + (
            f"patch {_shape(base.patch_size)} -> {_shape(trimmed.patch_size)} (still "
            f"{math.prod(trimmed.patch_size) / median_voxels:.0%} of the median case)",)), target
        yield last, min_iterations
    return last, kept


def _spacing_rungs(data: _Dataset, start: _Rung, kept: float, batch: int, structure_mm: float | None,
                   min_iterations: int):
    """3. Coarser target spacings, each with the patch of the same field of view (batch at most ``batch``);
    returns the last rung."""
    last, fov = start, start.choice.patch_size
    for sp in coarser_spacings(data.spacing, data.median_shape, data.preset.lowres_spacing_step, structure_mm):
        ratio = float(np.prod(np.asarray(data.spacing) / sp))
        med = data.median_at(sp)
        coarse = fit_configuration(sp, med, data.voxels * ratio, data.num_classes, data.preset, kept * ratio)
        coarse = dataclasses.replace(coarse, batch_size=min(coarse.batch_size, batch))
        sp_t = tuple(round(float(s), 6) for s in sp)
        last = _Rung(coarse, sp_t, med, start.trade_offs + (
            f"spacing {'x'.join(f'{s:.3g}' for s in data.spacing)} -> {'x'.join(f'{s:.3g}' for s in sp_t)} mm "
            f"(patch {_shape(fov)} -> {_shape(coarse.patch_size)}, same field of view)",))
        yield last, min_iterations
    return last


def _width_then_patch_rungs(data: _Dataset, start: _Rung, kept: float, min_iterations: int):
    """4. The width at the whole field of view; 5. the patch at the narrowest width, to :data:`CONTEXT_FLOOR` of
    the iterations (the whole field of view first at that lower target).

    A network that gets a few hundred iterations is far from what its capacity could learn, while a patch that no
    longer holds the structure's context cannot learn it at all (LA2018, 20 min: 24x40x48 at width 32 gave Dice
    0.58-0.61, the whole 40x64x96 at width 16 0.876).
    """
    preset = data.preset
    widths = [preset.base_features]
    while widths[-1] // 2 >= MIN_BASE_FEATURES:
        widths.append(widths[-1] // 2)

    def narrowed(p: ConfigurationChoice, width: int) -> ConfigurationChoice:
        arch = p.architecture
        feats = tuple(max(width, f * width // preset.base_features) for f in arch.features_per_stage)
        return dataclasses.replace(p, architecture=dataclasses.replace(arch, features_per_stage=feats))

    for width in widths[1:]:
        yield start._replace(choice=narrowed(start.choice, width),
                             trade_offs=start.trade_offs + (f"features {preset.base_features} -> {width}",)), \
            min_iterations
    width, floor = widths[-1], math.ceil(CONTEXT_FLOOR * min_iterations)
    narrow = start.trade_offs + ((f"features {preset.base_features} -> {width}",) if len(widths) > 1 else ())
    yield start._replace(choice=narrowed(start.choice, width), trade_offs=narrow), floor
    voxels = data.voxels * math.prod(start.median_shape) / math.prod(data.median_shape)
    ratio = float(np.prod(np.asarray(data.spacing) / np.asarray(start.spacing)))
    for p, _ in _smaller_patches(start.spacing, start.median_shape, voxels, data.num_classes, preset, kept * ratio,
                                 MIN_PATCH_FRACTION * math.prod(start.choice.patch_size), start.choice.batch_size,
                                 start.choice.patch_size):
        yield start._replace(choice=narrowed(p, width), trade_offs=narrow + (
            f"patch {_shape(start.choice.patch_size)} -> {_shape(p.patch_size)}",)), floor


#: Iterations of one nnU-Net fold (1000 epochs of 250).
NNUNET_ITERATIONS = 250_000


def plan_seconds_per_iteration(arch, patch_size: Sequence[int], batch_size: int, in_channels: int, num_classes: int,
                               seconds_per_mac: float) -> float:
    """Expected wall time of one training iteration of a plan, s (the compute model x :data:`TRAINING_OVERHEAD`,
    and a narrow network's lower efficiency per MAC: :data:`NARROW_EXPONENT`).

    Examples
    --------
    >>> from autoseg.schema.plans import ArchitecturePlan
    >>> arch = ArchitecturePlan("plain_unet", (32, 64), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)), (2, 2), (2,))
    >>> round(plan_seconds_per_iteration(arch, (32, 32, 32), 2, 1, 2, 30e-12), 3)
    0.871
    """
    narrow = max(1.0, PROBE_WIDTH / arch.features_per_stage[0]) ** NARROW_EXPONENT
    return narrow * TRAINING_OVERHEAD * step_seconds(
        training_macs(arch, patch_size, batch_size, in_channels, num_classes), 1.0 / seconds_per_mac)


def budget_advice(name: str, seconds_per_iteration: float | None, min_iterations: int = MIN_ITERATIONS) -> str:
    """What one fold of a memory-only plan costs on the device at hand, and the training time that keeps it unchanged.

    ``seconds_per_iteration`` ``None``: the device's speed was never measured (only ``--budget`` runs the probe),
    so the advice names no price.

    Examples
    --------
    >>> text = budget_advice("3d_fullres", 30.0)
    >>> text[:63]
    'one 3d_fullres iteration of this plan takes ~30 s here: nnU-Net'
    >>> "~87 days" in text and "4.2 h" in text and "--budget 250 or more keeps this plan" in text
    True
    >>> budget_advice("2d", None)[:66]
    "on a CPU nnU-Net's 250,000 2d iterations per fold take hours to da"
    """
    if seconds_per_iteration is None:
        return (f"on a CPU nnU-Net's {NNUNET_ITERATIONS:,} {name} iterations per fold take hours to days. Re-plan "
                f"with --budget DURATION (the wall-clock time of the whole training run) to fit a run plan and the "
                f"plans to the time you have (it measures this machine's speed once, a few seconds; then this note "
                f"prices the plan).")
    days = seconds_per_iteration * NNUNET_ITERATIONS / 86400
    keep = math.ceil(seconds_per_iteration * min_iterations / 60)
    took = seconds_per_iteration * min_iterations
    took_s = f"{took / 3600:.1f} h" if took >= 3600 else f"{took / 60:.0f} min"
    long = f"~{days:.0f} days" if days >= 2 else f"~{days * 24:.0f} h"
    return (f"one {name} iteration of this plan takes ~{seconds_per_iteration:.2g} s here: nnU-Net's "
            f"{NNUNET_ITERATIONS:,} iterations per fold would take {long}, {min_iterations} iterations {took_s}. "
            f"Re-plan with --budget DURATION (the wall-clock time of the whole training run) to fit a run plan "
            f"and the plans to the time you have; for one fold, --budget {keep} or more keeps this plan (plus "
            f"the time of its validation).")
