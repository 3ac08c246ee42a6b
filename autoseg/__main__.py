"""``python -m autoseg`` is the same CLI as the ``autoseg`` console script."""

import sys

from autoseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
