"""Model selection: rank every fully cross-validated configuration and every pair of them (probabilities
averaged) by mean foreground Dice, then choose the postprocessing on the winner's cross-validation predictions.

Writes ``best.json`` (:class:`autoseg.schema.selection.BestChoice`) and ``postprocessing.json``
(:class:`autoseg.schema.selection.Postprocessing`) in the dataset's workspace folder, each atomically.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Sequence

from autoseg.errors import AutosegError
from autoseg.evaluation.crossval import (check_partition, ensemble_name, ensemble_pair, fold_sources, merge_folds,
                                         reference_dir)
from autoseg.evaluation.selection import rank
from autoseg.postprocessing.components import choose_postprocessing, choose_region_postprocessing
from autoseg.schema.base import load_json, save_json
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.selection import BestChoice, Candidate, Postprocessing
from autoseg.workflow.context import DatasetContext
from autoseg.workspace import summary_file


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
    common = dict(case_ids=[c.case_id for c in spec.training], num_workers=num_workers, progress=progress,
                  ignore_label=spec.ignore_label)
    if spec.regions:
        # scored by region (the predictions hold regions_class_order values); nested regions are decided in turn
        pp = choose_region_postprocessing(paths.crossval_candidate(winner.name), reference_dir(spec),
                                          [r.labels for r in spec.regions], spec.file_ending, **common)
        names = {str(i): r.name for i, r in enumerate(spec.regions, 1)}
        regions = {str(i): r.labels for i, r in enumerate(spec.regions, 1)}
    else:
        pp = choose_postprocessing(paths.crossval_candidate(winner.name), reference_dir(spec),
                                   range(1, len(spec.labels)), spec.file_ending, **common)
        names, regions = {str(v): name for v, name in enumerate(spec.labels) if v > 0}, None
    save_json(pp, paths.postprocessing)
    best = BestChoice(dataset=spec.name, candidates=tuple(ranked), chosen=winner.configurations,
                      folds={c: tuple(str(k) for k in range(n)) for c in winner.configurations},
                      postprocessing_file=paths.postprocessing.name, labels=names, skipped=skipped,
                      regions=regions)
    save_json(best, paths.best)
    return best
