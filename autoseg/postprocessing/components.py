"""Connected-component postprocessing, and nnU-Net's rule for choosing it on cross-validation predictions.

Connectivity is full: 26-connectivity in 3D (8 in 2D), voxels touching by a corner belong together. "Keeping the
largest component" of a set of labels sets every voxel of those labels outside its largest connected component
(all of the largest, when several tie) to background (0).

The rule (:func:`choose_postprocessing`): first keep the largest component of all foreground labels together, only
if the mean foreground Dice improves and no class's Dice gets worse; then, on top of that decision, for each
foreground label (when there are several) keep the largest component of that label only where that label's Dice
improves. The per-label step changes only that label's voxels (to background), so it cannot lower another label's
Dice: the labels are decided independently, from one pass over the cases.

Region-based datasets (:func:`choose_region_postprocessing`) are scored by region: a region is the union of its label
values in the predicted label map and in the reference. Regions overlap (a tumour core lies inside the whole
tumour), so removing a component of one region changes the others: the rules are decided one after the other, the
foreground rule first, then each region in order, each on top of those kept before, and one is kept only when it
improves its own Dice and no region's Dice gets worse (one pass over the cases per decision).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.errors import AutosegError
from autoseg.parallel import map_cases
from autoseg.io.image import read_label
from autoseg.schema.selection import Postprocessing, foreground_mean


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected component(s) of a boolean mask (full connectivity; all of the largest on a tie)."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = ndimage.find_objects(mask.astype(np.uint8))[0]  # label on the bounding box only: much faster
    sub = mask[box]
    labelled, n = ndimage.label(sub, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n == 1:
        out[box] = sub
        return out
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    largest = np.flatnonzero(sizes == sizes.max())
    out[box] = labelled == largest[0] if largest.size == 1 else np.isin(labelled, largest)
    return out


def keep_largest_component(seg: np.ndarray, labels: int | Sequence[int] | None = None) -> np.ndarray:
    """A copy of label map ``seg`` keeping only the largest connected component of ``labels``.

    Parameters
    ----------
    seg
        Integer label map ``(z, y, x)`` (any dimensionality), 0 = background.
    labels
        One label value, several taken together as one mask, or ``None`` for all foreground (``seg > 0``).
        Voxels of these labels outside the largest component become 0; other voxels are unchanged.
    """
    seg = np.asarray(seg)
    if labels is None:
        mask = seg > 0
    else:
        values = [int(labels)] if np.isscalar(labels) else [int(v) for v in labels]
        mask = np.isin(seg, values)
    out = seg.copy()
    out[mask & ~largest_component_mask(mask)] = 0
    return out


def apply_postprocessing(seg: np.ndarray, pp: Postprocessing) -> np.ndarray:
    """``seg`` with the rules of ``pp`` applied (largest foreground component first, then per label, in order).

    Returns ``seg`` itself when ``pp`` keeps no rule, else a new array.
    """
    if pp.keep_largest_foreground:
        seg = keep_largest_component(seg, None)
    for label in pp.keep_largest_per_class:
        seg = keep_largest_component(seg, label)
    for values in pp.keep_largest_per_region or ():
        seg = keep_largest_component(seg, values)
    return seg


def describe_postprocessing(pp: Postprocessing | None, names: dict[str, str] | None = None,
                            region_names: dict[tuple[int, ...], str] | None = None) -> str:
    """The rules of ``pp`` in words, for the CLI.

    Examples
    --------
    >>> describe_postprocessing(Postprocessing(True, (2,), {}, {}), {"2": "tumour"})
    'keep the largest foreground component; keep the largest component of tumour'
    >>> describe_postprocessing(Postprocessing(False, (), {}, {}, keep_largest_per_region=((1, 4),)),
    ...                         region_names={(1, 4): "core"})
    'keep the largest component of region core'
    >>> describe_postprocessing(None)
    'none'
    """
    if pp is None or pp.is_identity:
        return "none"
    names, region_names = names or {}, region_names or {}
    rules = ["keep the largest foreground component"] if pp.keep_largest_foreground else []
    if pp.keep_largest_per_class:
        rules.append("keep the largest component of "
                     + ", ".join(names.get(str(v), f"label {v}") for v in pp.keep_largest_per_class))
    if pp.keep_largest_per_region:
        rules.append("keep the largest component of region "
                     + ", ".join(region_names.get(tuple(r), "+".join(map(str, r))) for r in pp.keep_largest_per_region))
    return "; ".join(rules)


#: Variants scored per case, rows of the count array returned by ``_case_counts``.
_BASE, _FG, _BASE_CLS, _FG_CLS = range(4)


def _counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.count_nonzero(pred & ref))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp


def _read_pair(pred_path: Path, ref_path: Path, ignore_label: int | None):
    """Prediction, reference (equal size, else an error naming both) and the mask of annotated reference voxels
    (``True`` everywhere without an ignore label)."""
    pred, _ = read_label(pred_path)
    ref, _ = read_label(ref_path)
    if pred.shape != ref.shape:
        raise AutosegError(f"{pred_path}: size {pred.shape} (z, y, x) differs from the reference's {ref.shape} "
                           f"({ref_path})")
    return pred, ref, ref != ignore_label if ignore_label is not None else True


def _case_counts(pred_path: Path, ref_path: Path, labels: tuple[int, ...], ignore_label: int | None = None
                 ) -> np.ndarray:
    """``(4, n_labels, 3)`` true positive, false positive, false negative voxels per variant and label:
    as predicted, with the largest foreground component, and per label with that label's largest component
    (on the prediction, and on the largest-foreground result). Voxels the reference marks ``ignore_label`` are
    not counted (the components are still found on the whole prediction)."""
    pred, ref, annotated = _read_pair(pred_path, ref_path, ignore_label)
    fg = keep_largest_component(pred, None)
    out = np.zeros((4, len(labels), 3), dtype=np.int64)
    for i, v in enumerate(labels):
        r, p, f = ref == v, pred == v, fg == v
        out[_BASE, i] = _counts(p & annotated, r)
        out[_FG, i] = _counts(f & annotated, r)
        out[_BASE_CLS, i] = _counts(largest_component_mask(p) & annotated, r)
        out[_FG_CLS, i] = _counts(largest_component_mask(f) & annotated, r)
    return out


def _mean_dice(counts: np.ndarray) -> list[float | None]:
    """Mean over cases of the per-case Dice, per label, from ``(cases, labels, 3)`` counts (undefined cases are
    left out, as in ``summary.json``)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    out = []
    for j in range(dice.shape[1]):
        col = dice[:, j][~np.isnan(dice[:, j])]
        out.append(float(col.mean()) if col.size else None)
    return out


