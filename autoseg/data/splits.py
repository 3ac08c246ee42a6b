"""Cross-validation splits (``splits.json``): nnU-Net's layout and folds, or the user's own.

``splits.json`` is a list with one entry per fold: ``{"train": [case ids], "val": [case ids]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from autoseg.errors import AutosegError
from autoseg.fingerprint.report import dataset_report
from autoseg.schema.base import atomic_write_text
from autoseg.schema.fingerprint import Fingerprint
from autoseg.workspace import DatasetPaths

DEFAULT_FOLDS = 5
DEFAULT_SEED = 12345

#: Split files a raw dataset folder may carry, in order of preference (nnU-Net writes ``splits_final.json``).
RAW_SPLIT_FILES = ("splits_final.json", "splits.json")


def make_splits(case_ids: Sequence[str], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED,
                groups: Iterable[Iterable[str]] = ()) -> list[dict[str, list[str]]]:
    """Deterministic k-fold splits of ``case_ids``, keeping each group of ``groups`` in one fold.

    Without groups the folds are those of nnU-Net v2 (scikit-learn ``KFold(n_folds, shuffle=True,
    random_state=seed)`` over the sorted ids: a legacy ``RandomState(seed)`` shuffle, then consecutive folds, the
    first ``n % n_folds`` one case larger), so results can be compared fold by fold. Groups (duplicate images: a
    copy validated in one fold and trained on in another leaks) are joined where they share a case, and each joined
    group then takes one place in the shuffle instead of one per case: the folds are filled in shuffled order up to
    the same cumulative sizes, a group spilling over its fold's size (the next folds take correspondingly less).
    Both lists of every fold are sorted.

    Parameters
    ----------
    case_ids
        The training cases, any order.
    n_folds
        Folds, at least 2.
    seed
        Seed of the shuffle.
    groups
        Cases that must share a fold; ids that are not in ``case_ids`` are ignored.

    Raises
    ------
    ValueError
        Fewer cases (or groups and single cases) than folds, or duplicate ids.

    Examples
    --------
    >>> ids = [f"c{i}" for i in range(6)]
    >>> [f["val"] for f in make_splits(ids, 3, 0)]
    [['c2', 'c5'], ['c1', 'c3'], ['c0', 'c4']]
    >>> [f["val"] for f in make_splits(ids, 3, 0, groups=[("c1", "c4")])]  # copies of one image
    [['c0', 'c2'], ['c1', 'c4'], ['c3', 'c5']]
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate case ids")
    if n_folds < 2 or len(ids) < n_folds:
        raise ValueError(f"{len(ids)} case(s) cannot be split into {n_folds} folds")
    units = _joined(ids, groups)
    if len(units) < n_folds:
        raise ValueError(f"{len(ids)} case(s) in {len(units)} groups of duplicates cannot be split into {n_folds} "
                         f"folds")
    order = np.arange(len(units))
    # the legacy generator's stream is frozen across numpy versions, so the folds never change
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, len(ids) // n_folds)
    sizes[: len(ids) % n_folds] += 1
    ends = np.cumsum(sizes)
    fold_of = np.empty(len(ids), np.int64)
    k, filled, in_fold = 0, 0, 0
    for left, u in zip(range(len(units), 0, -1), order):
        # next fold once this one is full, or when the units left are just enough for one in each later fold
        if k < n_folds - 1 and in_fold and (filled >= ends[k] or left < n_folds - k):
            k, in_fold = k + 1, 0
        fold_of[units[u]] = k
        filled, in_fold = filled + len(units[u]), in_fold + 1
    return [{"train": [c for c, f in zip(ids, fold_of) if f != k], "val": [c for c, f in zip(ids, fold_of) if f == k]}
            for k in range(n_folds)]


