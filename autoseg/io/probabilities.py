"""Class probabilities on disk: ``<case>.npz`` with one array ``probabilities`` ``(K, z, y, x)``.

Written by fold validation and ``autoseg predict --save-probabilities``, read by cross-validation ensembling. Stored
as float16 (half the disk space of float32; ensembling averages and takes the argmax, which float16 keeps up to
ties), compressed, and written atomically (fsynced temporary file, then a rename).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.schema.base import atomic_write


def save_probabilities(path: Path, probabilities: np.ndarray) -> None:
    """Write ``(K, z, y, x)`` probabilities to ``path`` (``.npz``) as float16, atomically."""
    half = probabilities.astype(np.float16)
    atomic_write(Path(path), lambda f: np.savez_compressed(f, probabilities=half))


def load_probabilities(path: Path) -> np.ndarray:
    """``probabilities`` ``(K, z, y, x)`` of an ``.npz`` file as float32.

    Raises
    ------
    AutosegError
        The file is missing, unreadable or holds no ``probabilities`` (one line naming it).
    """
    try:
        with np.load(path) as f:
            return f["probabilities"].astype(np.float32)
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise AutosegError(f"{path}: cannot read 'probabilities' ({e})") from None
