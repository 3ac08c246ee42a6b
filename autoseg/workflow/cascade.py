"""What a cascade stage trains on: the previous stage's cross-validation segmentation of every training case.

Each fold of the low-res stage writes its validation cases' predictions on the next stage's grid to
``models/<low-res>/fold_<k>/next_stage/<case>.npy`` (see :func:`save_next_stage`, called by the fold's validation).
Over the folds every training case gets one, predicted by a network that never saw it: the second stage learns
from segmentations as good (and as wrong) as those it will get on new images. Cases whose file is missing (a fold
trained with ``--no-validation``, or by an older autoseg) are predicted on demand before training starts (by rank 0 alone in a torchrun run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.inference.cascade import previous_stage_input
from autoseg.preprocessing.case import CaseProperties
from autoseg.schema.base import atomic_write
from autoseg.schema.plans import Plans
from autoseg.training.distributed import barrier as distributed_barrier
from autoseg.workflow.context import DatasetContext


def save_next_stage(path: Path, logits: torch.Tensor, properties: CaseProperties, plans: Plans,
                    next_configuration: str) -> None:
    """Write one low-res prediction (``(K, Z, Y, X)`` logits on its preprocessed grid) as the input of
    ``next_configuration`` to ``path`` (``(Z', Y', X')`` int8 ``.npy``; uncompressed, so loaders memory-map it),
    atomically (:func:`autoseg.inference.cascade.previous_stage_input`, the rule prediction uses too)."""
    seg = previous_stage_input(logits, properties, plans, next_configuration)
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
                                 progress: bool = True, is_main: bool = True,
                                 barrier: Callable[[], None] = distributed_barrier) -> PreviousStageSegmentations:
    """Every training case's cross-validation segmentation by the previous stage of ``configuration``.

    Missing ones are predicted first, by the main process only (every rank of a torchrun run would otherwise write
    the same files at once); every process then waits at ``barrier``, so all ranks call this function.

    Parameters
    ----------
    is_main
        This process predicts and writes the missing segmentations (rank 0, or a run without torchrun).
    barrier
        Waits for every rank (the default does nothing outside a distributed run). The main process reaches it
        even when its prediction fails, so the others do not wait for it until the process group times out.

    Raises
    ------
    AutosegError
        A fold of the previous stage is not trained (all of them are needed: each predicts its validation cases),
        or, on another rank, the main process did not write every segmentation.
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

    def missing() -> dict[str, list[str]]:
        todo: dict[str, list[str]] = {}
        for k in ctx.folds:
            for case_id in ctx.fold_cases(k)[1]:
                if not ctx.fold(previous, k).next_stage_segmentation(case_id).is_file():
                    todo.setdefault(k, []).append(case_id)
        return todo

    files = {case_id: ctx.fold(previous, k).next_stage_segmentation(case_id)
             for k in ctx.folds for case_id in ctx.fold_cases(k)[1]}
    try:
        if is_main:
            for k, case_ids in missing().items():
                folder = ctx.fold(previous, k)
                predictor = Predictor.from_checkpoints(ctx.plans, previous, [folder.final_checkpoint], device=device)
                for case, _, props, logits in iter_logits(predictor, training_cases(ctx, case_ids),
                                                          f"{previous} fold {k}: inputs of {configuration}",
                                                          progress):
                    save_next_stage(folder.next_stage_segmentation(case.case_id), logits, props, ctx.plans,
                                    configuration)
    finally:
        barrier()  # every rank, whatever it found missing: another rank may have looked after files appeared
    if not is_main:
        left = missing()
        if left:
            k = next(iter(left))
            raise AutosegError(f"{ctx.fold(previous, k).next_stage_segmentation(left[k][0])}: missing after the "
                               f"main process predicted {previous}'s inputs of {configuration} (did rank 0 fail, "
                               f"or is the workspace not on a file system every node shares?)")
    return PreviousStageSegmentations(files)
