"""Command line: argparse -> one ``autoseg.api`` call. No logic lives here.

Bad input ends with one line per problem on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
from typing import Sequence

from autoseg.cli.commands import COMMANDS
from autoseg.cli.options import EXIT_SYSTEM_ERROR, EXIT_USER_ERROR, flag_for
from autoseg.cli.parser import build_parser
from autoseg.errors import AutosegError, JobsFailed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 the machine refused a read or write: disk full, permission
    denied ..., 2 bad input, 3 ``predict --skip-bad`` refused some inputs, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AutosegError as e:
        for line in e.render(flag_for):
            print(f"error: {line}", file=sys.stderr)
        if len(e.problems) > 1:
            print(f"error: {len(e.problems)} problems found; nothing was written", file=sys.stderr)
        return EXIT_USER_ERROR
    except JobsFailed as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except OSError as e:
        # disk full, permission denied, read-only file system ...: every writer is atomic, so nothing partial is
        # left; say which path, without a traceback
        where = e.filename or "autoseg"
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
