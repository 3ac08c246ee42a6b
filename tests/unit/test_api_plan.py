"""`autoseg plan` / `api.plan` on the tiny synthetic dataset."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg import api
from autoseg.cli import main
from autoseg.schema.base import load_json
from autoseg.schema.plans import Plans


def test_plan_writes_everything_and_reuses_the_fingerprint(tiny_raw, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2", "--no-preprocess"]) == 0
    out = capsys.readouterr().out
    assert "3d_fullres" in out and "2d" in out and "patch" in out
    ds = ws / "Tiny"
    for name in ("dataset_spec.json", "fingerprint.json", "plans.json"):
        assert (ds / name).is_file()
    plans = load_json(Plans, ds / "plans.json")
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    fp_mtime = (ds / "fingerprint.json").stat().st_mtime_ns

    again = api.plan(tiny_raw, ws, progress=False, preprocess=False)
    assert again.fingerprint_reused
    assert (ds / "fingerprint.json").stat().st_mtime_ns == fp_mtime
    assert again.plans == plans


def test_changed_dataset_is_fingerprinted_again(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    ws = tmp_path / "ws"
    kw = {"preprocess": False}
    api.plan(raw, ws, progress=False, **kw)
    label = next((raw / "labelsTr").iterdir())
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10 ** 9))
    assert not api.plan(raw, ws, progress=False, **kw).fingerprint_reused


def test_other_preset_keeps_the_previous_plans(tiny_raw, tmp_path):
    ws = tmp_path / "ws"
    kw = {"preprocess": False}
    first = api.plan(tiny_raw, ws, progress=False, **kw)
    second = api.plan(tiny_raw, ws, preset="resenc-m", progress=False, **kw)
    assert second.plans.preset == "resenc-m"
    kept = list((ws / "Tiny").glob("plans.*.json"))
    assert len(kept) == 1 and load_json(Plans, kept[0]) == first.plans
    assert second.plans.configurations["3d_fullres"].architecture.network == "resenc_unet"


@pytest.mark.parametrize("argv, fragment", [
    (["plan", "{raw}", "--preset", "nope"], "unknown preset"),
    (["plan", "{raw}", "--gpu-memory", "-3"], "positive"),
    (["plan", "{tmp}/missing"], "not found"),
    (["plan", "{raw}", "--budget", "0"], "positive"),
    (["plan", "{raw}", "--budget", "10", "--min-iterations", "0"], "at least 1"),
    (["plan", "{raw}", "--budget", "10", "--device", "tpu"], "--device tpu"),
])
def test_bad_arguments_exit_2_without_writing(tiny_raw, tmp_path, capsys, argv, fragment):
    ws = tmp_path / "ws"
    argv = [a.format(raw=tiny_raw, tmp=tmp_path) for a in argv] + ["-w", str(ws)]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not ws.exists()


def run(argv) -> int:
    """Exit code of the CLI, whether it returns one or argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_python_dash_m_is_the_same_cli(tiny_raw, tmp_path):
    r = subprocess.run([sys.executable, "-m", "autoseg", "verify", str(tiny_raw), "-j", "1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_plans_json_has_the_documented_stable_keys(tiny_raw, tmp_path):
    kw = {"preprocess": False}
    res = api.plan(tiny_raw, tmp_path / "ws", progress=False, **kw)
    data = json.loads(res.paths.plans.read_text())
    assert {"transpose_forward", "transpose_backward", "configurations"} <= set(data)
    for c in data["configurations"].values():
        dims = len(c["patch_size"])
        assert {"spacing", "patch_size", "batch_size", "architecture", "normalization"} <= set(c)
        arch = c["architecture"]
        assert len(arch["features_per_stage"]) == len(arch["strides"]) == len(arch["kernel_sizes"])
        assert all(len(s) == dims for s in arch["strides"] + arch["kernel_sizes"])


def _seed_calibration(ws, seconds_per_tmac):
    """A cached throughput for this machine's CPU, so the test does not measure (and can choose the speed)."""
    import torch

    from autoseg.nn.device import resolve_precision
    from autoseg.schema.base import save_json
    from autoseg.training.calibration import CalibrationCache, Throughput, device_key
    from autoseg.workspace import Workspace

    cpu = torch.device("cpu")
    key = device_key(cpu, resolve_precision("auto", cpu))
    ws.mkdir(parents=True, exist_ok=True)
    save_json(CalibrationCache({key: Throughput(key, "cpu", seconds_per_tmac, "2026-01-01T00:00:00+00:00")}),
              Workspace(ws).calibration)


def test_plan_budget_fits_stores_and_prints_the_trade_offs(tiny_raw, tmp_path, capsys):
    from autoseg.schema.run_plan import RunPlan

    ws = tmp_path / "ws"
    # a very slow fake CPU, so even the tiny dataset's plans must give things up
    _seed_calibration(ws, 3e5)
    # --budget is the whole training run (issue 25): the run plan gives one fold its share, the plans fit it
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2", "--no-preprocess", "--budget", "3h",
                 "--device", "cpu", "--min-iterations", "100"]) == 0
    out = capsys.readouterr().out
    run = load_json(RunPlan, ws / "Tiny" / "run_plan.json")
    assert 0 < run.fold_minutes < 180 and run.budget_minutes == 180 and run.target_iterations == 100
    assert "iterations/fold" in out and f"fitted to {run.fold_minutes:g} training minutes per fold on cpu" in out
    assert "aiming at 100 iterations" in out
    assert "run plan for Tiny: one fold, 180 minutes of wall clock for the whole training run" in out
    plans = load_json(Plans, ws / "Tiny" / "plans.json")
    full = plans.configurations["3d_fullres"]
    assert full.budget is not None and full.budget.trade_offs and full.budget.min_iterations == 100
    assert full.budget.seconds_per_tmac == 3e5 and full.budget.device == "cpu"
    assert f"3d_fullres: {full.budget.trade_offs[0]}" in out
    raw_json = json.loads((ws / "Tiny" / "plans.json").read_text())
    assert raw_json["configurations"]["3d_fullres"]["budget"]["trade_offs"] == list(full.budget.trade_offs)

    # plenty of time on the same device: nnU-Net's plans, the budget recorded with no trade-offs
    rich = api.plan(tiny_raw, ws, progress=False, preprocess=False, budget_minutes=1e12, device="cpu")
    plain = api.plan(tiny_raw, ws, progress=False, preprocess=False)
    for name, c in rich.plans.configurations.items():
        assert c.budget.trade_offs == () and c.budget.enough
        assert c.patch_size == plain.plans.configurations[name].patch_size
    assert all(c.budget is None for c in plain.plans.configurations.values())
    assert "budget" not in (ws / "Tiny" / "plans.json").read_text()


