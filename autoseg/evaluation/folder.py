"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Cases are matched by file name: every ``<case><file_ending>`` in the reference folder needs the same name in the
prediction folder (extra predictions are ignored). All files' headers are checked before any metric is computed,
so a geometry mismatch or a missing file fails in seconds, naming every file concerned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.parallel import map_cases
from autoseg.evaluation.metrics import class_metrics, label_metrics
from autoseg.io.image import read_header, read_label
from autoseg.io.roi import apply_roi, masks_by_case, read_roi
from autoseg.schema.base import save_json
from autoseg.workspace import summary_file
from autoseg.schema.dataset import Region
from autoseg.schema.evaluation import CaseEvaluation, ClassMetrics, EvaluationSummary, MeanMetrics

#: Relative tolerance when comparing the spacings of prediction and reference (NIfTI stores float32).
SPACING_RTOL = 1e-4


def evaluate_folder(pred_dir: Path, gt_dir: Path, labels: Sequence[int | str] | None = None,
                    num_workers: int | None = None, file_ending: str = ".nii.gz", *,
                    label_names: Sequence[str] | None = None, case_ids: Sequence[str] | None = None,
                    nsd_tolerance_mm: float = 1.0, output: Path | None = None,
                    progress: bool = True, predicted_only: bool = False,
                    roi: Path | Mapping[str, Path] | None = None,
                    ignore_label: int | None = None, regions: Sequence[Region] | None = None
                    ) -> EvaluationSummary:
    """Per case and class Dice, IoU, HD95 and NSD of every reference case; writes ``summary.json``.

    Parameters
    ----------
    pred_dir, gt_dir
        Folders of predicted and reference label maps ``<case><file_ending>``.
    labels
        Label values to evaluate (ints, or strings of digits), or label names looked up in ``label_names``.
        ``None``: every nonzero value found in the reference files.
    num_workers
        Parallel processes (default: one per core, at most one per case); 1 runs in this process.
    file_ending
        Ending of the label files.
    label_names
        Label names indexed by value (``plans.labels``), for names in ``labels`` and in the summary.
    case_ids
        Evaluate only these cases (default: every reference file).
    predicted_only
        Evaluate only the reference cases that have a prediction (e.g. one fold's validation folder against all
        training labels); by default a missing prediction is an error, as in a challenge.
    nsd_tolerance_mm
        Tolerance of the normalised surface Dice, mm.
    output
        Where to write the summary (default ``pred_dir/summary.json``), atomically.
    progress
        Show progress over cases.
    roi
        Region-of-interest masks: a folder holding ``<case><ending>`` for every case, or case id -> mask file
        (cases without an entry are scored whole). Scores are computed inside the mask only, as DRIVE's field of
        view requires: outside it prediction and reference are both taken as background.
    ignore_label
        Reference value of voxels that are not annotated (the dataset's ``ignore`` label): they are left out the
        same way, and the value is never a label to score.
    regions
        Score regions instead of labels: each region is the union of its label values in prediction and
        reference (BraTS' whole tumour / tumour core / enhancing tumour). The summary's ``labels`` are then the
        region numbers 1..R, named by the regions, and ``regions`` lists their label values.

    Raises
    ------
    AutosegError
        Missing folders or prediction files, unreadable files, size or spacing mismatches, or unknown labels;
        one line per problem, each naming the file.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if nsd_tolerance_mm < 0:
        raise AutosegError(f"NSD tolerance {nsd_tolerance_mm} mm must not be negative")
    values, label_names, regions = _what_to_score(labels, label_names, regions, ignore_label)
    if predicted_only and case_ids is None:
        case_ids = sorted(f.name[: -len(file_ending)] for f in pred_dir.glob(f"*{file_ending}")
                          if not f.name.startswith(".")) if pred_dir.is_dir() else None
    cases = _match_cases(pred_dir, gt_dir, file_ending, case_ids)
    _check_geometry(cases)
    masks = masks_by_case(roi, [c[0] for c in cases], file_ending)

    jobs = [(cid, p, r, values, nsd_tolerance_mm, masks.get(cid), ignore_label, regions) for cid, p, r in cases]
    results = map_cases(_evaluate_case, jobs, [c[0] for c in cases], num_workers, "evaluate", progress)
    problems = [r.problem for r in results if r.problem]
    if problems:
        raise AutosegError(*problems)

    if values is None:
        values = tuple(sorted(set().union(*(r.ref_values for r in results))))
        if not values:
            raise AutosegError(f"{gt_dir}: no reference file contains a nonzero label; give the labels to evaluate")
    summary = _summarise(pred_dir, gt_dir, values, label_names, nsd_tolerance_mm, results)
    if regions is not None:
        summary = replace(summary, regions={str(i): r.labels for i, r in enumerate(regions, 1)})
    save_json(summary, Path(output) if output is not None else summary_file(pred_dir))
    return summary


def _what_to_score(labels, label_names, regions, ignore_label):
    """``(label values or None: every one found, label names, regions)``: the region numbers 1..R named by the
    regions, or the labels asked for (never the ignore label)."""
    if regions is not None:
        if labels is not None:
            raise AutosegError("give labels or regions to evaluate, not both")
        regions = tuple(regions)
        if not regions:
            raise AutosegError("no region to evaluate")
        return tuple(range(1, len(regions) + 1)), ("background", *(r.name for r in regions)), regions
    values = None if labels is None else resolve_labels(labels, label_names)
    if values is not None and ignore_label is not None and ignore_label in values:
        raise AutosegError(f"label {ignore_label}: the ignore label is not scored")
    return values, label_names, None


def parse_regions(items: Sequence[str]) -> tuple[Region, ...]:
    """``["whole tumour=1,2,3,4", "enhancing=4"]`` -> regions.

    Examples
    --------
    >>> parse_regions(["WT=1,2,4", "ET=4"])
    (Region(name='WT', labels=(1, 2, 4)), Region(name='ET', labels=(4,)))
    """
    out = []
    for item in items:
        name, sep, values = str(item).partition("=")
        try:
            labels = tuple(sorted({int(v) for v in values.split(",") if v.strip()}))
        except ValueError:
            labels = ()
        if not sep or not name.strip() or not labels or min(labels) <= 0:
            raise AutosegError(f"region {item!r}: expected NAME=LABEL,LABEL,... with positive label values, "
                               f"e.g. 'whole tumour=1,2,3,4'")
        if name.strip() in {r.name for r in out}:
            raise AutosegError(f"region {name.strip()!r} given twice")
        out.append(Region(name.strip(), labels))
    return tuple(out)


def reference_ending(gt_dir: Path, default: str = ".nii.gz") -> str:
    """The image ending most files of a reference folder have (``default`` when none is recognised)."""
    from collections import Counter

    from autoseg.io.roi import KNOWN_ENDINGS

    if not gt_dir.is_dir():
        return default
    counts = Counter(next((e for e in KNOWN_ENDINGS if f.name.lower().endswith(e)), None)
                     for f in gt_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    counts.pop(None, None)
    return counts.most_common(1)[0][0] if counts else default


def resolve_labels(labels: Sequence[int | str], label_names: Sequence[str] | None) -> tuple[int, ...]:
    """Label values from values or names (``"1"``, ``1`` or ``"hippocampus"`` with ``label_names``)."""
    out = []
    for item in labels:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            v = int(item)
        elif isinstance(item, str) and item.strip().isdigit():
            v = int(item)
        elif isinstance(item, str) and label_names is not None and item in label_names:
            v = list(label_names).index(item)
        else:
            known = f"; known labels: {', '.join(label_names)}" if label_names else ""
            raise AutosegError(f"label {item!r}: not a label value or a known label name{known}")
        if v < 0:
            raise AutosegError(f"label {v}: label values are not negative")
        if label_names is not None and v >= len(label_names):
            raise AutosegError(f"label {v}: the dataset has labels 0..{len(label_names) - 1} only")
        if v in out:
            raise AutosegError(f"label {item!r} given twice")
        out.append(v)
    return tuple(out)


def _match_cases(pred_dir: Path, gt_dir: Path, file_ending: str,
                 case_ids: Sequence[str] | None) -> list[tuple[str, Path, Path]]:
    for d, what in ((pred_dir, "prediction"), (gt_dir, "reference")):
        if not d.is_dir():
            raise AutosegError(f"{d}: {what} folder not found")
    refs = {f.name[: -len(file_ending)]: f for f in gt_dir.iterdir()
            if f.name.endswith(file_ending) and not f.name.startswith(".") and f.is_file()}
    if case_ids is not None:
        unknown = sorted(set(case_ids) - set(refs))
        if unknown:
            raise AutosegError(*(f"{gt_dir / (c + file_ending)}: reference of case {c!r} not found"
                                 for c in unknown))
        refs = {c: refs[c] for c in case_ids}
    if not refs:
        raise AutosegError(f"{gt_dir}: no reference files ending in {file_ending}")
    cases = [(cid, pred_dir / (cid + file_ending), refs[cid]) for cid in sorted(refs)]
    missing = [p for _, p, _ in cases if not p.is_file()]
    if missing:
        raise AutosegError(*(f"{p}: prediction missing (its reference exists in {gt_dir})" for p in missing))
    return cases


def _header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Size and spacing in numpy order ``(z, y, x)`` from the file header only."""
    h = read_header(path)
    return h.size, h.geometry.spacing


