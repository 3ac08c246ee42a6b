"""`autoseg plan` / `api.plan` on the tiny synthetic dataset."""

import json
import os
import shutil
import subprocess
import sys

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
