"""Model selection: rank every fully cross-validated configuration and every pair of them (probabilities
averaged) by mean foreground Dice, then choose the postprocessing on the winner's cross-validation predictions.

Writes ``best.json`` (:class:`autoseg.schema.selection.BestChoice`) and ``postprocessing.json``
(:class:`autoseg.schema.selection.Postprocessing`) in the dataset's workspace folder, each atomically.
"""

from __future__ import annotations

import os
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

from autoseg.errors import AutosegError
from autoseg.evaluation.crossval import (check_partition, ensemble_name, ensemble_pair, fold_sources, merge_folds,
                                         reference_dir)
from autoseg.evaluation.selection import rank
from autoseg.postprocessing.components import choose_postprocessing, choose_region_postprocessing
from autoseg.schema.base import load_json, save_json
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.selection import BestChoice, Candidate, Postprocessing, foreground_mean
from autoseg.workflow.context import ALL, DatasetContext
from autoseg.workspace import segmentation_file, summary_file


def load_best(ctx: DatasetContext) -> tuple[BestChoice, Postprocessing | None]:
    """``(BestChoice, Postprocessing | None)`` of a dataset on which ``autoseg find-best`` ran."""
    if not ctx.paths.best.is_file():
        raise AutosegError(f"{ctx.paths.best}: no model selection for dataset '{ctx.name}'; run "
                           f"`autoseg find-best {ctx.name}` first")
    best = load_json(BestChoice, ctx.paths.best)
    pp = (load_json(Postprocessing, ctx.paths.root / best.postprocessing_file)
          if best.postprocessing_file is not None else None)
    return best, pp


def _candidate(name: str, configs: tuple[str, ...], folder: Path) -> Candidate:
    s = load_json(EvaluationSummary, summary_file(folder))
    return Candidate(name=name, configurations=configs, mean_foreground_dice=s.foreground_mean_dice,
                     dice_per_class={k: m.dice for k, m in s.mean.items()}, n_cases=len(s.cases))


def find_best(ctx: DatasetContext, configurations: Sequence[str] | None = None,
              num_workers: int | None = None, progress: bool = True) -> BestChoice:
    """Pick the configuration (or pair of configurations) with the best cross-validated mean foreground Dice.

    Every candidate configuration needs all folds of ``splits.json`` trained and validated. Their validation
    predictions are merged (``crossval/<config>``), every pair is ensembled (``crossval/ensemble__<a>__<b>``),
    all are scored against the raw labels, and the postprocessing is chosen on the winner's predictions.

    Parameters
    ----------
    ctx
        A planned dataset's context.
    configurations
        Configurations to consider (default: every planned one whose folds are all trained; the others are
        listed in ``BestChoice.skipped``). Given explicitly, each must be complete.
    num_workers
        Parallel processes (default: one per core).
    progress
        Show progress bars.

    Raises
    ------
    AutosegError
        Not planned, no complete configuration, or a fold lacking validation predictions; nothing is written then.
    """
    paths, spec = ctx.paths, ctx.spec
    splits = check_partition(ctx.require_splits(), spec, paths.splits)
    n = len(splits)
    skipped: dict[str, str] = {}
    if configurations is not None:
        names = list(dict.fromkeys(configurations))
        ctx.check_configurations(names)
    else:
        names = []
        for c in ctx.configurations:
            missing = [k for k in range(n) if not paths.fold(c, k).is_trained]
            if missing:
                skipped[c] = f"fold(s) {', '.join(map(str, missing))} of {n} not trained"
            else:
                names.append(c)
        if not names:
            raise AutosegError(f"{paths.root / 'models'}: no configuration has all {n} folds trained ("
                               + "; ".join(f"{c}: {r}" for c, r in skipped.items())
                               + f"); train them with `autoseg train {ctx.name} -c CONFIG -f FOLD`")
    problems = []
    for c in names:  # every check before any work
        try:
            fold_sources(paths, c, spec, splits)
        except AutosegError as e:
            problems.extend(e.problems)
    if problems:
        raise AutosegError(*problems)
    reference_dir(spec)

    candidates = [_candidate(c, (c,), merge_folds(paths, c, spec, splits, num_workers, progress)) for c in names]
    for a, b in combinations(names, 2):
        candidates.append(_candidate(ensemble_name(a, b), (a, b),
                                     ensemble_pair(paths, a, b, spec, num_workers, progress)))
    ranked = rank(candidates)
    winner = ranked[0]
    pp, labels, regions = _postprocessing(ctx, paths.crossval_candidate(winner.name),
                                          [c.case_id for c in spec.training], num_workers, progress)
    save_json(pp, paths.postprocessing)
    best = BestChoice(dataset=spec.name, candidates=tuple(ranked), chosen=winner.configurations,
                      folds={c: tuple(str(k) for k in range(n)) for c in winner.configurations},
                      postprocessing_file=paths.postprocessing.name, labels=labels, skipped=skipped,
                      regions=regions)
    save_json(best, paths.best)
    return best


