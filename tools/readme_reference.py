"""Rewrite README's generated parts (the synopsis in "Using it" and the command reference) from the parsers.

    .venv/bin/python tools/readme_reference.py          # rewrite README.md
    .venv/bin/python tools/readme_reference.py --check  # exit 1 when README.md is stale

tests/unit/test_readme.py fails when README and ``--help`` disagree; this script makes them agree. It reads the
parsers through argparse's own (private) structures, which is why it lives here and not in the library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoseg.cli.options import HelpFormatter
from autoseg.cli.parser import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
#: README's generated parts sit between these markers.
README_MARKERS = {"synopsis": ("<!-- synopsis: generated from the parsers -->", "<!-- /synopsis -->"),
                  "reference": ("<!-- reference: generated from the parsers -->", "<!-- /reference -->")}
_WIDTH = 118


def _subcommands() -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    """Every command's parser, and its one-line help (not this shell's $AUTOSEG_WORKSPACE in the defaults)."""
    sub = next(a for a in build_parser("autoseg_workspace")._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices), {c.dest: c.help for c in sub._choices_actions}


def readme_synopsis() -> str:
    """Every command's usage line, as README's "Using it" shows them."""
    parts = []
    for sp in _subcommands()[0].values():
        f = HelpFormatter(sp.prog, width=_WIDTH)
        f.add_usage(sp.usage, sp._actions, sp._mutually_exclusive_groups, prefix="")
        parts.append(f.format_help().strip())
    return "```\n" + "\n".join(parts) + "\n```"


def readme_reference() -> str:
    """README's command reference: per command its description and every option with its help and default."""
    parsers, helps = _subcommands()
    out = []
    for name, sp in parsers.items():
        f = HelpFormatter(sp.prog, width=_WIDTH)
        out.append(f"#### `autoseg {name}`\n\n{sp.description or helps[name]}\n")
        out.append("| option | meaning |\n| --- | --- |")
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flags = ", ".join(action.option_strings) or action.metavar or action.dest.upper()
            if action.option_strings and action.nargs != 0:
                flags += " " + f._format_args(action, f._get_default_metavar_for_optional(action))
            text = " ".join(f._expand_help(action).split()).replace("|", "\\|")
            out.append(f"| `{flags}` | {text} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


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
