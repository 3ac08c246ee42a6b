import dataclasses
import os
import shutil
import signal

import numpy as np
import pytest

from autoseg import api, cli
from autoseg.errors import AutosegError
from autoseg.preprocessing import run as run_mod
from autoseg.preprocessing.case import preprocessing_sha256
from autoseg.preprocessing.run import default_preprocess_workers, estimate_worker_bytes, preprocess_dataset
from autoseg.preprocessing.store import CaseStore
from autoseg.schema.base import load_json
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.fingerprint import Fingerprint


@pytest.fixture(scope="module")
def planned(tiny_raw, tmp_path_factory):
    """A planned (not preprocessed) tiny dataset; tests copy the workspace before changing it."""
    ws = tmp_path_factory.mktemp("ws")
    result = api.plan(tiny_raw, ws, progress=False, preprocess=False)
    return tiny_raw, ws, result


@pytest.fixture
def ws(planned, tmp_path):
    raw, ws, result = planned
    dst = tmp_path / "ws"
    shutil.copytree(ws, dst)
    paths = dataclasses.replace(result.paths, root=dst / result.paths.root.name)
    spec = load_json(DatasetSpec, paths.dataset_spec)
    return raw, spec, result.plans, paths


def _run(ws, configs=("3d_fullres",), workers=1, **kw):
    raw, spec, plans, paths = ws
    return preprocess_dataset(raw, spec, plans, paths, list(configs), num_workers=workers, progress=False, **kw)


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_store_round_trip(ws):
    raw, spec, plans, paths = ws
    _run(ws)
    store = CaseStore(paths.preprocessed("3d_fullres"))
    ids = sorted(c.case_id for c in spec.training)
    assert store.case_ids() == ids
    data, seg, locs, props = store.load(ids[0])
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and data.ndim == 4
    assert seg.dtype == np.int8 and seg.shape == (1,) + data.shape[1:]
    assert sorted(locs) == list(range(1, len(plans.labels))) and all(v.dtype == np.int32 for v in locs.values())
    assert props.case_id == ids[0] and props.plans_sha256 == preprocessing_sha256(plans, "3d_fullres")
    assert store.read_info().plans_sha256 == props.plans_sha256
    data2, *_ = store.load(ids[0], mmap=False)
    assert not isinstance(data2, np.memmap) and np.array_equal(data, data2)
    assert not list(store.folder.glob(".*.tmp"))


@pytest.mark.parametrize("workers", [1, 2])
def test_restart_skips_complete_cases_and_redoes_partial_ones(ws, workers):
    raw, spec, plans, paths = ws
    _run(ws)
    store = CaseStore(paths.preprocessed("3d_fullres"))
    victim = spec.training[3].case_id
    # a killed run: a temporary file, and a case whose arrays were written but not its json
    (store.folder / f".{victim}.npy.x1y2.tmp").write_bytes(b"partial")
    store.properties_path(victim).unlink()
    store.data_path(victim).write_bytes(b"truncated")
    before = _mtimes(store.folder)
    res = _run(ws, workers=workers)
    assert (res.configs[0].processed, res.configs[0].reused) == (1, len(spec.training) - 1)
    assert not list(store.folder.glob(".*.tmp"))
    after = _mtimes(store.folder)
    changed = {n for n in after if after[n] != before.get(n)}
    assert changed <= {f"{victim}.npy", f"{victim}_seg.npy", f"{victim}_locs.npz", f"{victim}.json", "store_info.json"}
    assert store.is_complete(victim, preprocessing_sha256(plans, "3d_fullres"))
    assert np.load(store.data_path(victim)).dtype == np.float32


def test_kill_between_files_never_leaves_a_complete_looking_case(ws, monkeypatch):
    raw, spec, plans, paths = ws
    store = CaseStore(paths.preprocessed("3d_fullres"))
    real_savez = np.savez
    calls = []

    def dying_savez(*a, **k):  # the third case dies after its arrays, before its locations and json
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_savez(*a, **k)

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        _run(ws)
    monkeypatch.setattr(np, "savez", real_savez)
    assert len(store.case_ids()) == 2 and not list(store.folder.glob(".*.tmp"))
    res = _run(ws)
    assert (res.configs[0].processed, res.configs[0].reused) == (len(spec.training) - 2, 2)


def test_changed_plans_invalidate_unchanged_reuse(ws):
    raw, spec, plans, paths = ws
    _run(ws)
    cfg = plans.configurations["3d_fullres"]
    bigger_batch = dataclasses.replace(plans, configurations={
        **plans.configurations, "3d_fullres": dataclasses.replace(cfg, batch_size=cfg.batch_size + 3)})
    res = _run((raw, spec, bigger_batch, paths))
    assert res.configs[0].reused == len(spec.training) and not res.configs[0].invalidated
    coarser = dataclasses.replace(plans, configurations={
        **plans.configurations, "3d_fullres": dataclasses.replace(cfg, spacing=tuple(2 * s for s in cfg.spacing))})
    res = _run((raw, spec, coarser, paths))
    assert res.configs[0].invalidated and res.configs[0].processed == len(spec.training)
    store = CaseStore(paths.preprocessed("3d_fullres"))
    assert all(store.is_complete(c.case_id, preprocessing_sha256(coarser, "3d_fullres")) for c in spec.training)


