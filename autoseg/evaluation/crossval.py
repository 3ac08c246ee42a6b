"""Cross-validation results of a dataset: the validation predictions of every fold merged into one folder per
configuration, and pairs of configurations ensembled by averaging their probabilities.

Layout (under ``WS/<dataset>/crossval/``)::

    <config>/<case><ending>, <case>.npz, summary.json      every training case once, hard links into the folds
    ensemble__<a>__<b>/<case><ending>, summary.json        argmax of the averaged probabilities of a and b

Each folder is built beside its final place and renamed into it, so an interrupted run never leaves a half-merged
folder under the final name. Scores are against the raw training labels.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.evaluation.folder import evaluate_folder
from autoseg.parallel import map_cases
from autoseg.inference.outputs import to_segmentation
from autoseg.io.image import Geometry, read_header, write_image
from autoseg.io.roi import spec_rois
from autoseg.io.probabilities import load_probabilities
from autoseg.schema.base import link_or_copy
from autoseg.schema.dataset import DatasetSpec
from autoseg.workspace import DatasetPaths, probabilities_file, segmentation_file, summary_file

#: Cases named in one error line before "and N more".
_SHOWN = 3


def ensemble_name(config_a: str, config_b: str) -> str:
    """Folder (and candidate) name of the ensemble of two configurations."""
    return f"ensemble__{config_a}__{config_b}"


def reference_dir(spec: DatasetSpec) -> Path:
    """The raw folder holding every training label file (``labelsTr``).

    Raises
    ------
    AutosegError
        The raw folder moved, or the labels are spread over several folders.
    """
    raw = Path(spec.raw_dir)
    if not (raw / "dataset.json").is_file():
        raise AutosegError(f"{raw / 'dataset.json'}: raw dataset not found (moved?); its labels are the references")
    parents = {(raw / c.label).parent for c in spec.training if c.label is not None}
    if len(parents) != 1:
        raise AutosegError(f"{raw}: training labels must lie in one folder to be evaluated, found "
                           f"{len(parents)} folders")
    return parents.pop()


def check_partition(splits: Sequence[dict[str, list[str]]], spec: DatasetSpec, where: Path
                    ) -> Sequence[dict[str, list[str]]]:
    """``splits`` (already checked against the training cases) validate every training case in exactly one fold.

    Raises
    ------
    AutosegError
        Validation sets that do not partition the training cases (one line naming ``where``).
    """
    case_ids = [c.case_id for c in spec.training]
    seen: dict[str, list[int]] = {}
    for k, fold in enumerate(splits):
        for cid in fold["val"]:
            seen.setdefault(cid, []).append(k)
    never = sorted(set(case_ids) - set(seen))
    twice = sorted(c for c, ks in seen.items() if len(ks) > 1)
    if never:
        raise AutosegError(f"{where}: {_cases(never)} in no fold's validation set; cross-validation needs "
                           f"every training case validated once")
    if twice:
        raise AutosegError(f"{where}: {_cases(twice)} in the validation sets of folds "
                           f"{', '.join(map(str, seen[twice[0]]))}; each case must be validated once")
    return splits


def _cases(ids: Sequence[str]) -> str:
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return f"case(s) {', '.join(ids[:_SHOWN])}{more}"


def fold_sources(paths: DatasetPaths, config: str, spec: DatasetSpec,
                 splits: list[dict[str, list[str]]]) -> dict[str, Path]:
    """Case id -> validation folder holding its prediction, over every fold of ``splits``.

    Raises
    ------
    AutosegError
        One line per fold that is not trained or lacks validation predictions (label map or ``.npz``).
    """
    problems, sources = [], {}
    for k, fold in enumerate(splits):
        folder = paths.fold(config, k)
        if not folder.is_trained:
            problems.append(f"fold {k} of {config} not trained ({folder.final_checkpoint} missing); run "
                            f"`autoseg train {spec.name} -c {config} -f {k}`")
            continue
        val = folder.validation
        missing = [c for c in fold["val"] if not folder.validation_segmentation(c, spec.file_ending).is_file()
                   or not folder.validation_probabilities(c).is_file()]
        if missing:
            problems.append(f"{val}: fold {k} of {config} lacks the validation prediction (label map and .npz) of "
                            f"{_cases(missing)}; run `autoseg train {spec.name} -c {config} -f {k}` to validate it")
            continue
        sources.update({c: val for c in fold["val"]})
    if problems:
        raise AutosegError(*problems)
    return sources


def _fresh(folder: Path) -> Path:
    """An empty sibling folder to build ``folder`` in."""
    tmp = folder.parent / f".{folder.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _evaluate(folder: Path, spec: DatasetSpec, num_workers: int | None, progress: bool) -> None:
    regions = spec.regions
    evaluate_folder(folder, reference_dir(spec), labels=None if regions else list(range(1, len(spec.labels))),
                    num_workers=num_workers, file_ending=spec.file_ending,
                    label_names=None if regions else list(spec.labels), regions=regions,
                    case_ids=[c.case_id for c in spec.training], output=summary_file(folder), progress=progress,
                    roi=spec_rois(spec), ignore_label=spec.ignore_label)


def merge_folds(paths: DatasetPaths, config: str, spec: DatasetSpec, splits: Sequence[dict[str, list[str]]],
                num_workers: int | None = None, progress: bool = True) -> Path:
    """Gather the validation predictions of every fold of ``config`` into ``crossval/<config>/`` and score them.

    The label maps and ``.npz`` probabilities are hard-linked (copied across file systems); the folds named in
    ``splits.json`` must together validate every training case exactly once. Writes ``summary.json`` there.

    Parameters
    ----------
    paths
        The dataset's workspace paths.
    config
        Configuration name.
    spec
        The dataset spec (training cases, labels, file ending, raw folder with the reference labels).
    splits
        The folds (``splits.json``); their validation sets must partition the training cases.
    num_workers
        Evaluation processes (default: one per core).
    progress
        Show a progress bar.

    Returns
    -------
    Path
        ``crossval/<config>``.

    Raises
    ------
    AutosegError
        A fold not trained or without validation predictions (one line each), or bad splits.
    """
    sources = fold_sources(paths, config, spec, check_partition(splits, spec, paths.splits))
    out = paths.crossval_candidate(config)
    tmp = _fresh(out)
    for cid, val in sorted(sources.items()):
        for path in (segmentation_file(val, cid, spec.file_ending), probabilities_file(val, cid)):
            link_or_copy(path, tmp / path.name)
    _publish(tmp, out)
    _evaluate(out, spec, num_workers, progress)
    return out


def _header(path: Path) -> tuple[tuple[int, ...], Geometry]:
    """Shape ``(z, y, x)`` and geometry of a 3D label map from its header only."""
    h = read_header(path)
    if h.dimension != 3:
        raise AutosegError(f"{path}: label map is {h.dimension}D, expected 3D")
    return h.size, h.geometry


def _ensemble_case(npz_files: tuple[Path, ...], ref_path: Path, out_path: Path,
                   class_order: tuple[int, ...] | None = None) -> None:
    shape, geometry = _header(ref_path)
    total = None
    for f in npz_files:
        p = load_probabilities(f)
        if p.shape[1:] != shape or (total is not None and p.shape != total.shape):
            raise AutosegError(f"{f}: probabilities of shape {p.shape} (K, z, y, x) do not match the reference "
                               f"{shape} ({ref_path}) or the other configuration's")
        total = p if total is None else np.add(total, p, out=total)
    if class_order is not None:  # region sigmoids: the mean, thresholded in class order
        seg = to_segmentation(total / len(npz_files), class_order)
    else:
        seg = total.argmax(0)  # the mean's argmax: dividing by the number of files changes nothing
    write_image(seg.astype(np.uint8 if total.shape[0] <= 256 else np.uint16), geometry, out_path)


def ensemble_pair(paths: DatasetPaths, config_a: str, config_b: str, spec: DatasetSpec,
                  num_workers: int | None = None, progress: bool = True) -> Path:
    """Average the merged probabilities of two configurations per case and score the argmax.

    Both must have been merged (:func:`merge_folds`). Writes ``crossval/ensemble__<a>__<b>/<case><ending>`` label
    maps in the reference's geometry (from the raw label file) and ``summary.json``.

    Returns
    -------
    Path
        The ensemble's folder.

    Raises
    ------
    AutosegError
        A configuration not merged, or probabilities whose shape differs from the reference's.
    """
    dirs = [paths.crossval_candidate(c) for c in (config_a, config_b)]
    ids = [c.case_id for c in spec.training]
    for d, c in zip(dirs, (config_a, config_b)):
        missing = [cid for cid in ids if not probabilities_file(d, cid).is_file()]
        if missing:
            raise AutosegError(f"{d}: cross-validation probabilities of {c} missing for {_cases(missing)}; "
                               f"merge its folds first")
    reference_dir(spec)  # the raw labels are there
    raw = Path(spec.raw_dir)
    out = paths.crossval_candidate(ensemble_name(config_a, config_b))
    tmp = _fresh(out)
    jobs = [(tuple(probabilities_file(d, c.case_id) for d in dirs), raw / c.label,
             segmentation_file(tmp, c.case_id, spec.file_ending), spec.regions_class_order if spec.regions else None)
            for c in spec.training]
    map_cases(_ensemble_case, jobs, ids, num_workers, desc=f"ensemble {config_a}+{config_b}", progress=progress)
    _publish(tmp, out)
    _evaluate(out, spec, num_workers, progress)
    return out
