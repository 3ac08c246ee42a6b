"""The cascade: a low-resolution stage's segmentation as extra input of the full-resolution stage.

``3d_lowres`` predicts the whole case at a coarse spacing; its class probabilities are resampled to the grid of the
``3d_cascade_fullres`` stage (same crop, full-resolution spacing) and turned into a label map, which enters the
full-resolution network as one one-hot channel per foreground label next to the image channels. Training uses the
same mapping on the low-res stage's cross-validation predictions (see :mod:`autoseg.workflow.cascade`), so the
second stage sees at training time what it will see at prediction time.
"""

from __future__ import annotations

import numpy as np
import torch

from autoseg.data.sampling import one_hot_channels
from autoseg.inference.outputs import to_probabilities
from autoseg.inference.predictor import Predictor
from autoseg.io.image import Geometry
from autoseg.planning.spacing import resampled_shape
from autoseg.preprocessing.case import CaseProperties, target_spacing_for
from autoseg.preprocessing.resample import resample_data
from autoseg.schema.plans import ConfigurationPlan, Plans


def next_stage_segmentation(probabilities: np.ndarray, properties: CaseProperties,
                            next_plan: ConfigurationPlan, class_order: tuple[int, ...] | None = None) -> np.ndarray:
    """A low-res prediction as a label map on the next stage's preprocessed grid.

    Both stages crop a case to the same nonzero box, so the next stage's grid follows from the low-res case's
    properties: the cropped shape resampled to the next stage's spacing.

    Parameters
    ----------
    probabilities
        ``(K, Z, Y, X)`` class probabilities on the low-res preprocessed grid (``properties.shape_after_resampling``).
    properties
        The low-res case's :class:`CaseProperties`.
    next_plan
        The next stage's configuration.
    class_order
        Region-based outputs: ``probabilities`` are per-region sigmoids, written as these label values where they
        exceed 0.5, in order; ``None``: softmax probabilities, argmax.

    Returns
    -------
    numpy.ndarray
        ``(Z', Y', X')`` int8 labels on the next stage's grid (transposed, cropped axes).
    """
    target = target_spacing_for(next_plan, properties.spacing)
    shape = resampled_shape(properties.shape_after_crop, properties.spacing, target)
    best = np.full(shape, -np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int8)
    # one class at a time: memory stays at two full-resolution volumes whatever the number of classes
    for k in range(probabilities.shape[0]):
        p = resample_data(probabilities[k:k + 1], shape, properties.target_spacing, target, 1,
                          properties.separate_z_anisotropy)[0]
        if class_order is not None:
            labels[p > 0.5] = class_order[k]
            continue
        better = p > best
        labels[better] = k
        np.maximum(best, p, out=best)
    return labels


def previous_stage_input(logits: torch.Tensor, properties: CaseProperties, plans: Plans,
                         configuration: str) -> np.ndarray:
    """The one rule from a previous stage's network output to the extra input of ``configuration``: validation,
    on-demand training inputs and the cascade predictor all call it, so the second stage trains on what it gets.

    Parameters
    ----------
    logits
        ``(K, Z, Y, X)`` logits of the previous stage on its preprocessed grid (softmax labels or sigmoid regions,
        as ``plans`` say).
    properties
        The previous stage's :class:`CaseProperties` of the case.
    plans
        The dataset's plans (regions and their ``regions_class_order``).
    configuration
        The stage that takes the segmentation (e.g. ``3d_cascade_fullres``).

    Returns
    -------
    numpy.ndarray
        ``(Z', Y', X')`` int8 labels on ``configuration``'s grid (:func:`next_stage_segmentation`).
    """
    regions = plans.regions is not None
    probs = to_probabilities(logits, regions)
    return next_stage_segmentation(probs, properties, plans.configurations[configuration],
                                   plans.regions_class_order if regions else None)


class CascadePredictor:
    """Two predictors in sequence: the previous stage's segmentation is appended to the next stage's input.

    Has the ``prepare`` / ``logits`` / ``finish`` / ``predict`` interface of a
    :class:`~autoseg.inference.predictor.Predictor` (``prepare`` runs both stages' preprocessing, ``logits`` both
    networks), so it works with :func:`autoseg.inference.run.predict_folder` and in ensembles.

    Parameters
    ----------
    previous
        The low-res stage (e.g. ``3d_lowres``) over its folds.
    current
        The stage trained on the previous stage's segmentation (e.g. ``3d_cascade_fullres``).
    """

    def __init__(self, previous: Predictor, current: Predictor):
        if current.plan.previous_stage != previous.configuration:
            raise ValueError(f"{current.configuration} follows {current.plan.previous_stage}, not "
                             f"{previous.configuration}")
        self.previous = previous
        self.current = current
        self.plans = current.plans
        self.configuration = current.configuration

    def prepare(self, image: np.ndarray, geometry: Geometry, case_id: str = "case"):
        """Both stages' preprocessed data: ``((low_data, low_properties, data), properties)``."""
        low_data, low_props = self.previous.prepare(image, geometry, case_id)
        data, props = self.current.prepare(image, geometry, case_id)
        return (low_data, low_props, data), props

    def logits(self, prepared: tuple) -> torch.Tensor:
        """The previous stage's prediction, mapped to this stage's grid as one-hot channels, then this stage's
        averaged logits ``(K, Z, Y, X)``."""
        low_data, low_props, data = prepared
        seg = previous_stage_input(self.previous.logits(low_data), low_props, self.plans, self.configuration)
        if seg.shape != data.shape[1:]:
            raise RuntimeError(f"{low_props.case_id}: previous stage grid {seg.shape} != {data.shape[1:]}")
        extra = one_hot_channels(seg[None], len(self.plans.labels))[0]
        return self.current.logits(np.concatenate([data, extra], axis=0))

    finish = Predictor.finish  # this stage's logits -> prediction, with this stage's plans
    predict = Predictor.predict  # prepare -> logits -> finish, the same sequence for every predictor kind
