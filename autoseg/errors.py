"""User-facing errors.

Every problem caused by the user's input (a malformed dataset, a missing file, a plan from another dataset) is raised
as an :class:`AutosegError`. The CLI prints its lines, one per problem, and exits with code 2 without a traceback.

The library says what is wrong in terms of its own parameters; it does not know the command line. Where a message
names an option that would resolve the problem, it names the Python parameter with :func:`option`
(``option("resume=True")``); the CLI renders it as its flag (``--resume``), Python users read ``resume=True``.
"""

from __future__ import annotations

import re
from typing import Callable

_OPTION = re.compile(r"<<([^<>]+)>>")


def option(name: str) -> str:
    """Mark a Python parameter (``"overwrite=True"``, ``"budget_minutes"``) in a message, for the caller to spell.

    Examples
    --------
    >>> str(AutosegError(f"out.zip: already exists; pass {option('overwrite=True')} to replace it"))
    'out.zip: already exists; pass overwrite=True to replace it'
    """
    return f"<<{name}>>"


class AutosegError(Exception):
    """A problem with the user's input, reported without a traceback.

    Parameters
    ----------
    problems
        One line per problem, each naming the file concerned and what is wrong with it.
    """

    def __init__(self, *problems: str):
        lines = [p for p in problems if p]
        self._raw: tuple[str, ...] = tuple(lines)
        self.problems: tuple[str, ...] = self.render(lambda name: name)
        super().__init__("\n".join(self.problems))

    def render(self, spell: Callable[[str], str]) -> tuple[str, ...]:
        """The problem lines with every :func:`option` spelled by ``spell`` (the CLI passes its flag names)."""
        return tuple(_OPTION.sub(lambda m: spell(m.group(1)), line) for line in self._raw)


class DatasetError(AutosegError):
    """The raw dataset is malformed: one or more problems found by verification."""


class JobsFailed(Exception):
    """Jobs of a cluster run failed (not the user's input): one line per problem, the CLI exits with 1."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = lines


def require_extra(module: str, extra: str, what: str):
    """Import an optional dependency, or fail with one line naming the extra that provides it.

    Examples
    --------
    >>> require_extra("json", "serve", "autoseg serve").__name__
    'json'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AutosegError(f"{what} needs the optional package '{module.split('.')[0]}': "
                           f"pip install 'autoseg[{extra}]'") from None