def test_plan_without_budget_on_a_cpu_prices_nnunets_fold(tiny_raw, tmp_path, capsys):
    ws = tmp_path / "ws"
    _seed_calibration(ws, 30.0)
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2", "--no-preprocess", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "one 3d_fullres iteration of this plan takes" in out and "250,000 iterations" in out
    assert "--budget" in out


def test_plan_without_budget_never_runs_the_throughput_probe(tiny_raw, tmp_path, capsys, monkeypatch):
    from autoseg.training import calibration

    def no_probe(*_args, **_kwargs):
        raise AssertionError("plan without --budget ran the throughput probe")

    monkeypatch.setattr(calibration, "measure_throughput", no_probe)
    ws = tmp_path / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2", "--no-preprocess", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nnU-Net's 250,000 3d_fullres iterations per fold take hours to days" in out
    assert "Re-plan with --budget DURATION" in out and "takes ~" not in out
    assert not (ws / "calibration.json").exists()
    assert api.cpu_budget_advice(load_json(Plans, ws / "Tiny" / "plans.json"), ws, "cpu").startswith("on a CPU")


def test_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    from autoseg.training import calibration
    from autoseg.training.calibration import CalibrationCache, cached_throughput

    monkeypatch.setattr(calibration, "PROBE", ((16, 16, 16), 1, 1, 2))  # the real probe takes seconds
    monkeypatch.setattr(calibration, "_cores_busy_seconds", lambda: None)  # whatever else runs: not known

    cache = tmp_path / "calibration.json"
    first, cached = cached_throughput(cache, "cpu")
    assert not cached and 0 < first.seconds_per_tmac < 1e4 and first.device == "cpu"
    again, cached = cached_throughput(cache, "cpu")
    assert cached and again == first
    assert list(load_json(CalibrationCache, cache).entries) == [first.key]
    cache.write_text("{not json")
    remeasured, cached = cached_throughput(cache, "cpu")
    assert not cached and load_json(CalibrationCache, cache).entries.keys() == {remeasured.key}


