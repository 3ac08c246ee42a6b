"""A trained fold's validation: its validation cases predicted with the final weights, in the raw geometry, with
their probabilities, scored against the raw labels; a cascade's low-res fold also writes the next stage's inputs.
"""

from __future__ import annotations

from pathlib import Path

from autoseg.errors import AutosegError
from autoseg.evaluation.folder import evaluate_folder
from autoseg.inference.run import InputCase, iter_logits
from autoseg.io.image import write_image
from autoseg.io.probabilities import save_probabilities
from autoseg.io.roi import apply_roi, apply_roi_to_probabilities, read_roi, spec_rois
from autoseg.report import write_fold_report
from autoseg.schema.base import load_json
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.training import TrainConfig
from autoseg.workflow.cascade import save_next_stage
from autoseg.workflow.context import DatasetContext
from autoseg.workspace import FoldPaths


def validation_dice(folder: FoldPaths) -> dict[str, float | None]:
    """Mean Dice per class name of a fold's ``validation/summary.json``."""
    summary = load_json(EvaluationSummary, folder.validation_summary)
    return {summary.label_names.get(k, k): m.dice for k, m in summary.mean.items()}


def training_cases(ctx: DatasetContext, case_ids: list[str]) -> list[InputCase]:
    """The raw image files of training cases, as prediction inputs."""
    cases = {c.case_id: c for c in ctx.spec.training}
    return [InputCase(cid, tuple(ctx.raw_dir / p for p in cases[cid].images)) for cid in case_ids]


def validate_fold(ctx: DatasetContext, configuration: str, fold: str, device: str = "auto",
                  progress: bool = True) -> dict[str, float | None]:
    """Predict the fold's validation cases with the final weights (sliding window, mirror TTA unless the fold was
    trained with ``validation_mirroring=False``), write them in the raw geometry with their probabilities, score
    them against the raw labels (``validation/summary.json``) and write the fold's report.

    A cascade's low-res stage also writes each case's prediction on the next stage's grid
    (:func:`autoseg.workflow.cascade.save_next_stage`); a cascade stage is validated behind the previous stage's
    fold of the same number.

    Returns
    -------
    dict
        Mean Dice per class name.
    """
    from autoseg.workflow.predict import load_folds

    folder = ctx.fold(configuration, fold)
    _, val_ids = ctx.fold_cases(fold)
    folder.validation.mkdir(parents=True, exist_ok=True)
    # the fold's own run decides whether its validation mirrors (TrainConfig.validation_mirroring)
    mirror = not folder.train_config.is_file() or load_json(TrainConfig, folder.train_config).validation_mirroring
    predictor = load_folds(ctx, configuration, [fold], device=device, mirror=mirror)
    next_stage = ctx.plans.configurations[configuration].next_stage
    ending = ctx.spec.file_ending
    rois = spec_rois(ctx.spec)  # outside a case's region of interest: background, and not scored
    for case, geometry, props, logits in iter_logits(predictor, training_cases(ctx, val_ids), "validation",
                                                     progress):
        if next_stage is not None:
            save_next_stage(folder.next_stage_segmentation(case.case_id), logits, props, ctx.plans, next_stage)
        pred = predictor.finish(logits, props, probabilities=True)
        del logits
        roi = read_roi(rois[case.case_id], case.files[0]) if case.case_id in rois else None
        write_image(apply_roi(pred.segmentation, roi), geometry, folder.validation_segmentation(case.case_id, ending))
        save_probabilities(folder.validation_probabilities(case.case_id),
                           apply_roi_to_probabilities(pred.probabilities, roi))
    cases = {c.case_id: c for c in ctx.spec.training}
    gt_dir = ctx.raw_dir / Path(cases[val_ids[0]].label).parent
    regions = ctx.plans.regions
    evaluate_folder(folder.validation, gt_dir, labels=None if regions else list(range(1, len(ctx.plans.labels))),
                    file_ending=ending, label_names=None if regions else list(ctx.plans.labels), case_ids=val_ids,
                    output=folder.validation_summary, progress=progress, roi=rois,
                    ignore_label=ctx.spec.ignore_label, regions=regions)
    write_fold_report(folder, ctx.spec)
    return validation_dice(folder)


def write_report(ctx: DatasetContext, configuration: str, fold: str) -> Path:
    """Write a trained fold's ``report.md`` (:func:`autoseg.report.write_fold_report`)."""
    ctx.configuration(configuration)
    folder = ctx.fold(configuration, fold)
    if not folder.root.is_dir():
        raise AutosegError(f"{folder.root}: no such fold folder; run `autoseg train {ctx.name} -c {configuration} "
                           f"-f {fold}` first")
    return write_fold_report(folder, ctx.spec)