def _postprocessing(ctx: DatasetContext, folder: Path, case_ids: Sequence[str], num_workers: int | None,
                    progress: bool) -> tuple[Postprocessing, dict[str, str], dict[str, tuple[int, ...]] | None]:
    """``(postprocessing chosen on the predictions in folder, label names, regions)`` for ``best.json``."""
    spec = ctx.spec
    common = dict(case_ids=list(case_ids), num_workers=num_workers, progress=progress, ignore_label=spec.ignore_label)
    if spec.regions:
        # scored by region (the predictions hold regions_class_order values); nested regions are decided in turn
        pp = choose_region_postprocessing(folder, reference_dir(spec), [r.labels for r in spec.regions],
                                          spec.file_ending, **common)
        return (pp, {str(i): r.name for i, r in enumerate(spec.regions, 1)},
                {str(i): r.labels for i, r in enumerate(spec.regions, 1)})
    pp = choose_postprocessing(folder, reference_dir(spec), range(1, len(spec.labels)), spec.file_ending, **common)
    return pp, {str(v): name for v, name in enumerate(spec.labels) if v > 0}, None


def _validated_folds(ctx: DatasetContext, configuration: str) -> list[str]:
    """Trained cross-validation folds of a configuration whose final validation was scored."""
    return [f for f in ctx.trained_folds(configuration)
            if f != ALL and ctx.fold(configuration, f).validation_summary.is_file()]


def _validation_candidate(ctx: DatasetContext, configuration: str, folds: Sequence[str]) -> Candidate:
    """A configuration scored on the validations of ``folds`` (each fold's per-class mean Dice, weighted by its
    cases)."""
    summaries = [load_json(EvaluationSummary, ctx.fold(configuration, f).validation_summary) for f in folds]
    keys = sorted({k for s in summaries for k in s.mean}, key=int)
    dice: dict[str, float | None] = {}
    for k in keys:
        pairs = [(len(s.cases), s.mean[k].dice) for s in summaries if k in s.mean and s.mean[k].dice is not None]
        dice[k] = sum(n * d for n, d in pairs) / sum(n for n, _ in pairs) if pairs else None
    return Candidate(name=configuration, configurations=(configuration,), mean_foreground_dice=foreground_mean(dice),
                     dice_per_class=dice, n_cases=sum(len(s.cases) for s in summaries))


def best_so_far(ctx: DatasetContext, predict: Mapping[str, Sequence[str]] | None = None,
                num_workers: int | None = None, progress: bool = True) -> BestChoice | None:
    """Keep ``best.json`` current while a budgeted run trains (``autoseg train DATASET`` calls it as parts finish),
    so a run stopped early leaves the best model so far for ``autoseg predict``.

    When a configuration has every fold trained and validated this is :func:`find_best` (nnU-Net's selection on
    the cross-validation). Before that, every configuration with a validated fold is a candidate scored on the
    validations it has (``basis`` in ``best.json`` says which); the best one is predicted with its folds in
    ``predict`` that are trained (e.g. fold 0 and the model on all cases), else with its validated folds, and the
    postprocessing is chosen on those validations.

    Returns
    -------
    BestChoice or None
        What was written; ``None`` (nothing written) while no fold has a validation.
    """
    complete = [c for c in ctx.configurations
                if ctx.splits is not None and len(_validated_folds(ctx, c)) == len(ctx.folds)]
    if complete:
        trained = [c for c in ctx.configurations if len(ctx.trained_folds(c)) >= len(ctx.folds)
                   and all(ctx.fold(c, k).is_trained for k in ctx.folds)]
        # by default find-best lists the incomplete configurations as skipped; a trained one without its
        # validations would stop it, so then only the complete ones are named
        return find_best(ctx, None if trained == complete else complete, num_workers=num_workers, progress=progress)
    scored = {c: folds for c in ctx.configurations if (folds := _validated_folds(ctx, c))}
    if not scored:
        return None
    ranked = rank([_validation_candidate(ctx, c, folds) for c, folds in scored.items()])
    winner = ranked[0].name
    folds = scored[winner]
    wanted = [str(f) for f in (predict or {}).get(winner, ())]
    trained = set(ctx.trained_folds(winner))
    use = tuple(f for f in wanted if f in trained) or tuple(folds) + ((ALL,) if ALL in trained else ())
    case_ids = [c for f in folds for c in ctx.fold_cases(f)[1]]
    with tempfile.TemporaryDirectory(dir=ctx.paths.root, prefix=".validation_") as tmp:
        for f in folds:  # the validations side by side, for one postprocessing decision on all of them
            for case in ctx.fold_cases(f)[1]:
                src = segmentation_file(ctx.fold(winner, f).validation, case, ctx.spec.file_ending)
                os.symlink(src.resolve(), segmentation_file(Path(tmp), case, ctx.spec.file_ending))
        pp, labels, regions = _postprocessing(ctx, Path(tmp), case_ids, num_workers, progress)
    save_json(pp, ctx.paths.postprocessing)
    n = sum(len(ctx.fold_cases(f)[1]) for f in folds)
    skipped = {c: "no validated fold yet" for c in ctx.configurations if c not in scored}
    basis = (f"validation of {winner} fold(s) {', '.join(folds)} ({n} of {len(ctx.spec.training)} cases); not the "
             f"cross-validation of every case")
    best = BestChoice(dataset=ctx.spec.name, candidates=tuple(ranked), chosen=(winner,), folds={winner: use},
                      postprocessing_file=ctx.paths.postprocessing.name, labels=labels, skipped=skipped,
                      regions=regions, basis=basis)
    save_json(best, ctx.paths.best)
    return best