def _worse(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and after < before


def _improves(before: float | None, after: float | None) -> bool:
    # None after removing voxels: the label is now absent from every prediction and reference, so before it only
    # had false positives (Dice 0): an improvement.
    if before is None:
        return False
    return after is None or after > before


def _case_ids(pred_dir: Path, gt_dir: Path, file_ending: str, case_ids: Sequence[str] | None) -> list[str]:
    """The cases to score (default: every reference file), each with its prediction, else an error per missing
    file."""
    if case_ids is None:
        case_ids = sorted(p.name[:-len(file_ending)] for p in gt_dir.glob(f"*{file_ending}")
                          if not p.name.startswith("."))
    case_ids = list(case_ids)
    if not case_ids:
        raise AutosegError(f"{gt_dir}: no reference files ending in {file_ending}")
    missing = [c for c in case_ids if not (pred_dir / f"{c}{file_ending}").is_file()]
    if missing:
        raise AutosegError(*(f"{pred_dir / (c + file_ending)}: prediction missing (its reference exists in "
                             f"{gt_dir})" for c in missing))
    return case_ids


def choose_postprocessing(pred_dir: Path, gt_dir: Path, labels: Sequence[int], file_ending: str = ".nii.gz",
                          case_ids: Sequence[str] | None = None, num_workers: int | None = None,
                          progress: bool = True, ignore_label: int | None = None) -> Postprocessing:
    """Decide which connected-component rules improve the Dice of a folder of cross-validation predictions.

    Parameters
    ----------
    pred_dir, gt_dir
        Folders of predicted and reference label maps ``<case><file_ending>`` with equal geometry.
    labels
        Foreground label values to score and consider.
    case_ids
        Cases to use (default: every reference file).
    num_workers
        Parallel processes (default: one per core).
    ignore_label
        Reference value of voxels that are not annotated: not counted.

    Returns
    -------
    Postprocessing
        The rules kept and the mean Dice per label before and after them (see the module docs for the rule).

    Raises
    ------
    AutosegError
        A missing or unreadable file, or a size mismatch, naming the file.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    labels = tuple(int(v) for v in labels)
    if not labels:
        raise AutosegError(f"{gt_dir}: no foreground label to postprocess")
    case_ids = _case_ids(pred_dir, gt_dir, file_ending, case_ids)
    jobs = [(pred_dir / f"{c}{file_ending}", gt_dir / f"{c}{file_ending}", labels, ignore_label) for c in case_ids]
    counts = np.stack(map_cases(_case_counts, jobs, case_ids, num_workers, desc="postprocessing", progress=progress))

    keys = [str(v) for v in labels]
    dice = {variant: dict(zip(keys, _mean_dice(counts[:, variant]))) for variant in range(4)}
    before, fg = dice[_BASE], dice[_FG]
    keep_fg = (_improves(foreground_mean(before), foreground_mean(fg))
               and not any(_worse(before[k], fg[k]) for k in keys))
    source, per_class = (fg, dice[_FG_CLS]) if keep_fg else (before, dice[_BASE_CLS])
    after = dict(source)
    kept = []
    if len(labels) > 1:  # with one label, the per-label rule is the foreground rule already decided
        for v, k in zip(labels, keys):
            if _improves(source[k], per_class[k]):
                kept.append(v)
                after[k] = per_class[k]
    return Postprocessing(keep_largest_foreground=keep_fg, keep_largest_per_class=tuple(kept),
                          dice_before=before, dice_after=after)


def _region_case_counts(pred_path: Path, ref_path: Path, regions: tuple[tuple[int, ...], ...],
                        ignore_label: int | None, pp: Postprocessing) -> np.ndarray:
    """``(n_regions, 3)`` true positive, false positive, false negative voxels per region of the prediction with
    the rules of ``pp`` applied."""
    pred, ref, annotated = _read_pair(pred_path, ref_path, ignore_label)
    seg = apply_postprocessing(pred, pp)
    return np.array([_counts(np.isin(seg, values) & annotated, np.isin(ref, values)) for values in regions],
                    dtype=np.int64).reshape(len(regions), 3)


def choose_region_postprocessing(pred_dir: Path, gt_dir: Path, regions: Sequence[Sequence[int]],
                                 file_ending: str = ".nii.gz", case_ids: Sequence[str] | None = None,
                                 num_workers: int | None = None, progress: bool = True,
                                 ignore_label: int | None = None) -> Postprocessing:
    """Decide the connected-component rules of a region-based dataset on its cross-validation predictions.

    Parameters
    ----------
    pred_dir, gt_dir
        Folders of predicted label maps (holding ``regions_class_order`` values) and reference label maps.
    regions
        Label values of each region, in declaration order; Dice values are keyed by region number ``"1"``...
    case_ids, num_workers, progress, ignore_label
        As for :func:`choose_postprocessing`.

    Returns
    -------
    Postprocessing
        With ``keep_largest_per_region`` set (possibly empty); decided one rule at a time (module docs).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    groups = tuple(tuple(int(v) for v in r) for r in regions)
    if not groups:
        raise AutosegError(f"{gt_dir}: no region to postprocess")
    case_ids = _case_ids(pred_dir, gt_dir, file_ending, case_ids)
    keys = [str(i) for i in range(1, len(groups) + 1)]

    def score(pp: Postprocessing, what: str) -> dict[str, float | None]:
        jobs = [(pred_dir / f"{c}{file_ending}", gt_dir / f"{c}{file_ending}", groups, ignore_label, pp)
                for c in case_ids]
        counts = np.stack(map_cases(_region_case_counts, jobs, case_ids, num_workers,
                                    desc=f"postprocessing ({what})", progress=progress))
        return dict(zip(keys, _mean_dice(counts)))

    def better(now: dict, then: dict, key: str | None) -> bool:
        own = (_improves(foreground_mean(now), foreground_mean(then)) if key is None
               else _improves(now[key], then[key]))
        return own and not any(_worse(now[k], then[k]) for k in keys)

    kept = Postprocessing(False, (), {}, {}, keep_largest_per_region=())
    before = current = score(kept, "as predicted")
    for key, values in zip([None, *keys], [None, *groups]):
        candidate = (replace(kept, keep_largest_foreground=True) if key is None
                     else replace(kept, keep_largest_per_region=(*kept.keep_largest_per_region, values)))
        then = score(candidate, "largest foreground component" if key is None else f"region {key}")
        if better(current, then, key):
            kept, current = candidate, then
    return replace(kept, dice_before=before, dice_after=current)