def _check_geometry(cases: list[tuple[str, Path, Path]]) -> None:
    problems = []
    for _, pred, ref in cases:
        try:
            (ps, pp), (rs, rp) = _header(pred), _header(ref)
        except AutosegError as e:
            problems.extend(e.problems)
            continue
        if ps != rs:
            problems.append(f"{pred}: size {ps} (z, y, x) differs from the reference's {rs} ({ref})")
        elif not np.allclose(pp, rp, rtol=SPACING_RTOL, atol=0):
            problems.append(f"{pred}: spacing {_fmt(pp)} mm (z, y, x) differs from the reference's {_fmt(rp)} "
                            f"({ref})")
    if problems:
        raise AutosegError(*problems)


def _fmt(spacing: Sequence[float]) -> str:
    return "(" + ", ".join(f"{s:.6g}" for s in spacing) + ")"


@dataclass(frozen=True)
class _CaseResult:
    case_id: str
    prediction: str
    reference: str
    classes: dict[int, ClassMetrics]
    ref_values: frozenset[int]
    problem: str | None = None


def _integer_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
        raise AutosegError(f"{path}: label map holds non-integer values")
    return arr.astype(np.int64)


_ABSENT = ClassMetrics(dice=None, iou=None, hd95=None, nsd=None, tp=0, fp=0, fn=0, n_ref=0, n_pred=0)


