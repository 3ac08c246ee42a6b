"""README and ``--help`` agree: the synopsis and the command reference in README are the parsers' own output."""

import importlib.util
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_spec = importlib.util.spec_from_file_location("readme_tool", README.parent / "tools" / "readme_reference.py")
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)
README_MARKERS, readme_reference, readme_synopsis = _tool.README_MARKERS, _tool.readme_reference, _tool.readme_synopsis


def _section(text: str, key: str) -> str:
    start, end = README_MARKERS[key]
    assert start in text and end in text, f"README lost its {key} markers"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_readme_synopsis_and_reference_are_the_parsers():
    text = README.read_text()
    assert _section(text, "synopsis") == readme_synopsis().strip(), \
        "README's synopsis is stale: run .venv/bin/python tools/readme_reference.py"
    assert _section(text, "reference") == readme_reference().strip(), \
        "README's command reference is stale: run .venv/bin/python tools/readme_reference.py"


def test_reference_lists_every_command_and_option():
    ref = readme_reference()
    for command in ("verify", "plan", "convert", "train", "predict", "find-best", "export", "import", "serve",
                    "evaluate", "report", "demo", "preprocess"):
        assert f"#### `autoseg {command}`" in ref
    assert "`--runtime {torch,compiled,onnxruntime}`" in ref and "`--budget DURATION`" in ref