def test_a_fast_device_is_measured_at_a_larger_batch(monkeypatch):
    from autoseg.training import calibration

    monkeypatch.setattr(calibration, "PROBE", ((16, 16, 16), 1, 1, 2))
    seen = []

    def fake_step(net, loss, shape, *args, **kwargs):
        seen.append(shape[0])
        return 0.01 * shape[0]  # a device 100x faster than needed: 10 ms per sample

    monkeypatch.setattr(calibration, "benchmark_step", fake_step)
    got = calibration.measure_throughput("cpu", min_seconds=0.25)
    assert seen == [1, 2, 4, 8, 16, 32]  # doubled until a step takes 0.25 s
    preset = calibration.load_preset("default")
    arch = calibration.architecture_for(calibration.pool_and_conv_props((1.0,) * 3, (16, 16, 16),
                                                                        preset.featuremap_min_edge), preset)
    # seconds per MAC of the batch measured last
    assert got.seconds_per_tmac == round(0.32 / calibration.training_macs(arch, (16,) * 3, 32, 1, 2) * 1e12, 3)
    assert calibration.measure_throughput("cpu", min_seconds=10, max_batch=4).seconds_per_tmac > 0
    assert seen[-3:] == [1, 2, 4]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="the cores' busy time is read from Linux's /proc/stat")
def test_a_probe_beside_a_busy_process_is_flagged_and_not_kept(tmp_path, monkeypatch):
    """Another process spinning on one of this process's cores while the probe runs: the measurement says so and
    is not cached (a later plan measures again)."""
    import time

    from autoseg.training import calibration

    def idle_step(*_args, **_kwargs):  # the probe's own step, idle: whatever the cores do is the others'
        time.sleep(1.0)
        return 1.0

    monkeypatch.setattr(calibration, "PROBE", ((16, 16, 16), 1, 1, 2))
    monkeypatch.setattr(calibration, "benchmark_step", idle_step)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        got, cached = calibration.cached_throughput(tmp_path / "calibration.json", "cpu")
    finally:
        spinner.kill()
        spinner.wait()
    assert got.busy and got.others_cores > 0.5 and not cached  # the spinner's core, and whatever else runs
    assert not (tmp_path / "calibration.json").exists()



def test_a_plan_fitted_to_a_busy_measurement_says_so(tiny_raw, tmp_path, capsys, monkeypatch):
    from autoseg.training import calibration

    busy = calibration.Throughput("k", "cpu", 200.0, "2026-12-03T12:00:00+00:00", others_cores=1.0)
    monkeypatch.setattr(calibration, "measure_throughput", lambda *_args, **_kwargs: busy)
    ws = tmp_path / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2", "--no-preprocess", "--device", "cpu",
                 "--budget", "3"]) == 0
    out = capsys.readouterr().out
    assert "note: other processes kept 1.0 CPU cores busy while this machine's speed was measured" in out
    assert "plan again when it is" in out and not (ws / "calibration.json").exists()
    assert any("CPU cores busy" in n for n in json.loads((ws / "Tiny" / "run_plan.json").read_text())["notes"])
    quiet = calibration.Throughput("k", "cpu", 20.0, "2026-12-03T12:00:00+00:00", others_cores=0.1)
    assert not quiet.busy and not calibration.Throughput("k", "cpu", 20.0, "now").busy
