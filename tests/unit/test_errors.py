"""Errors name the library's parameters; the CLI spells them as its flags."""

import pytest

from autoseg.cli import main
from autoseg.errors import AutosegError, option


def test_python_users_read_parameters_and_the_cli_its_flags():
    e = AutosegError(f"fold_0: an unfinished run; pass {option('resume=True')} or {option('overwrite=True')}",
                     f"retry with fewer workers ({option('num_workers=1')}) or another {option('device')}")
    assert e.problems == ("fold_0: an unfinished run; pass resume=True or overwrite=True",
                          "retry with fewer workers (num_workers=1) or another device")
    assert str(e) == "\n".join(e.problems)
    from autoseg.cli.options import flag_for as _flag

    assert e.render(_flag) == ("fold_0: an unfinished run; pass --resume or --overwrite",
                               "retry with fewer workers (-j 1) or another --device")


def test_every_option_named_in_the_library_has_a_flag():
    import re
    from pathlib import Path

    import autoseg
    from autoseg.cli.options import FLAGS

    names = set()
    for path in Path(autoseg.__file__).parent.rglob("*.py"):
        names.update(m.split("=")[0] for m in re.findall(r"option\(f?'([^']+)'\)", path.read_text()))
    names.discard("name")
    assert names and names <= set(FLAGS), names - set(FLAGS)


def test_cli_prints_the_flag(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "raw"), "-w", str(tmp_path / "ws"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --preset nope: unknown preset; available: default")


@pytest.mark.parametrize("name", ["resume=True", "budget_minutes"])
def test_option_marks_round_trip(name):
    assert AutosegError(option(name)).problems == (name,)