def _joined(ids: list[str], groups: Iterable[Iterable[str]]) -> list[list[int]]:
    """Positions in ``ids`` of the cases that must share a fold: the connected groups (a case alone is a group of
    one), ordered by their first position; ascending within."""
    index = {c: i for i, c in enumerate(ids)}
    rows, cols = [], []
    for group in groups:
        members = [index[c] for c in group if c in index]
        rows += members[:-1]
        cols += members[1:]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    units: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        units.setdefault(label, []).append(i)
    return sorted(units.values())


def duplicate_groups(fingerprint: Fingerprint | None) -> tuple[tuple[str, ...], ...]:
    """The groups of identical and near-identical training images of the dataset report
    (:func:`autoseg.fingerprint.report.dataset_report`), which new splits keep in one fold; none without a
    fingerprint (or one made before autoseg hashed images)."""
    if fingerprint is None:
        return ()
    return tuple(g.case_ids for g in dataset_report(fingerprint).duplicates or ())


def validate_splits(data: object, case_ids: Sequence[str], path: Path) -> list[dict[str, list[str]]]:
    """Check a splits list read from ``path``; returns it with sorted lists.

    Raises
    ------
    AutosegError
        One line naming ``path``: not a non-empty list of ``{"train": [...], "val": [...]}``, an unknown case id,
        or a case in both lists of a fold.
    """
    known = set(case_ids)
    if not isinstance(data, list) or not data:
        raise AutosegError(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}} folds")
    out = []
    for k, fold in enumerate(data):
        if (not isinstance(fold, dict) or set(fold) - {"train", "val"} or
                not all(isinstance(fold.get(key), list) and all(isinstance(c, str) for c in fold[key])
                        for key in ("train", "val"))):
            raise AutosegError(f"{path}: fold {k} must be {{\"train\": [case ids], \"val\": [case ids]}}")
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise AutosegError(f"{path}: fold {k} names unknown case(s) {', '.join(unknown[:5])}{more}")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise AutosegError(f"{path}: fold {k} has {', '.join(both[:5])} in both train and val")
        if not fold["train"] or not fold["val"]:
            raise AutosegError(f"{path}: fold {k} has an empty train or val list")
        out.append({"train": sorted(fold["train"]), "val": sorted(fold["val"])})
    return out


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise AutosegError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_splits(paths: DatasetPaths, case_ids: Sequence[str]) -> list[dict[str, list[str]]] | None:
    """The workspace's ``splits.json``, checked against ``case_ids``; ``None`` when there is none."""
    if not paths.splits.is_file():
        return None
    return validate_splits(_read(paths.splits), case_ids, paths.splits)


def load_or_create_splits(paths: DatasetPaths, case_ids: Sequence[str], raw_dir: Path | None = None,
                          n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED,
                          groups: Iterable[Iterable[str]] = ()) -> list[dict[str, list[str]]]:
    """The dataset's splits: the workspace's ``splits.json`` if present, else one shipped with the raw data
    (``splits_final.json`` or ``splits.json`` in ``raw_dir``, copied to the workspace), else new ones
    (:func:`make_splits`, each of ``groups`` in one fold) saved atomically to ``paths.splits``.

    A file present in the workspace always wins, whether autoseg or the user wrote it (delete it to re-split).

    Raises
    ------
    AutosegError
        A split file is malformed or names unknown cases (one line naming the file), or there are fewer cases than
        folds.
    """
    existing = read_splits(paths, case_ids)
    if existing is not None:
        return existing
    for name in RAW_SPLIT_FILES if raw_dir is not None else ():
        src = Path(raw_dir) / name
        if src.is_file():
            splits = validate_splits(_read(src), case_ids, src)
            atomic_write_text(paths.splits, json.dumps(splits, indent=2) + "\n")
            return splits
    try:
        splits = make_splits(case_ids, n_folds, seed, groups)
    except ValueError as e:
        raise AutosegError(f"{paths.splits}: cannot create splits ({e})") from None
    atomic_write_text(paths.splits, json.dumps(splits, indent=2) + "\n")
    return splits
