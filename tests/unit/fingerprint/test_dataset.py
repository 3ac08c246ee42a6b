import numpy as np
import pytest

from autoseg.fingerprint.case import CaseIntensities
from autoseg.fingerprint.dataset import check_and_fingerprint, default_num_workers, pool_intensities
from autoseg.io.dataset_json import read_dataset_spec


def _ci(values):
    v = np.asarray(values, np.float64)[None]
    return CaseIntensities(v.astype(np.float32), v.mean(1), v.var(1), v.min(1), v.max(1))


def test_pool_intensities_weighs_every_case_equally():
    # one case with 4 voxels of 0, one with 1 voxel of 10: equal case weights -> mean 5, median between
    stats = pool_intensities([_ci([0, 0, 0, 0]), _ci([10])], 1)[0]
    assert stats.mean == pytest.approx(5.0)
    assert stats.std == pytest.approx(5.0)
    assert stats.min == 0 and stats.max == 10
    assert 0 <= stats.percentile_00_5 <= stats.median <= stats.percentile_99_5 <= 10


def test_pool_intensities_matches_plain_percentiles_for_equal_cases():
    rng = np.random.default_rng(0)
    cases = [rng.normal(100, 20, 5000) for _ in range(4)]
    stats = pool_intensities([_ci(c) for c in cases], 1)[0]
    allv = np.concatenate(cases)
    assert stats.median == pytest.approx(np.median(allv), abs=0.5)
    assert stats.percentile_99_5 == pytest.approx(np.percentile(allv, 99.5), abs=2)
    assert stats.std == pytest.approx(allv.std(), rel=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_fingerprint_is_identical_for_any_worker_count(tiny_raw, workers):
    spec = read_dataset_spec(tiny_raw)
    fp = check_and_fingerprint(tiny_raw, spec, workers, progress=False, source_sha256="x")
    ref = check_and_fingerprint(tiny_raw, spec, 1, progress=False, source_sha256="x")
    assert fp == ref
    assert len(fp.cases) == len(spec.training)
    assert all(c.foreground_voxels > 0 for c in fp.cases)
    assert fp.median_relative_size_after_crop < 1.0  # synthetic MRI is zero outside the body


def test_default_workers_respect_memory(tiny_raw):
    spec = read_dataset_spec(tiny_raw)
    assert default_num_workers(tiny_raw, spec, available_bytes=lambda: 10 ** 12, cpu_count=4) == 4
    assert default_num_workers(tiny_raw, spec, available_bytes=lambda: 1, cpu_count=4) == 1
