"""setup.py accepts the torch versions autoseg is tested with (a GPU machine's own CUDA build is kept); the exact
CPU pin lives in constraints.txt."""

import ast
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _torch_requirement() -> Requirement:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    return next(Requirement(r) for r in requires if Requirement(r).name == "torch")


def test_setup_accepts_the_tested_torch_versions():
    spec = _torch_requirement().specifier
    assert spec.contains("2.11.0") and spec.contains("2.13.0")  # the H200's CUDA build, and the CPU pin
    assert not spec.contains("2.10.0")


def test_constraints_pin_the_cpu_build():
    pins = [l.strip() for l in (ROOT / "constraints.txt").read_text().splitlines() if l.strip().startswith("torch")]
    assert pins == ["torch==2.13.0"]