def _evaluate_case(case_id: str, pred_path: Path, ref_path: Path, values: tuple[int, ...] | None,
                   tolerance_mm: float, roi_path: Path | None = None, ignore_label: int | None = None,
                   regions: tuple[Region, ...] | None = None) -> _CaseResult:
    try:
        pred, _ = read_label(pred_path)
        ref, geometry = read_label(ref_path)
        pred, ref = _integer_labels(pred, pred_path), _integer_labels(ref, ref_path)
        if roi_path is not None:
            roi = read_roi(roi_path, ref_path)
            pred, ref = apply_roi(pred, roi), apply_roi(ref, roi)
        if ignore_label is not None:
            annotated = ref != ignore_label
            pred, ref = apply_roi(pred, annotated), apply_roi(ref, annotated)
    except AutosegError as e:
        return _CaseResult(case_id, str(pred_path), str(ref_path), {}, frozenset(), "; ".join(e.problems))
    ref_values = frozenset(int(v) for v in np.unique(ref)) - {0}
    if values is None:
        # labels are only known once every reference was read: measure all present here, fill in absent ones later
        values = tuple(sorted(ref_values | (frozenset(int(v) for v in np.unique(pred)) - {0})))
    if regions is not None:
        raw = {i: class_metrics(np.isin(pred, r.labels), np.isin(ref, r.labels), geometry.spacing, tolerance_mm)
               for i, r in enumerate(regions, 1)}
        ref_values = frozenset(i for i, r in enumerate(regions, 1) if np.isin(ref, r.labels).any())
    else:
        raw = label_metrics(pred, ref, values, geometry.spacing, tolerance_mm)
    classes = {v: ClassMetrics(dice=_defined(r.dice), iou=_defined(r.iou), hd95=_defined(r.hd95),
                               nsd=_defined(r.nsd), tp=r.counts.tp, fp=r.counts.fp, fn=r.counts.fn,
                               n_ref=r.counts.n_ref, n_pred=r.counts.n_pred) for v, r in raw.items()}
    return _CaseResult(case_id, str(pred_path), str(ref_path), classes, ref_values)


def _defined(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _mean(xs: list[float | None]) -> float | None:
    defined = [x for x in xs if x is not None]
    return float(np.mean(defined)) if defined else None


def _summarise(pred_dir: Path, gt_dir: Path, values: tuple[int, ...], label_names: Sequence[str] | None,
               tolerance_mm: float, results: list[_CaseResult]) -> EvaluationSummary:
    cases = tuple(CaseEvaluation(r.case_id, r.prediction, r.reference,
                                 {str(v): r.classes.get(v, _ABSENT) for v in values}) for r in results)
    mean = {}
    for v in values:
        per_case = [c.classes[str(v)] for c in cases]
        mean[str(v)] = MeanMetrics(dice=_mean([m.dice for m in per_case]), iou=_mean([m.iou for m in per_case]),
                                   hd95=_mean([m.hd95 for m in per_case]), nsd=_mean([m.nsd for m in per_case]),
                                   n_cases=sum(m.dice is not None for m in per_case))
    names = {str(v): (label_names[v] if label_names is not None and v < len(label_names) else str(v))
             for v in values}
    return EvaluationSummary(pred_dir=str(pred_dir), gt_dir=str(gt_dir), labels=tuple(values), label_names=names,
                             nsd_tolerance_mm=float(tolerance_mm), cases=cases, mean=mean,
                             foreground_mean_dice=_mean([mean[str(v)].dice for v in values if v > 0]))


def summary_table(summary: EvaluationSummary) -> str:
    """Per-class means as a short text table (for the CLI)."""
    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    rows = [f"{'region' if summary.regions else 'label':<20} {'Dice':>7} {'IoU':>7} {'HD95 mm':>9} {'NSD':>7} {'cases':>6}"]
    for v in summary.labels:
        m = summary.mean[str(v)]
        name = summary.label_names[str(v)]
        if summary.regions is None and name != str(v):
            name = f"{v} {name}"
        rows.append(f"{name[:20]:<20} {f(m.dice, '.4f'):>7} {f(m.iou, '.4f'):>7} {f(m.hd95, '.2f'):>9} "
                    f"{f(m.nsd, '.4f'):>7} {m.n_cases:>6}")
    rows.append(f"foreground mean Dice: {f(summary.foreground_mean_dice, '.4f')} over {len(summary.cases)} cases "
                f"(NSD tolerance {summary.nsd_tolerance_mm:g} mm)")
    return "\n".join(rows)
