"""What a cascade stage trains on: the previous stage's cross-validation segmentation of every training case.

Each fold of the low-res stage writes its validation cases' predictions on the next stage's grid to
``models/<low-res>/fold_<k>/next_stage/<case>.npy`` (see :func:`save_next_stage`, called by the fold's validation).
Over the five folds every training case gets one, predicted by a network that never saw it: the second stage learns
from segmentations as good (and as wrong) as those it will get on new images. Cases whose file is missing (a fold
trained with ``--no-validation``, or by an older autoseg) are predicted on demand before training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from autoseg.data.splits import load_or_create_splits
from autoseg.errors import AutosegError
from autoseg.inference.cascade import next_stage_segmentation
from autoseg.preprocessing.case import CaseProperties
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.plans import Plans
from autoseg.workspace import DatasetPaths


def save_next_stage(folder: Path, logits: torch.Tensor, properties: CaseProperties, plans: Plans,
                    configuration: str) -> Path:
    """Write one low-res prediction (``(K, Z, Y, X)`` logits on its preprocessed grid) as the next stage's input
    ``folder/<case>.npy`` (``(Z', Y', X')`` int8; uncompressed, so loaders memory-map it), atomically."""
    next_plan = plans.configurations[plans.configurations[configuration].next_stage]
    seg = next_stage_segmentation(torch.softmax(logits.float(), dim=0).numpy(), properties, next_plan)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{properties.case_id}.npy"
    tmp = folder / f".{properties.case_id}.{os.getpid()}.tmp.npy"
    np.save(tmp, seg)
    os.replace(tmp, path)
    return path


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


def previous_stage_segmentations(paths: DatasetPaths, plans: Plans, spec: DatasetSpec, configuration: str,
                                 device: str = "auto", progress: bool = True) -> PreviousStageSegmentations:
    """Every training case's cross-validation segmentation by the previous stage of ``configuration``.

    Raises
    ------
    AutosegError
        A fold of the previous stage is not trained (all of them are needed: each predicts its validation cases).
    """
    from autoseg.inference.predictor import Predictor
    from autoseg.io.image import read_image

    previous = plans.configurations[configuration].previous_stage
    splits = load_or_create_splits(paths, [c.case_id for c in spec.training], Path(spec.raw_dir))
    untrained = [str(k) for k in range(len(splits)) if not paths.final_checkpoint(previous, k).is_file()]
    if untrained:
        raise AutosegError(f"{paths.model(previous, untrained[0])}: {configuration} trains on the cross-validation "
                           f"predictions of {previous}, whose fold(s) {', '.join(untrained)} are not trained; run "
                           f"`autoseg train {paths.root.name} -c {previous}` first")
    files, todo = {}, {}
    for k, split in enumerate(splits):
        for case_id in split["val"]:
            files[case_id] = paths.next_stage(previous, k) / f"{case_id}.npy"
            if not files[case_id].is_file():
                todo.setdefault(k, []).append(case_id)
    cases = {c.case_id: c for c in spec.training}
    raw = Path(spec.raw_dir)
    for k, case_ids in todo.items():
        predictor = Predictor.from_checkpoints(plans, previous, [paths.final_checkpoint(previous, k)], device=device)
        for case_id in tqdm(case_ids, desc=f"{previous} fold {k}: inputs of {configuration}", unit="case",
                            disable=not progress, dynamic_ncols=True):
            image, geometry = read_image([raw / p for p in cases[case_id].images])
            data, props = predictor.prepare(image, geometry, case_id)
            save_next_stage(paths.next_stage(previous, k), predictor.logits(data), props, plans, previous)
    return PreviousStageSegmentations(files)
