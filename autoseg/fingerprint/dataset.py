"""Verify and fingerprint a whole dataset in one parallel pass over its cases (each case is read once)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from autoseg.errors import DatasetError
from autoseg.fingerprint.case import CaseIntensities, analyze_case
from autoseg.io.dataset_json import REGIONS_FILE
from autoseg.io.verify import load_and_check_case
from autoseg.parallel import map_cases, usable_cpus
from autoseg.schema.dataset import CaseSpec, DatasetSpec
from autoseg.schema.fingerprint import CaseFingerprint, Fingerprint, IntensityStats

#: Foreground voxels (over the whole dataset) sampled for the pooled intensity percentiles, as in nnU-Net.
FOREGROUND_SAMPLES = 10 ** 8


@dataclass(frozen=True)
class _CaseResult:
    case_id: str
    problems: tuple[str, ...]
    fingerprint: CaseFingerprint | None = None
    intensities: CaseIntensities | None = None


def source_hash(raw_dir: Path, spec: DatasetSpec) -> str:
    """Hash of ``dataset.json`` and of every listed file's size and modification time.

    Cheap (no pixel data read) and changes whenever a file is replaced or edited, so an unchanged hash means the
    fingerprint can be reused.
    """
    h = hashlib.sha256((Path(raw_dir) / "dataset.json").read_bytes())
    side = Path(raw_dir) / REGIONS_FILE
    if side.is_file():  # an MSD dataset's regions: a change must not reuse the old fingerprint
        h.update(side.read_bytes())
    for case in spec.training + spec.test + spec.unlabelled_cases:
        for rel in case.images + tuple(r for r in (case.label, case.roi) if r):
            st = (Path(raw_dir) / rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _init_worker() -> None:
    """Worker processes read with one thread each: the processes themselves are the parallelism."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _check_and_measure(raw_dir: Path, spec: DatasetSpec, case: CaseSpec, index: int, max_samples: int,
                       seed: int) -> _CaseResult:
    loaded = load_and_check_case(raw_dir, spec, case)
    if loaded.problems or case.label is None:
        return _CaseResult(case.case_id, tuple(loaded.problems))
    fp, inten = analyze_case(case.case_id, loaded.image, loaded.label, loaded.geometry.spacing, max_samples,
                             np.random.default_rng([seed, index]), spec.num_classes)
    return _CaseResult(case.case_id, (), fp, inten)


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray, q: Iterable[float]) -> list[float]:
    """Percentiles (0-100) of weighted samples, interpolating between sample midpoints."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cw = np.cumsum(w)
    pos = (cw - 0.5 * w) / cw[-1]
    return [float(np.interp(p / 100.0, pos, v)) for p in q]


def pool_intensities(per_case: list[CaseIntensities], num_channels: int) -> tuple[IntensityStats, ...]:
    """Pooled foreground statistics per channel, every case weighing the same.

    Mean and std are exact (from each case's exact mean and variance); percentiles come from each case's
    subsample, weighted so every case counts equally.
    """
    stats = []
    for c in range(num_channels):
        means = np.array([ci.mean[c] for ci in per_case])
        variances = np.array([ci.var[c] for ci in per_case])
        mean = float(means.mean())
        var = float((variances + means ** 2).mean() - mean ** 2)
        samples = np.concatenate([ci.samples[c].astype(np.float64) for ci in per_case])
        weights = np.concatenate([np.full(ci.samples.shape[1], 1.0 / ci.samples.shape[1]) for ci in per_case])
        p005, p50, p995 = _weighted_percentiles(samples, weights, (0.5, 50.0, 99.5))
        stats.append(IntensityStats(mean=mean, median=p50, std=float(np.sqrt(max(var, 0.0))),
                                    min=float(min(ci.min[c] for ci in per_case)),
                                    max=float(max(ci.max[c] for ci in per_case)),
                                    percentile_00_5=p005, percentile_99_5=p995))
    return tuple(stats)


def check_and_fingerprint(raw_dir: Path, spec: DatasetSpec, num_workers: int, seed: int = 1234,
                          progress: bool = True, include_test: bool = True,
                          source_sha256: str | None = None) -> Fingerprint:
    """Verify every case and fingerprint the training cases, reading each file once.

    Parameters
    ----------
    raw_dir
        Raw dataset folder.
    spec
        Its parsed ``dataset.json``.
    num_workers
        Parallel processes (each holds one case at a time).
    seed
        Seed of the foreground subsampling (per case: ``[seed, case index]``).
    progress
        Show progress (a bar on a terminal, lines otherwise).
    include_test
        Also verify the test images (readable, channels, no NaN). The unlabelled training images are always
        verified.
    source_sha256
        Precomputed :func:`source_hash`, stored in the fingerprint.

    Raises
    ------
    DatasetError
        Every problem found, one line each.
    """
    raw_dir = Path(raw_dir)
    max_samples = max(1, FOREGROUND_SAMPLES // max(1, len(spec.training)))
    # the unlabelled images are checked like training images (a bad one is refused before any training) but not
    # fingerprinted: the plans and the normalisation are the labelled cases'
    cases = list(spec.training) + (list(spec.test) if include_test else []) + list(spec.unlabelled_cases)
    jobs = [(raw_dir, spec, case, i, max_samples, seed) for i, case in enumerate(cases)]
    results = map_cases(_check_and_measure, jobs, [c.case_id for c in cases], num_workers, "Verify + fingerprint",
                        progress, initializer=_init_worker)
    problems = [p for r in results for p in r.problems]
    if problems:
        raise DatasetError(*problems)
    train = results[:len(spec.training)]
    with_fg = [r.intensities for r in train if r.intensities is not None]
    if not with_fg:
        raise DatasetError(f"{raw_dir / 'labelsTr'}: no training case has any foreground label")
    fps = tuple(r.fingerprint for r in train)
    return Fingerprint(
        dataset_name=spec.name, channel_names=spec.channel_names, labels=spec.labels, cases=fps,
        intensity=pool_intensities(with_fg, spec.num_channels),
        median_relative_size_after_crop=float(np.median([f.relative_size_after_crop for f in fps])),
        source_sha256=source_sha256 or source_hash(raw_dir, spec), regions=spec.regions,
        regions_class_order=spec.regions_class_order)


def default_num_workers(raw_dir: Path, spec: DatasetSpec, available_bytes: Callable[[], int] | None = None,
                        cpu_count: int | None = None) -> int:
    """Worker count from the cores and the free memory per worker needed by the largest case.

    The largest case is estimated from the largest image file's header (no pixel data read); a worker needs
    roughly 8 float32 copies of it (image, label, masks, conversions).
    """
    import SimpleITK as sitk

    cpus = cpu_count or usable_cpus()
    files = [Path(raw_dir) / rel for c in spec.training + spec.test for rel in c.images]
    existing = [f for f in files if f.is_file()]
    if not existing:
        return 1
    biggest = max(existing, key=lambda f: f.stat().st_size)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(biggest))
        reader.ReadImageInformation()
        voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * max(1, len(spec.training[0].images))
    except RuntimeError:
        return 1  # verification will name the unreadable file
    need = voxels * 4 * 8
    free = (available_bytes or _available_memory)()
    return int(max(1, min(cpus, free // max(need, 1))))


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes (a generous default where it is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024 ** 3
