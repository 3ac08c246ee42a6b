"""Model selection's rules: candidates ranked by cross-validated mean foreground Dice, and the table printed for
them. :func:`autoseg.workflow.selection.find_best` runs the selection."""

from __future__ import annotations

from typing import Sequence

from autoseg.postprocessing.components import describe_postprocessing
from autoseg.schema.selection import BestChoice, Candidate, Postprocessing


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best mean foreground Dice first; ties keep the given order (single configurations before ensembles)."""
    return sorted(candidates, key=lambda c: -(c.mean_foreground_dice if c.mean_foreground_dice is not None
                                              else float("-inf")))


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
        rules = describe_postprocessing(pp, best.labels, best.region_names)
        rows.append(f"postprocessing: {'none (removing components did not help)' if rules == 'none' else rules}"
                    f"; foreground mean Dice {_f(pp.mean_dice_before)} -> {_f(pp.mean_dice_after)}")
    for c, why in best.skipped.items():
        rows.append(f"skipped {c}: {why}")
    return "\n".join(rows)
