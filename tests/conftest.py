"""Shared fixtures: a tiny synthetic MSD dataset, one tiny trained model per test session, the location of the
shared real data, and the switch that runs the suite on either precision path of ``--precision auto``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: folder whose ``sitecustomize.py`` forces the bf16 answer in the suite's Python subprocesses
_CPU_BF16_SUPPORT = Path(__file__).resolve().parent / "support" / "cpu_bf16"
#: the training of the session's tiny model: one fold, two iterations (what the plumbing tests need)
TINY_TRAIN = ["-c", "3d_fullres", "-f", "0", "--epochs", "1", "--iterations-per-epoch", "2",
              "--validation-iterations", "1", "-j", "0", "--no-validation-tta"]


def pytest_addoption(parser):
    parser.addoption("--cpu-bf16", choices=("machine", "yes", "no"), default="machine",
                     help="what autoseg.nn.device.cpu_has_fast_bf16 answers, in the tests and the processes they "
                          "start: the machine's answer (default), or forced, to run the suite on the bf16 or the "
                          "fp32 path of --precision auto on any CPU")


def pytest_configure(config):
    forced = config.getoption("--cpu-bf16")
    if forced == "machine":
        return
    import autoseg.nn.device as device

    device.cpu_has_fast_bf16 = lambda: forced == "yes"
    os.environ["AUTOSEG_TEST_CPU_BF16"] = forced
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_CPU_BF16_SUPPORT), os.environ.get("PYTHONPATH"))
                                               if p)


def pytest_report_header(config):
    from autoseg.nn.device import cpu_has_fast_bf16

    forced = config.getoption("--cpu-bf16")
    return (f"autoseg: --precision auto on this CPU is {'bf16' if cpu_has_fast_bf16() else 'fp32'}"
            f"{' (forced with --cpu-bf16)' if forced != 'machine' else ''}")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A tiny synthetic MSD dataset (read-only for tests: copy it before corrupting it)."""
    from autoseg.synthetic import PRESETS, make_dataset

    return make_dataset(tmp_path_factory.mktemp("raw") / "Task01_Tiny", PRESETS["tiny"])


@pytest.fixture(scope="session")
def _tiny_model_template(tiny_raw, tmp_path_factory) -> Path:
    """A workspace with the tiny dataset planned and fold 0 of 3d_fullres trained (``TINY_TRAIN``), once per
    session. Never handed out: ``tiny_model`` gives each module its own copy."""
    from autoseg.cli import main

    ws = tmp_path_factory.mktemp("tiny_model") / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "1"]) == 0
    assert main(["train", "Tiny", "-w", str(ws), *TINY_TRAIN]) == 0
    return ws


def copy_workspace(template: Path, dest: Path) -> Path:
    """A copy of a workspace that a test may write to (the raw data stays shared: tests must not change it)."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def tiny_model(tiny_raw, _tiny_model_template, tmp_path_factory) -> tuple[Path, Path]:
    """``(raw, workspace)``: the tiny dataset and this module's own copy of the session's trained workspace
    (dataset ``Tiny``, fold 0 of 3d_fullres trained with ``TINY_TRAIN``)."""
    return tiny_raw, copy_workspace(_tiny_model_template, tmp_path_factory.mktemp("tiny_model_copy") / "ws")


def shared_dataset(name: str) -> Path:
    """Path of a dataset under ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not (path / "dataset.json").is_file():
        pytest.skip(f"{path} not present (shared real data is only beside the repository on dev/CI machines)")
    return path


@pytest.fixture(scope="session")
def hippocampus_raw() -> Path:
    """The shared Task04_Hippocampus folder (the test is skipped when it is absent)."""
    return shared_dataset("Task04_Hippocampus")
