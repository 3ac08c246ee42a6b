"""Imports point down the layers: a module may import its own package and the layers below, never a layer above
and never a peer of its own layer (every ``import``, module-level or inside a function, counts)."""

import ast
from pathlib import Path

import autoseg

#: Bottom to top. Packages of one layer are peers: neither imports the other.
LAYERS = (
    ("__init__", "errors", "boxes", "progress"),  # version, user-facing errors, numpy-only helpers, progress lines
    ("parallel", "schema", "workspace"),        # process pool; frozen records + JSON; every workspace path
    ("io",),                                    # images, dataset.json, verification, probabilities, model archive
    ("fingerprint", "planning", "synthetic"),   # pure measurements and heuristics; synthetic datasets
    ("preprocessing",),
    ("data", "nn"),                             # splits, sampling, augmentation, loaders; networks, checkpoints
    ("training", "inference"),
    ("postprocessing",),
    ("evaluation", "report"),
    ("workflow",),                              # the only orchestration: dataset context, fold jobs, AutoML
    ("api", "server"),                          # the Python API; the HTTP server (both over workflow)
    ("cli",),
    ("__main__",),                              # python -m autoseg
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(autoseg.__file__).parent


def _package(module: str) -> str:
    """``autoseg.training.run`` -> ``training``; ``autoseg`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "autoseg")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "autoseg":  # ``from autoseg import api`` imports the named submodules
                found.update(f"autoseg.{a.name}" if a.name in RANK else "autoseg" for a in node.names)
            elif node.module.startswith("autoseg."):
                found.add(node.module)
    return found


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield "autoseg." + ".".join(rel.parts), path


def test_every_package_has_a_layer():
    packages = {_package(m) for m, _ in _modules()}
    assert packages - set(RANK) == set(), "add the new package to LAYERS"


def test_imports_point_down():
    wrong = []
    for module, path in _modules():
        own = _package(module)
        for target in _imports(path):
            other = _package(target)
            if other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{module} imports {target} ({other} is not below {own})")
    assert wrong == []


def test_the_checker_sees_lazy_and_upward_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from autoseg.workflow.fold import run_fold\n    import autoseg.api\n")
    assert _imports(probe) == {"autoseg.workflow.fold", "autoseg.api"}
