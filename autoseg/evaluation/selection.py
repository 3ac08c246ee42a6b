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
from autoseg.evaluation.crossval import (ensemble_name, ensemble_pair, fold_sources, merge_folds, read_splits,
                                         reference_dir)
from autoseg.postprocessing.components import choose_postprocessing
from autoseg.schema.base import load_json, save_json
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.plans import Plans
from autoseg.schema.selection import BestChoice, Candidate, Postprocessing
from autoseg.workspace import DatasetPaths, Workspace


def untrained_folds(paths: DatasetPaths, config: str, n_folds: int) -> list[int]:
    """Folds ``0 .. n_folds-1`` of ``config`` without a final checkpoint (fold ``all`` never counts)."""
    return [k for k in range(n_folds) if not paths.final_checkpoint(config, k).is_file()]


def _candidate(name: str, configs: tuple[str, ...], folder: Path) -> Candidate:
    s = load_json(EvaluationSummary, folder / "summary.json")
    return Candidate(name=name, configurations=configs, mean_foreground_dice=s.foreground_mean_dice,
                     dice_per_class={k: m.dice for k, m in s.mean.items()}, n_cases=len(s.cases))


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best mean foreground Dice first; ties keep the given order (single configurations before ensembles)."""
    return sorted(candidates, key=lambda c: -(c.mean_foreground_dice if c.mean_foreground_dice is not None
                                              else float("-inf")))


def find_best(workspace: Path, dataset: str, configurations: Sequence[str] | None = None,
              num_workers: int | None = None, progress: bool = True) -> BestChoice:
    """Pick the configuration (or pair of configurations) with the best cross-validated mean foreground Dice.

    Every candidate configuration needs all folds of ``splits.json`` trained and validated. Their validation
    predictions are merged (``crossval/<config>``), every pair is ensembled (``crossval/ensemble__<a>__<b>``),
    all are scored against the raw labels, and the postprocessing is chosen on the winner's predictions.

    Parameters
    ----------
    workspace, dataset
        A planned dataset.
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
    paths = Workspace(Path(workspace)).dataset(dataset)
    if not paths.plans.is_file():
        raise AutosegError(f"{paths.plans}: no plans for dataset '{dataset}'; run `autoseg plan RAW_DIR` first")
    plans = load_json(Plans, paths.plans)
    spec = load_json(DatasetSpec, paths.dataset_spec)
    splits = read_splits(paths, spec)
    n = len(splits)
    skipped: dict[str, str] = {}
    if configurations is not None:
        names = list(dict.fromkeys(configurations))
        unknown = [c for c in names if c not in plans.configurations]
        if unknown:
            raise AutosegError(f"{paths.plans}: no configuration {', '.join(unknown)} (planned: "
                               f"{', '.join(plans.configurations)})")
    else:
        names = []
        for c in plans.configurations:
            missing = untrained_folds(paths, c, n)
            if missing:
                skipped[c] = f"fold(s) {', '.join(map(str, missing))} of {n} not trained"
            else:
                names.append(c)
        if not names:
            raise AutosegError(f"{paths.root / 'models'}: no configuration has all {n} folds trained ("
                               + "; ".join(f"{c}: {r}" for c, r in skipped.items())
                               + f"); train them with `autoseg train {dataset} -c CONFIG -f FOLD`")
    problems = []
    for c in names:  # every check before any work
        try:
            fold_sources(paths, c, spec, splits)
        except AutosegError as e:
            problems.extend(e.problems)
    if problems:
        raise AutosegError(*problems)
    reference_dir(spec)

    candidates = [_candidate(c, (c,), merge_folds(paths, c, spec, num_workers, progress)) for c in names]
    for a, b in combinations(names, 2):
        candidates.append(_candidate(ensemble_name(a, b), (a, b),
                                     ensemble_pair(paths, a, b, spec, num_workers, progress)))
    ranked = rank(candidates)
    winner = ranked[0]
    pp = choose_postprocessing(paths.crossval / winner.name, reference_dir(spec), range(1, len(spec.labels)),
                               spec.file_ending, case_ids=[c.case_id for c in spec.training],
                               num_workers=num_workers, progress=progress)
    save_json(pp, paths.postprocessing)
    best = BestChoice(dataset=spec.name, candidates=tuple(ranked), chosen=winner.configurations,
                      folds={c: tuple(str(k) for k in range(n)) for c in winner.configurations},
                      postprocessing_file=paths.postprocessing.name,
                      labels={str(v): name for v, name in enumerate(spec.labels) if v > 0}, skipped=skipped)
    save_json(best, paths.best)
    return best


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def selection_table(best: BestChoice, pp: Postprocessing | None = None) -> str:
    """Every candidate with its mean foreground and per-label Dice, the chosen one marked ``*``; then the
    postprocessing decision (for the CLI)."""
    keys = sorted({k for c in best.candidates for k in c.dice_per_class}, key=int)
    names = [best.labels.get(k, k)[:12] for k in keys]
    width = max([len("candidate")] + [len(c.name) for c in best.candidates]) + 2
    rows = [f"  {'candidate':<{width}} {'fg Dice':>8} " + " ".join(f"{n:>12}" for n in names) + f" {'cases':>6}"]
    for c in best.candidates:
        mark = "*" if c.configurations == best.chosen else " "
        rows.append(f"{mark} {c.name:<{width}} {_f(c.mean_foreground_dice):>8} "
                    + " ".join(f"{_f(c.dice_per_class.get(k)):>12}" for k in keys) + f" {c.n_cases:>6}")
    folds = "; ".join(f"{c} folds {', '.join(f)}" for c, f in best.folds.items())
    rows.append(f"chosen: {' + '.join(best.chosen)} ({folds})")
    if pp is not None:
        rules = []
        if pp.keep_largest_foreground:
            rules.append("keep the largest foreground component")
        if pp.keep_largest_per_class:
            rules.append("keep the largest component of "
                         + ", ".join(best.labels.get(str(v), str(v)) for v in pp.keep_largest_per_class))
        rows.append(f"postprocessing: {'; '.join(rules) if rules else 'none (removing components did not help)'}"
                    f"; foreground mean Dice {_f(pp.mean_dice_before)} -> {_f(pp.mean_dice_after)}")
    for c, why in best.skipped.items():
        rows.append(f"skipped {c}: {why}")
    return "\n".join(rows)
