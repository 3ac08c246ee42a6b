"""Preprocess every training case of a dataset for some configurations: parallel, restartable, invalidated by plans.

Each worker process reads a case once and writes it for every requested configuration that lacks it, straight into
the case store (no arrays travel between processes). Restarting after a kill redoes only cases without a complete
json; a configuration whose preprocessing hash changed (other spacing, normalisation, source data ...) has its old
cases removed first. Configurations sharing a folder (``3d_cascade_fullres`` -> ``3d_fullres``, see
:meth:`autoseg.workspace.DatasetPaths.preprocessed`) are processed once.
"""

from __future__ import annotations

import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg.errors import AutosegError, option
from autoseg.fingerprint.dataset import _available_memory, _init_worker, default_num_workers
from autoseg.io.verify import load_and_check_case
from autoseg.parallel import map_cases, one_blas_thread, usable_cpus
from autoseg.planning.spacing import resampled_shape
from autoseg.preprocessing.case import (PreprocessedCase, data_key, derive_case, preprocess_case,
                                        preprocessing_sha256, target_spacing_for)
from autoseg.preprocessing.normalize import normalization_problems
from autoseg.preprocessing.store import INFO_NAME, CaseStore
from autoseg.schema.dataset import IGNORE, CaseSpec, DatasetSpec
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import Plans
from autoseg.workspace import DatasetPaths

#: Seed of the class-location subsample; per case and folder: ``[seed, crc32(case id), crc32(folder name)]``.
DEFAULT_SEED = 1234


@dataclass(frozen=True)
class ConfigResult:
    """What happened to one configuration.

    Attributes
    ----------
    config
        Configuration name as requested.
    folder
        Its case store folder (shared by ``3d_cascade_fullres`` and ``3d_fullres``).
    processed, reused
        Cases written in this run / found complete and kept.
    invalidated
        The folder held data of other plans, which was removed.
    """

    config: str
    folder: str
    processed: int
    reused: int
    invalidated: bool


@dataclass(frozen=True)
class PreprocessResult:
    """Outcome of :func:`preprocess_dataset`: one entry per requested configuration, workers used, wall time (s)."""

    configs: tuple[ConfigResult, ...]
    num_workers: int
    seconds: float


@dataclass(frozen=True)
class _Task:
    config: str  # configuration used to compute the data
    folder: Path
    key: str  # preprocessing hash


@dataclass(frozen=True)
class _Outcome:
    case_id: str
    error: str | None = None


# --------------------------------------------------------------------------- memory and workers


def estimate_worker_bytes(fingerprint: Fingerprint, plans: Plans, configs: Sequence[str]) -> int:
    """Peak memory of one worker on the dataset's largest case, bytes (estimate).

    Per case: the raw image as read (the reader's copies: about 3 float32 copies per channel, plus the label),
    the cropped and normalised copy, and at the target spacing the output channels, the label resampling
    buffers and one channel's interpolation temporaries. Shapes come from the fingerprint (after cropping) and the
    configurations' target spacings.
    """
    channels = len(fingerprint.channel_names)
    fwd = list(plans.transpose_forward)
    worst = 0
    for case in fingerprint.cases:
        raw = float(np.prod(case.shape_before_crop, dtype=np.float64))
        crop = float(np.prod(case.shape_after_crop, dtype=np.float64))
        spacing_t = tuple(case.spacing[a] for a in fwd)
        shape_t = tuple(case.shape_after_crop[a] for a in fwd)
        for name in configs:
            target = target_spacing_for(plans.configurations[name], spacing_t)
            res = float(np.prod(resampled_shape(shape_t, spacing_t, target), dtype=np.float64))
            need = raw * (12 * channels + 6) + crop * (4 * channels + 4) + res * (4 * channels + 30)
            worst = max(worst, int(need))
    return worst


