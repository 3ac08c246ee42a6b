"""Rewrite README's generated parts (the synopsis in "Using it" and the command reference) from the parsers.

    .venv/bin/python tools/readme_reference.py          # rewrite README.md
    .venv/bin/python tools/readme_reference.py --check  # exit 1 when README.md is stale

tests/unit/test_readme.py fails when README and ``--help`` disagree; this script makes them agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from autoseg.cli import README_MARKERS, readme_reference, readme_synopsis

README = Path(__file__).resolve().parents[1] / "README.md"


def updated(text: str) -> str:
    for key, body in (("synopsis", readme_synopsis()), ("reference", readme_reference())):
        start, end = README_MARKERS[key]
        if start not in text or end not in text:
            raise SystemExit(f"{README}: markers {start} ... {end} not found")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body.strip()}\n{end}{tail}"
    return text


def main() -> int:
    text = README.read_text()
    new = updated(text)
    if "--check" in sys.argv[1:]:
        return 0 if new == text else 1
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
