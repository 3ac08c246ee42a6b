"""The dataset report of ``autoseg plan``: what the fingerprint says about the training cases, and what to check.

Everything comes from the fingerprint (no image is read again): ranges of spacing and size, per-class voxel shares
and how many cases hold each class, cases without foreground, duplicate images (a duplicate pair split across
cross-validation folds leaks: the model is validated on a case it was trained on), and warnings. Pure functions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.report import ClassReport, DatasetReport, DuplicateGroup

#: Signature correlation above which two images of (nearly) the same shape are near-identical.
NEAR_DUPLICATE_CORRELATION = 0.995
#: A class under this fraction of the foreground voxels gets an imbalance warning.
SMALL_CLASS_SHARE = 0.01
#: A class in under this fraction of the cases gets a warning.
RARE_CLASS_CASES = 0.5
#: Duplicate groups named one per warning line; the rest are counted (the JSON lists them all).
MAX_DUPLICATE_WARNINGS = 10
#: Case ids named in the warning about cases without foreground.
MAX_LISTED_CASES = 5


def find_duplicates(ids: Sequence[str], sha256s: Sequence[str], signatures: Sequence[Sequence[float]],
                    shapes: Sequence[Sequence[int]], threshold: float = NEAR_DUPLICATE_CORRELATION,
                    chunk: int = 1024) -> tuple[DuplicateGroup, ...]:
    """Groups of identical and of near-identical images.

    Cases with equal hashes are identical. Among the distinct images (the first case of each hash), two are
    near-identical when their signatures correlate above ``threshold`` and their shapes differ by at most one
    voxel per axis; near-identical pairs sharing a case form one group. The correlations are a matrix product of
    normalised signatures, ``chunk`` rows at a time (memory ``chunk x n``).

    With three or more signatures, their mean is subtracted first: images of one dataset share a layout (a
    camera's round field of view, atlas-registered brains) that makes the coarse signatures of different patients
    correlate at 0.99 or more, while what is left differs between patients (at most 0.85 on DRIVE, BraTS,
    Hippocampus) and stays in a noisy copy (above 0.995 with noise of 20 % of the image's standard deviation,
    even in images 20 voxels across). The price: when most images are near copies of one image, the mean is that
    image and its copies are not found (exact copies still are).

    Parameters
    ----------
    ids
        Case ids, in dataset order.
    sha256s
        Per case, the hash of its image data (:func:`autoseg.fingerprint.case.image_sha256`).
    signatures
        Per case, its coarse signature (:func:`autoseg.fingerprint.case.image_signature`); only signatures of
        equal length are compared.
    shapes
        Per case, its image shape ``(z, y, x)``, voxels.
    threshold
        Pearson correlation above which signatures match.
    chunk
        Rows of the correlation matrix computed at once.

    Returns
    -------
    tuple of DuplicateGroup
        Ordered by the dataset position of their first case.

    Examples
    --------
    >>> sig = [(0.0, 1.0, 2.0), (0.0, 1.0, 2.1), (2.0, 1.0, 0.0)]
    >>> [(g.case_ids, g.kind) for g in find_duplicates(["a", "b", "c", "d"], ["h1", "h2", "h1", "h3"],
    ...                                                 sig + [sig[2]], [(1, 2, 3)] * 4)]
    [(('a', 'c'), 'identical'), (('a', 'b'), 'near-identical')]
    """
    n = len(ids)
    if not len(sha256s) == len(signatures) == len(shapes) == n:
        raise ValueError(f"find_duplicates: {n} ids, {len(sha256s)} hashes, {len(signatures)} signatures and "
                         f"{len(shapes)} shapes")
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(sha256s):
        by_hash.setdefault(h, []).append(i)
    found = [(m[0], DuplicateGroup(tuple(ids[i] for i in m), "identical", 1.0)) for m in by_hash.values()
             if len(m) > 1]
    distinct = [m[0] for m in by_hash.values()]
    for members, similarity in _near_identical(distinct, signatures, shapes, threshold, chunk):
        found.append((members[0], DuplicateGroup(tuple(ids[i] for i in members), "near-identical", similarity)))
    return tuple(g for _, g in sorted(found, key=lambda t: (t[0], t[1].kind)))


def _near_identical(cases: list[int], signatures: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                    threshold: float, chunk: int) -> list[tuple[list[int], float]]:
    """Connected groups of near-identical pairs among ``cases``: (sorted members, lowest pair correlation)."""
    parent = {i: i for i in cases}
    lowest: dict[int, float] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_kind: dict[tuple[int, int], list[int]] = {}
    for i in cases:
        by_kind.setdefault((len(signatures[i]), len(shapes[i])), []).append(i)
    for idx in by_kind.values():
        x = np.asarray([signatures[i] for i in idx], np.float64)
        if len(idx) >= 3:  # with two, the mean is halfway and any pair anti-correlates
            x -= x.mean(axis=0)
        x -= x.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0).astype(np.float32)  # flat signature: no match
        shape = np.asarray([shapes[i] for i in idx], np.int64)
        for start in range(0, len(idx), chunk):
            # rows start.. against columns start.. only: each pair once, the upper triangle of the matrix
            corr = x[start:start + chunk] @ x[start:].T
            rows, cols = np.nonzero(corr > threshold)
            keep = cols > rows
            rows, cols = rows[keep], cols[keep]
            a, b = rows + start, cols + start
            close = np.abs(shape[a] - shape[b]).max(axis=1) <= 1
            for ai, bi, r in zip(a[close], b[close], corr[rows[close], cols[close]]):
                ra, rb = root(idx[ai]), root(idx[bi])
                low = min(float(r), lowest.get(ra, 1.0), lowest.get(rb, 1.0))
                parent[rb] = ra
                lowest[ra] = low
    groups: dict[int, list[int]] = {}
    for i in cases:
        groups.setdefault(root(i), []).append(i)
    return [(sorted(m), round(lowest[r], 6)) for r, m in groups.items() if len(m) > 1]


def _axis_ranges(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return values.min(axis=0), np.median(values, axis=0), values.max(axis=0)


def class_reports(labels: Sequence[str], counts: np.ndarray) -> tuple[ClassReport, ...]:
    """Per label value: voxel shares and the fraction of cases holding it.

    Parameters
    ----------
    labels
        Label names, background first.
    counts
        ``(cases, len(labels))`` voxels per case and label value, at least one case.

    Examples
    --------
    >>> r = class_reports(["bg", "a", "b"], np.array([[90, 10, 0], [70, 20, 10]]))
    >>> [(c.name, c.voxel_share, c.foreground_share, c.case_fraction) for c in r]
    [('bg', 0.8, None, 1.0), ('a', 0.15, 0.75, 1.0), ('b', 0.05, 0.25, 0.5)]
    """
    total = counts.sum(axis=0)
    all_voxels, foreground = int(total.sum()), int(total[1:].sum())
    present = (counts > 0).mean(axis=0)
    return tuple(ClassReport(value=k, name=name, voxel_share=float(total[k] / all_voxels) if all_voxels else 0.0,
                             foreground_share=float(total[k] / foreground) if k > 0 and foreground else None,
                             case_fraction=float(present[k]))
                 for k, name in enumerate(labels))


def _class_warnings(classes: Sequence[ClassReport], num_cases: int) -> list[str]:
    out = []
    for c in classes[1:]:
        if c.case_fraction is None:
            continue
        name = f"class {c.value} {c.name!r}"
        if c.case_fraction == 0:
            out.append(f"{name} occurs in no training case: the network cannot learn it")
            continue
        if c.case_fraction < RARE_CLASS_CASES:
            out.append(f"{name} occurs in only {round(c.case_fraction * num_cases)} of {num_cases} cases")
        if c.foreground_share is not None and c.foreground_share < SMALL_CLASS_SHARE:
            out.append(f"{name} is only {_percent(c.foreground_share)} of the foreground voxels")
    return out


def _duplicate_warnings(groups: Sequence[DuplicateGroup]) -> list[str]:
    out = []
    for g in groups[:MAX_DUPLICATE_WARNINGS]:
        how = "identical images" if g.kind == "identical" else f"near-identical images (r = {g.similarity:.4f})"
        out.append(f"{how}: {', '.join(g.case_ids)}; a cross-validation split separating them leaks")
    if len(groups) > MAX_DUPLICATE_WARNINGS:
        out.append(f"... and {len(groups) - MAX_DUPLICATE_WARNINGS} more groups of duplicate images "
                   f"(all listed in the dataset report's JSON)")
    return out


def _listed(ids: Sequence[str]) -> str:
    return ", ".join(ids[:MAX_LISTED_CASES]) + (", ..." if len(ids) > MAX_LISTED_CASES else "")


def dataset_report(fingerprint: Fingerprint, threshold: float = NEAR_DUPLICATE_CORRELATION) -> DatasetReport:
    """The report of a dataset's training cases, from its fingerprint alone.

    A fingerprint made before autoseg measured per-class voxels or image hashes gives a report without those parts
    (``None`` fields) and a note saying so, not an error.

    Parameters
    ----------
    fingerprint
        The dataset's fingerprint (label names included).
    threshold
        Signature correlation of near-identical images (:func:`find_duplicates`).
    """
    cases = fingerprint.cases
    n = len(cases)
    labels = fingerprint.labels
    spacing = _axis_ranges(np.asarray([c.spacing for c in cases], np.float64))
    shape = _axis_ranges(np.asarray([c.shape_before_crop for c in cases], np.int64))
    notes, warnings = [], []

    counted = [c for c in cases if c.class_voxels is not None]
    if counted:
        counts = np.zeros((len(counted), len(labels)), np.int64)
        for row, c in zip(counts, counted):
            k = min(len(c.class_voxels), len(labels))  # verification allows no higher value; shorter: not counted
            row[:k] = c.class_voxels[:k]
        classes = class_reports(labels, counts)
        warnings += _class_warnings(classes, len(counted))
    else:
        classes = tuple(ClassReport(k, name, None, None, None) for k, name in enumerate(labels))
    if len(counted) < n:
        notes.append(f"no per-class voxel counts for {n - len(counted)} of {n} cases: fingerprint made before "
                     f"autoseg counted them" + (" (class figures are from the others)" if counted else ""))

    empty = tuple(c.case_id for c in cases if c.foreground_voxels == 0)
    if empty:
        warnings.append(f"{len(empty)} of {n} cases have no foreground: {_listed(empty)}")

    hashed = [c for c in cases if c.image_sha256 is not None and c.image_signature is not None]
    duplicates = None
    if not hashed:
        notes.append("no duplicate check: fingerprint made before autoseg measured image hashes")
    else:
        duplicates = find_duplicates([c.case_id for c in hashed], [c.image_sha256 for c in hashed],
                                     [c.image_signature for c in hashed], [c.shape_before_crop for c in hashed],
                                     threshold)
        warnings += _duplicate_warnings(duplicates)
        if len(hashed) < n:
            notes.append(f"duplicate check covers {len(hashed)} of {n} cases: the others' fingerprints have no "
                         f"image hash")

    return DatasetReport(
        dataset_name=fingerprint.dataset_name, num_cases=n, channel_names=fingerprint.channel_names,
        spacing_min=tuple(float(v) for v in spacing[0]), spacing_median=tuple(float(v) for v in spacing[1]),
        spacing_max=tuple(float(v) for v in spacing[2]), shape_min=tuple(int(v) for v in shape[0]),
        shape_median=tuple(float(v) for v in shape[1]), shape_max=tuple(int(v) for v in shape[2]),
        classes=classes, cases_without_foreground=empty, duplicates=duplicates, warnings=tuple(warnings),
        notes=tuple(notes))


def _percent(fraction: float | None) -> str:
    """``0.0123`` -> ``'1.23%'``; three significant digits, so small shares stay visible.

    Examples
    --------
    >>> _percent(0.97125), _percent(0.0000123), _percent(0.0), _percent(None)
    ('97.1%', '0.00123%', '0%', '-')
    """
    return "-" if fraction is None else f"{100 * fraction:.3g}%"


def _triple(values: Sequence[float]) -> str:
    return " x ".join(f"{v:g}" for v in values)


def format_report(report: DatasetReport) -> str:
    """The report as the lines ``autoseg plan`` prints (no trailing newline)."""
    n_channels = len(report.channel_names)
    header = (f"Dataset {report.dataset_name}: {report.num_cases} training cases, {n_channels} "
              f"channel{'s' if n_channels != 1 else ''} ({', '.join(report.channel_names)})")
    lines = [header]
    for what, lo, mid, hi in (("spacing (z, y, x) mm", report.spacing_min, report.spacing_median,
                               report.spacing_max),
                              ("size (z, y, x) voxels", report.shape_min, report.shape_median, report.shape_max)):
        lines.append(f"  {what:<22} min {_triple(lo)}   median {_triple(mid)}   max {_triple(hi)}")
    width = max(len(f"{c.value} {c.name}") for c in report.classes)
    lines.append(f"  {'class':<{width}}  {'voxels':>8}  {'foreground':>10}  {'in cases':>8}")
    for c in report.classes:
        lines.append(f"  {f'{c.value} {c.name}':<{width}}  {_percent(c.voxel_share):>8}  "
                     f"{_percent(c.foreground_share):>10}  {_percent(c.case_fraction):>8}")
    if report.duplicates:
        n_dup = len({i for g in report.duplicates for i in g.case_ids})  # a case may be in two groups
        lines.append(f"  duplicate images: {len(report.duplicates)} groups ({n_dup} cases)")
    elif report.duplicates is not None:
        lines.append("  duplicate images: none found")
    for title, items in (("warnings", report.warnings), ("notes", report.notes)):
        if items:
            lines.append(f"  {title}:")
            lines += [f"    - {item}" for item in items]
    return "\n".join(lines)
