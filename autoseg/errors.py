"""User-facing errors.

Every problem caused by the user's input (a malformed dataset, a missing file, a plan from another dataset) is raised
as an :class:`AutosegError`. The CLI prints its lines, one per problem, and exits with code 2 without a traceback.
"""

from __future__ import annotations

from typing import Iterable


class AutosegError(Exception):
    """A problem with the user's input, reported without a traceback.

    Parameters
    ----------
    problems
        One line per problem, each naming the file concerned and what is wrong with it.
    """

    def __init__(self, *problems: str):
        lines = [p for p in problems if p]
        super().__init__("\n".join(lines))
        self.problems: tuple[str, ...] = tuple(lines)


class DatasetError(AutosegError):
    """The raw dataset is malformed: one or more problems found by verification."""

    @classmethod
    def from_problems(cls, problems: Iterable[str]) -> "DatasetError":
        return cls(*problems)
