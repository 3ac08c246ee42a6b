"""The checkpoint format: written atomically, loaded with ``weights_only`` and checked against the plans they need.

A checkpoint is a ``torch.save`` dict: ``format``, ``version``, ``model`` (the network's state dict), ``plans_sha256``,
``train_config`` and ``state`` (JSON strings), and for resuming ``optimizer`` and ``grad_scaler`` (no RNG
state: training draws from seeded streams only; older checkpoints carry an unused ``torch_rng``).
Exported checkpoints (:func:`for_export`) keep only what prediction and fine-tuning need. Loading never unpickles
code (``weights_only``), so a checkpoint from anywhere can be opened safely.
"""

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
    data = checkpoint_bytes(payload)
    atomic_write(Path(path), lambda f: f.write(data))


#: Entries needed for prediction and fine-tuning (optimiser, grad scaler and RNG state are dropped on export).
EXPORTED_KEYS = ("format", "version", "model", "plans_sha256", "train_config", "state")


def checkpoint_bytes(payload: dict[str, Any]) -> bytes:
    """The serialised form of a checkpoint ``payload`` (format and version added)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    return buf.getvalue()


def for_export(ckpt: dict[str, Any], exported_from: str) -> bytes:
    """The bytes of an exported copy of ``ckpt``: only :data:`EXPORTED_KEYS`, plus which file it came from."""
    kept = {k: ckpt[k] for k in EXPORTED_KEYS if k in ckpt}
    kept["exported_from"] = exported_from
    return checkpoint_bytes(kept)


def load_checkpoint_bytes(data: bytes, where: str, plans_sha256: str | None = None,
                          map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` for bytes already in memory (a zip member); ``where`` names them in errors."""
    return _checked(_load(io.BytesIO(data), where, map_location), where, plans_sha256)


def _load(f, where: str, map_location) -> Any:
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe (code-running) files
        raise AutosegError(f"{where}: not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def _checked(ckpt: Any, where: str, plans_sha256: str | None) -> dict[str, Any]:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AutosegError(f"{where}: not an autoseg checkpoint")
    if ckpt.get("version") != VERSION:
        raise AutosegError(f"{where}: checkpoint version {ckpt.get('version')}, this autoseg reads {VERSION}")
    if plans_sha256 is not None and ckpt.get("plans_sha256") != plans_sha256:
        raise AutosegError(
            f"{where}: trained with other plans (sha256 {str(ckpt.get('plans_sha256'))[:12]}, current plans "
            f"{plans_sha256[:12]}); re-plan with the original settings or train again")
    return ckpt


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
    with open(path, "rb") as f:
        return _checked(_load(f, str(path), map_location), str(path), plans_sha256)


def to_json_field(obj: Any) -> str:
    """Store structured metadata as a JSON string inside the checkpoint (loadable with ``weights_only``)."""
    return json.dumps(obj)


def check_weights(state: Any, network: torch.nn.Module, where: str) -> None:
    """Refuse network weights that do not fit ``network``: not a mapping of tensors, a tensor missing or extra,
    or one of another shape (one line naming ``where`` and the first such tensor).

    Raises
    ------
    AutosegError
    """
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise AutosegError(f"{where}: the checkpoint's model is not a set of named tensors")
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = (f"lacks {len(missing)} tensor(s) of the plans' network (e.g. {missing[0]})" if missing else
                f"holds {len(extra)} tensor(s) the plans' network does not have (e.g. {extra[0]})")
        raise AutosegError(f"{where}: {what}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype.is_floating_point != v.dtype.is_floating_point:
            raise AutosegError(f"{where}: tensor {k} has shape {tuple(state[k].shape)} ({state[k].dtype}), the "
                               f"plans' network needs {tuple(v.shape)} ({v.dtype})")
