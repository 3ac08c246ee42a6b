"""Checkpoints: written atomically, loaded with ``weights_only`` and checked against the plans they need."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from autoseg.errors import AutosegError
from autoseg.schema.base import atomic_write

FORMAT = "autoseg-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, state dicts, numbers, strings) to ``path`` atomically.

    The bytes are serialised in memory first, then written to a temporary file in the same folder, fsynced
    and renamed: a process killed at any moment leaves the previous checkpoint intact.
    """
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    atomic_write(Path(path), lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: Path, plans_sha256: str | None = None, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path
        The ``.pt`` file.
    plans_sha256
        When given, the checkpoint must have been trained with these plans.

    Raises
    ------
    AutosegError
        Missing, corrupt or foreign file, or trained with other plans (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise AutosegError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AutosegError(f"{path}: not an autoseg checkpoint")
    if ckpt.get("version") != VERSION:
        raise AutosegError(f"{path}: checkpoint version {ckpt.get('version')}, this autoseg reads {VERSION}")
    if plans_sha256 is not None and ckpt.get("plans_sha256") != plans_sha256:
        raise AutosegError(
            f"{path}: trained with other plans (sha256 {str(ckpt.get('plans_sha256'))[:12]}, current plans "
            f"{plans_sha256[:12]}); re-plan with the original settings or train again")
    return ckpt


def to_json_field(obj: Any) -> str:
    """Store structured metadata as a JSON string inside the checkpoint (loadable with ``weights_only``)."""
    return json.dumps(obj)
