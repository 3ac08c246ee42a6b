"""Progress of long work: a tqdm bar on a terminal, a few plain lines with an ETA anywhere else.

Bars written to a file or a cluster log are carriage-return refreshes, kilobytes per epoch that nobody reads.
When standard error is not a terminal, :func:`bar` prints one line every tenth of the work (and at least every
``LINE_SECONDS``) with the count, elapsed time and ETA, and a last line when done. Every long loop of autoseg goes
through :func:`bar`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: Without a terminal: at most one line per this many seconds, besides the tenths of the work.
LINE_SECONDS = 60.0


def hms(seconds: float) -> str:
    """A duration as ``H:MM:SS`` (rounded to the second), for progress lines and reports: ``3725`` -> ``'1:02:05'``.

    Examples
    --------
    >>> hms(3725.4), hms(59)
    ('1:02:05', '0:00:59')
    """
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineProgress:
    """The part of tqdm's interface autoseg uses, printing plain lines (see the module docs)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, leave: bool = True):
        self.total, self.desc, self.unit, self.stream, self.leave = total, desc, unit, stream, leave
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()
        self._next_tenth = 1

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = self.total and self.n * 10 >= self._next_tenth * self.total
        if tenth or now - self.last >= LINE_SECONDS:
            if self.total:
                while self.n * 10 >= self._next_tenth * self.total:
                    self._next_tenth += 1
            if not (self.total and self.n >= self.total):  # the last line is written by close()
                self._line(now)

    def _line(self, now: float, done: bool = False) -> None:
        self.last = now
        elapsed = now - self.start
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and 0 < self.n < self.total:
            eta = f", ETA {hms(elapsed / self.n * (self.total - self.n))}"
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}, {hms(elapsed)} elapsed{eta}{' - done' if done else ''}"
              f"{post}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.leave and self.n:
            self._line(time.monotonic(), done=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    n = 0

    def __init__(self, total=None):
        self.total = total

    def set_description(self, desc: str) -> None: ...
    def set_postfix(self, **values: Any) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None: ...


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, leave: bool = True,
        lines: bool = True, stream: TextIO | None = None):
    """A progress bar over ``total`` steps.

    Parameters
    ----------
    enabled
        ``False``: silent.
    leave
        Keep the finished bar (tqdm's ``leave``).
    lines
        Without a terminal, print plain lines; ``False``: stay silent there (for loops that print their own line
        per step, such as training epochs).
    stream
        Where to write (default: standard error).
    """
    stream = stream or sys.stderr
    if not enabled:
        return _Silent(total)
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave, file=stream)
    return LineProgress(total, desc, unit, stream, leave) if lines else _Silent(total)


def wrap(iterable, total: int | None, desc: str, unit: str = "it", enabled: bool = True):
    """Iterate with a :func:`bar`."""
    b = bar(total, desc, unit, enabled)
    try:
        for item in iterable:
            yield item
            b.update()
    finally:
        b.close()
