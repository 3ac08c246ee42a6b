"""Heuristics, I/O and schema modules import without torch (and importing autoseg has no side effects)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import autoseg

TORCH_FREE = ("autoseg.schema", "autoseg.io", "autoseg.fingerprint", "autoseg.planning", "autoseg.preprocessing",
              "autoseg.postprocessing",
              "autoseg.evaluation", "autoseg.inference.tiling")


def _modules():
    root = Path(autoseg.__file__).parent
    for info in pkgutil.walk_packages([str(root)], prefix="autoseg."):
        if info.name.startswith(TORCH_FREE):
            yield info.name


def test_torch_free_modules_import_with_torch_blocked():
    mods = sorted(set(_modules()) | {"autoseg.api", "autoseg.cli", "autoseg.workspace", "autoseg.synthetic"})
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            + "".join(f"import {m}\n" for m in mods)
            + "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "autoseg.planning.planner" in mods and "autoseg.fingerprint.dataset" in mods
