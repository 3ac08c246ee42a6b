"""Fitting a configuration to a time budget as well as to memory (issue 11; not yet wired into ``autoseg plan``).

nnU-Net plans the largest patch that fits the accelerator's memory and trains it 250,000 iterations. On a CPU or a
small GPU the same plan may get a few hundred iterations in the time a user has, too few to learn. The rule here
keeps nnU-Net's plan whenever it reaches ``min_iterations`` in the budget (so with a large budget the plans stay
identical to nnU-Net's), and otherwise walks down a fixed ladder of cheaper plans until one does:

1. the batch size, down to :data:`MIN_BATCH` (nnU-Net's own minimum);
2. the patch, by fitting it to smaller memory targets with the memory planner itself
   (:func:`autoseg.planning.configuration.fit_configuration`: the axis largest relative to the median case shrinks
   first, and the topology follows the patch), down to :data:`MIN_PATCH_FRACTION` of nnU-Net's patch volume;
3. the width: base features halved (down to 16), at the smallest patch.

Coarser target spacing (a low-resolution configuration of its own) is the next rung and not implemented yet.
Step times come from the compute model (:mod:`autoseg.planning.compute`) and the device's measured seconds per
multiply-accumulate, so the rule is pure and testable with any throughput.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from autoseg.planning.compute import step_seconds, training_macs
from autoseg.planning.configuration import ConfigurationChoice, fit_configuration
from autoseg.planning.presets import PlannerPreset

#: Smallest batch the ladder goes to.
MIN_BATCH = 2
#: Smallest patch volume the ladder goes to, as a fraction of nnU-Net's patch.
MIN_PATCH_FRACTION = 1 / 8
#: Smallest base width the ladder goes to.
MIN_BASE_FEATURES = 16


@dataclass(frozen=True)
class BudgetChoice:
    """A plan fitted to a budget.

    Attributes
    ----------
    choice
        Patch, batch and architecture.
    seconds_per_iteration
        Expected, from the compute model and the device's throughput.
    iterations
        Expected training iterations in the budget.
    trade_offs
        What was given up relative to nnU-Net's plan, in order (empty: nnU-Net's plan).
    enough
        ``iterations >= min_iterations`` (``False``: even the cheapest rung is short of it).
    """

    choice: ConfigurationChoice
    seconds_per_iteration: float
    iterations: int
    trade_offs: tuple[str, ...]
    enough: bool


def fit_to_budget(spacing: Sequence[float], median_shape: Sequence[float], dataset_voxels: float,
                  num_classes: int, in_channels: int, preset: PlannerPreset, memory_gb: float,
                  budget_seconds: float, seconds_per_mac: float, min_iterations: int) -> BudgetChoice:
    """The first plan of the ladder (module docstring) that reaches ``min_iterations`` in ``budget_seconds``.

    Parameters
    ----------
    spacing, median_shape, dataset_voxels, num_classes, preset, memory_gb
        As for :func:`~autoseg.planning.configuration.fit_configuration` (spacing in mm, shape in voxels, both in
        the planned axis order).
    in_channels
        Network input channels.
    budget_seconds
        Training time of one fold, s.
    seconds_per_mac
        The device's measured time per multiply-accumulate of a training step (see
        :func:`autoseg.planning.compute.training_macs`).
    min_iterations
        Iterations a fold needs.

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
    base = fit_configuration(spacing, median_shape, dataset_voxels, num_classes, preset, memory_gb)
    base_volume = math.prod(base.patch_size)

    def rate(choice: ConfigurationChoice) -> tuple[float, int]:
        seconds = step_seconds(training_macs(choice.architecture, choice.patch_size, choice.batch_size, in_channels,
                                             num_classes), 1.0 / seconds_per_mac)
        return seconds, int(budget_seconds // seconds)

    def done(choice: ConfigurationChoice, offs: list[str]) -> BudgetChoice:
        seconds, its = rate(choice)
        return BudgetChoice(choice, seconds, its, tuple(offs), its >= min_iterations)

    ladder: list[tuple[ConfigurationChoice, list[str]]] = [(base, [])]
    batch = base.batch_size
    while batch > MIN_BATCH:
        batch = max(MIN_BATCH, batch // 2)
        ladder.append((dataclasses.replace(base, batch_size=batch), [f"batch {base.batch_size} -> {batch}"]))
    smallest = ladder[-1]
    target = memory_gb
    while True:
        target /= 2
        smaller = fit_configuration(spacing, median_shape, dataset_voxels, num_classes, preset, target)
        if math.prod(smaller.patch_size) < MIN_PATCH_FRACTION * base_volume:
            break
        smaller = dataclasses.replace(smaller, batch_size=min(smaller.batch_size, smallest[0].batch_size))
        if smaller.patch_size != ladder[-1][0].patch_size:
            offs = smallest[1] + [f"patch {'x'.join(map(str, base.patch_size))} -> "
                                  f"{'x'.join(map(str, smaller.patch_size))}"]
            ladder.append((smaller, offs))
    narrow_from, offs = ladder[-1]
    width = preset.base_features
    while width > MIN_BASE_FEATURES:
        width //= 2
        arch = narrow_from.architecture
        feats = tuple(max(width, f * width // preset.base_features) for f in arch.features_per_stage)
        ladder.append((dataclasses.replace(narrow_from, architecture=dataclasses.replace(
            arch, features_per_stage=feats)), offs + [f"features {arch.features_per_stage[0]} -> {feats[0]}"]))
    for choice, trade in ladder:
        result = done(choice, trade)
        if result.enough:
            return result
    return done(*ladder[-1])
