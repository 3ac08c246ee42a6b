"""Test support, never installed: forces the CPU's bf16 answer in the Python subprocesses the suite starts.

``pytest --cpu-bf16 yes|no`` patches ``autoseg.nn.device.cpu_has_fast_bf16`` in the test process and puts this
folder first on ``PYTHONPATH`` with ``AUTOSEG_TEST_CPU_BF16`` set, so that ``autoseg serve``, torchrun ranks and
cluster jobs started by the tests take the same ``--precision auto`` path. The module is patched when it is first
imported (not here), so a subprocess that never imports torch stays free of it.
"""

import importlib.abc
import os
import sys

_FORCED = os.environ.get("AUTOSEG_TEST_CPU_BF16")
_MODULE = "autoseg.nn.device"


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)  # find the real module once, then wrap its loader
        try:
            import importlib.util
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            module.cpu_has_fast_bf16 = lambda: _FORCED == "yes"

        spec.loader.exec_module = exec_and_patch
        return spec


if _FORCED in ("yes", "no"):
    sys.meta_path.insert(0, _PatchOnImport())