def test_cascade_shares_the_fullres_folder(ws):
    raw, spec, plans, paths = ws
    cascade = dataclasses.replace(plans.configurations["3d_fullres"], name="3d_cascade_fullres",
                                  previous_stage="3d_lowres")
    plans2 = dataclasses.replace(plans, configurations={**plans.configurations, "3d_cascade_fullres": cascade})
    assert paths.preprocessed("3d_cascade_fullres") == paths.preprocessed("3d_fullres")
    res = _run((raw, spec, plans2, paths), configs=("3d_fullres", "3d_cascade_fullres", "2d"), workers=2)
    assert [c.processed for c in res.configs] == [len(spec.training)] * 3
    assert sorted(p.name for p in (paths.root / "preprocessed").iterdir()) == ["2d", "3d_fullres"]
    res = _run((raw, spec, plans2, paths), configs=("3d_cascade_fullres",))
    assert res.configs[0].reused == len(spec.training)


def test_failing_case_is_named(ws, monkeypatch):
    raw, spec, plans, paths = ws
    bad = spec.training[2].case_id

    def boom(image, label, geometry, plans, config, case_id, rng, **kwargs):
        if case_id == bad:
            raise ValueError("synthetic failure\nsecond line")
        return real(image, label, geometry, plans, config, case_id, rng)

    real = run_mod.preprocess_case
    monkeypatch.setattr(run_mod, "preprocess_case", boom)  # fork: the workers inherit the patch
    with pytest.raises(AutosegError) as e:
        _run(ws, workers=2)
    assert len(e.value.problems) == 1
    msg = e.value.problems[0]
    assert bad in msg and "ValueError: synthetic failure" in msg and "second line" not in msg


def test_worker_killed_by_the_os_suggests_fewer_workers(ws, monkeypatch):
    raw, spec, plans, paths = ws
    victim = spec.training[1].case_id
    real = run_mod.preprocess_case

    def oom(image, label, geometry, plans, config, case_id, rng, **kwargs):
        if case_id == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(image, label, geometry, plans, config, case_id, rng, **kwargs)

    monkeypatch.setattr(run_mod, "preprocess_case", oom)
    with pytest.raises(AutosegError) as e:
        _run(ws, workers=2)
    assert victim in str(e.value) and "fewer workers" in str(e.value)


def test_unknown_config_and_bad_normalization_name_the_plans(ws):
    raw, spec, plans, paths = ws
    with pytest.raises(AutosegError, match="no configuration '3d_lowres'"):
        _run(ws, configs=("3d_lowres",))
    cfg = plans.configurations["2d"]
    bad = dataclasses.replace(plans, configurations={**plans.configurations, "2d": dataclasses.replace(
        cfg, normalization=(dataclasses.replace(cfg.normalization[0], scheme="minmax"),))})
    with pytest.raises(AutosegError, match="plans.json: configuration '2d'.*minmax"):
        _run((raw, spec, bad, paths), configs=("2d",))


def test_default_workers_respect_memory(ws):
    raw, spec, plans, paths = ws
    fp = load_json(Fingerprint, paths.fingerprint)
    need = estimate_worker_bytes(fp, plans, ["3d_fullres", "2d"])
    assert need > 0
    assert default_preprocess_workers(fp, plans, ["3d_fullres"], lambda: need // 2, cpu_count=8) == 1
    assert default_preprocess_workers(fp, plans, ["3d_fullres"], lambda: need * 100, cpu_count=3) == 3
    assert default_preprocess_workers(fp, plans, ["3d_fullres"], lambda: need * 2 + 1, cpu_count=8) == 2


def test_api_and_cli(ws, capsys):
    raw, spec, plans, paths = ws
    workspace = paths.root.parent
    res = api.preprocess(workspace, spec.name, configs=["2d"], num_workers=1, progress=False)
    assert res.configs[0].processed == len(spec.training)
    assert paths.splits.is_file()
    assert cli.main(["preprocess", spec.name, "-w", str(workspace), "-c", "2d", "3d_fullres", "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert "2d: 0 case(s) preprocessed" in out and f"3d_fullres: {len(spec.training)} case(s)" in out
    assert cli.main(["preprocess", "NoSuchDataset", "-w", str(workspace)]) == 2


def test_clean_partial_keeps_the_temporaries_of_a_live_writer(tmp_path):
    from autoseg.schema.base import atomic_path

    store = CaseStore(tmp_path / "3d_fullres")
    store.folder.mkdir()
    stale = store.folder / ".case_00.npy.k1lled42.tmp"
    stale.write_bytes(b"partial")
    with atomic_path(store.data_path("case_01")) as live:  # another preprocessing run, still writing
        live.write_bytes(b"half")
        assert store.clean_partial() == 1
        assert live.exists() and not stale.exists()
    assert store.data_path("case_01").read_bytes() == b"half" and store.clean_partial() == 0