def default_preprocess_workers(fingerprint: Fingerprint, plans: Plans, configs: Sequence[str],
                               available_bytes: Callable[[], int] | None = None,
                               cpu_count: int | None = None) -> int:
    """Workers that fit the free memory with the largest case in every one of them, at most one per core."""
    cpus = cpu_count or usable_cpus()
    need = max(1, estimate_worker_bytes(fingerprint, plans, configs))
    free = (available_bytes or _available_memory)()
    return int(max(1, min(cpus, free // need)))


# --------------------------------------------------------------------------- worker


def _init_preprocess_worker() -> None:
    """One SimpleITK and one BLAS thread per worker: the workers are the parallelism."""
    _init_worker()
    one_blas_thread()


def _cause(e: BaseException) -> str:
    """``Type: message (file:line)`` on one line, the line being the innermost frame."""
    msg = (str(e).strip().splitlines() or [""])[0]
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {msg}{where}" if msg else f"{type(e).__name__}{where}"


def _preprocess_one(raw_dir: Path, spec: DatasetSpec, case: CaseSpec, plans: Plans, tasks: Sequence[_Task],
                    seed: int) -> _Outcome:
    try:
        loaded = load_and_check_case(raw_dir, spec, case)
        if loaded.problems:
            return _Outcome(case.case_id, "; ".join(loaded.problems))
        spacing_t = tuple(loaded.geometry.spacing[a] for a in plans.transpose_forward)
        done: dict[tuple, object] = {}  # data_key -> PreprocessedCase: configurations with equal data share work
        for task in tasks:
            rng = np.random.default_rng([seed, zlib.crc32(case.case_id.encode()),
                                         zlib.crc32(task.folder.name.encode())])
            key = data_key(plans, task.config, spacing_t)
            if key in done:
                pc = derive_case(done[key], plans, task.config, rng)
            else:
                pc = preprocess_case(loaded.image, loaded.label, loaded.geometry, plans, task.config, case.case_id,
                                     rng, roi=loaded.roi)
                done[key] = pc
            CaseStore(task.folder).write(pc if case.label is not None else unlabelled_case(pc))
            del pc
        return _Outcome(case.case_id)
    except Exception as e:  # reported by the parent as one line naming the case
        return _Outcome(case.case_id, _cause(e))


def unlabelled_case(case: PreprocessedCase) -> PreprocessedCase:
    """An unlabelled training image as the store keeps it: a segmentation that is all
    :data:`~autoseg.schema.dataset.IGNORE` (nothing annotated, so the losses leave every voxel out until a
    semi-supervised method gives it a target) and no class locations (its patches are drawn uniformly)."""
    seg = np.full((1, *case.data.shape[1:]), IGNORE, dtype=np.int8)
    return PreprocessedCase(case.data, seg, {}, case.properties)


def _run(jobs: list[tuple], num_workers: int, desc: str, progress: bool, raw_dir: Path) -> None:
    def check(i: int, outcome: _Outcome) -> None:
        if outcome.error is not None:
            case: CaseSpec = jobs[i][2]
            raise AutosegError(f"{raw_dir / case.images[0]}: preprocessing case '{case.case_id}' failed: "
                               f"{outcome.error}")

    def died(running: list[str]) -> str:
        return (f"{raw_dir}: a preprocessing worker was killed (by the OS, most likely out of memory) while "
                f"processing {', '.join(running) or 'a case'}; retry with fewer workers "
                f"({option(f'num_workers={max(1, num_workers // 2)}')})")

    map_cases(_preprocess_one, jobs, [job[2].case_id for job in jobs], max(1, num_workers), desc, progress,
              initializer=_init_preprocess_worker, on_result=check, died_message=died)


# --------------------------------------------------------------------------- dataset


def _check_inputs(spec: DatasetSpec, plans: Plans, paths: DatasetPaths, configs: Sequence[str]) -> None:
    problems = []
    for name in configs:
        if name not in plans.configurations:
            problems.append(f"{paths.plans}: no configuration '{name}' (planned: "
                            f"{', '.join(plans.configurations)})")
            continue
        problems += [f"{paths.plans}: configuration '{name}': {p}"
                     for p in normalization_problems(plans.configurations[name].normalization, spec.num_channels)]
    if len(plans.labels) > 127:
        problems.append(f"{paths.plans}: {len(plans.labels)} labels; preprocessed segmentations are int8 (<= 127)")
    ids = {c.case_id for c in spec.training + spec.unlabelled_cases}
    for cid in sorted(ids):
        # the store names files <case>.npy, <case>_seg.npy, <case>_locs.npz, <case>.json and store_info.json
        for suffix in ("_seg", "_locs"):
            if cid.endswith(suffix) and cid[:-len(suffix)] in ids:
                problems.append(f"{spec.raw_dir}: case ids '{cid}' and '{cid[:-len(suffix)]}' would share "
                                f"preprocessed file names; rename one")
        if f"{cid}.json" == INFO_NAME:
            problems.append(f"{spec.raw_dir}: case id '{cid}' is reserved; rename it")
    if problems:
        raise AutosegError(*problems)


def _prepare_folder(store: CaseStore, key: str, config: str, case_ids: set[str]) -> tuple[bool, set[str]]:
    """Make ``store`` hold only complete cases of ``key`` for known ids; returns (invalidated, complete ids)."""
    store.folder.mkdir(parents=True, exist_ok=True)
    store.clean_partial()
    info = store.read_info()
    invalidated = info is not None and info.plans_sha256 != key
    if invalidated:
        store.clear()
    complete = set()
    for cid in store.case_ids():
        if cid in case_ids and store.is_complete(cid, key):
            complete.add(cid)
        else:
            store.remove(cid)
    keep = {p.name for cid in complete for p in store.case_files(cid)}
    for p in store.folder.iterdir():  # arrays whose json was never written (killed between files)
        if p.is_file() and p.name.endswith((".npy", ".npz")) and p.name not in keep:
            p.unlink(missing_ok=True)
    store.write_info(key, config)
    return invalidated, complete


def preprocess_dataset(raw_dir: Path, spec: DatasetSpec, plans: Plans, paths: DatasetPaths,
                       configs: Sequence[str], num_workers: int | None = None, progress: bool = True,
                       fingerprint: Fingerprint | None = None, seed: int = DEFAULT_SEED) -> PreprocessResult:
    """Preprocess the training cases of ``spec`` (labelled and unlabelled) for ``configs`` into
    ``paths.preprocessed(config)``.

    Parameters
    ----------
    raw_dir
        Raw dataset folder.
    spec
        Its dataset spec.
    plans
        The dataset's plans.
    paths
        Workspace paths of the dataset.
    configs
        Configuration names of ``plans``.
    num_workers
        Parallel processes; default from the cores and the free memory per worker needed by the largest case
        (:func:`default_preprocess_workers`, from ``fingerprint``).
    progress
        Show progress with an ETA.
    fingerprint
        Used for the default worker count (read from ``paths.fingerprint`` when omitted).
    seed
        Seed of the class-location subsample.

    Raises
    ------
    AutosegError
        Unknown configuration, unusable normalisation, a case that fails (one line naming it and the cause), or a
        worker killed by the OS (naming the cases in flight).
    """
    t0 = time.perf_counter()
    raw_dir = Path(raw_dir)
    configs = list(dict.fromkeys(configs))
    _check_inputs(spec, plans, paths, configs)
    # the unlabelled training images share the store (they are sampled from it like the labelled cases)
    cases = list(spec.training) + list(spec.unlabelled_cases)
    case_ids = {c.case_id for c in cases}

    tasks: dict[Path, _Task] = {}
    for name in configs:
        folder = paths.preprocessed(name)
        key = preprocessing_sha256(plans, name)
        if folder in tasks and tasks[folder].key != key:
            raise AutosegError(f"{paths.plans}: configurations '{tasks[folder].config}' and '{name}' share "
                               f"{folder} but preprocess differently")
        tasks.setdefault(folder, _Task(name, folder, key))

    status = {}
    for folder, task in tasks.items():
        status[folder] = _prepare_folder(CaseStore(folder), task.key, task.config, case_ids)

    jobs = []
    for case in cases:
        todo = [t for f, t in tasks.items() if case.case_id not in status[f][1]]
        if todo:
            jobs.append((raw_dir, spec, case, plans, todo, seed))

    if num_workers is None:
        if fingerprint is None and paths.fingerprint.is_file():
            from autoseg.schema.base import load_json

            fingerprint = load_json(Fingerprint, paths.fingerprint)
        if fingerprint is not None and len(fingerprint.cases):
            num_workers = default_preprocess_workers(fingerprint, plans, [t.config for t in tasks.values()])
        else:
            num_workers = default_num_workers(raw_dir, spec)
    if jobs:
        names = ", ".join(f.name for f in tasks)
        _run(jobs, num_workers, f"Preprocess {names}", progress, raw_dir)

    results = []
    for name in configs:
        folder = paths.preprocessed(name)
        invalidated, complete = status[folder]
        results.append(ConfigResult(name, str(folder), processed=len(case_ids) - len(complete),
                                    reused=len(complete), invalidated=invalidated))
    return PreprocessResult(tuple(results), int(num_workers), time.perf_counter() - t0)


def preprocess_summary(result: PreprocessResult) -> str:
    """Human-readable lines: per configuration, cases written / reused and the folder."""
    lines = []
    for c in result.configs:
        note = " (data of older plans removed)" if c.invalidated else ""
        lines.append(f"  {c.config}: {c.processed} case(s) preprocessed, {c.reused} reused{note} -> {c.folder}")
    lines.append(f"  {result.seconds:.1f} s with {result.num_workers} worker(s)")
    return "\n".join(lines)
