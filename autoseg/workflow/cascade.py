"""What a cascade stage trains on: the previous stage's cross-validation segmentation of every training case.

Each fold of the low-res stage writes its validation cases' predictions on the next stage's grid to
``models/<low-res>/fold_<k>/next_stage/<case>.npy`` (see :func:`save_next_stage`, called by the fold's validation).
Over the folds every training case gets one, predicted by a network that never saw it: the second stage learns
from segmentations as good (and as wrong) as those it will get on new images. Cases whose file is missing (a fold
trained with ``--no-validation``, or by an older autoseg) are predicted on demand before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.inference.cascade import next_stage_segmentation
from autoseg.inference.outputs import to_probabilities
from autoseg.preprocessing.case import CaseProperties
from autoseg.schema.base import atomic_write
from autoseg.schema.plans import ConfigurationPlan
from autoseg.workflow.context import DatasetContext


def save_next_stage(path: Path, logits: torch.Tensor, properties: CaseProperties,
                    next_plan: ConfigurationPlan, class_order: tuple[int, ...] | None = None) -> None:
    """Write one low-res prediction (``(K, Z, Y, X)`` logits on its preprocessed grid) as the next stage's input
    ``path`` (``(Z', Y', X')`` int8 ``.npy``; uncompressed, so loaders memory-map it), atomically.
    ``class_order``: the outputs are regions (sigmoid), written in this label order."""
    probs = to_probabilities(logits, class_order is not None)
    seg = next_stage_segmentation(probs, properties, next_plan, class_order)
    atomic_write(path, lambda f: np.save(f, seg))


@dataclass(frozen=True)
class PreviousStageSegmentations:
    """Case id -> the previous stage's segmentation ``(1, Z, Y, X)`` int8 on this stage's grid (picklable, for
    loader workers).

    Attributes
    ----------
    files
        Case id -> ``.npy`` written by :func:`save_next_stage`.
    """

    files: dict[str, Path]

    def __call__(self, case_id: str) -> np.ndarray:
        return np.load(self.files[case_id], mmap_mode="r")[None]


def previous_stage_segmentations(ctx: DatasetContext, configuration: str, device: str = "auto",
                                 progress: bool = True) -> PreviousStageSegmentations:
    """Every training case's cross-validation segmentation by the previous stage of ``configuration``.

    Raises
    ------
    AutosegError
        A fold of the previous stage is not trained (all of them are needed: each predicts its validation cases).
    """
    from autoseg.inference.predictor import Predictor
    from autoseg.inference.run import iter_logits
    from autoseg.workflow.validation import training_cases

    previous = ctx.plans.configurations[configuration].previous_stage
    untrained = [k for k in ctx.folds if not ctx.fold(previous, k).is_trained]
    if untrained:
        raise AutosegError(f"{ctx.fold(previous, untrained[0]).root}: {configuration} trains on the cross-validation "
                           f"predictions of {previous}, whose fold(s) {', '.join(untrained)} are not trained; run "
                           f"`autoseg train {ctx.name} -c {previous}` first")
    files, todo = {}, {}
    for k in ctx.folds:
        for case_id in ctx.fold_cases(k)[1]:
            files[case_id] = ctx.fold(previous, k).next_stage_segmentation(case_id)
            if not files[case_id].is_file():
                todo.setdefault(k, []).append(case_id)
    next_plan = ctx.plans.configurations[configuration]
    for k, case_ids in todo.items():
        folder = ctx.fold(previous, k)
        predictor = Predictor.from_checkpoints(ctx.plans, previous, [folder.final_checkpoint], device=device)
        for case, _, props, logits in iter_logits(predictor, training_cases(ctx, case_ids),
                                                  f"{previous} fold {k}: inputs of {configuration}", progress):
            save_next_stage(folder.next_stage_segmentation(case.case_id), logits, props, next_plan)
    return PreviousStageSegmentations(files)
