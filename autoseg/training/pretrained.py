"""Fine-tuning: initialise a network from a checkpoint inside an exported model zip (``autoseg export``).

Every tensor whose name and shape match is transferred; every other one keeps its fresh initialisation. The
networks may differ in topology, the classic case of transfer between datasets with different plans (a model
trained on Hippocampus fine-tuned on a heart dataset): other numbers of labels change the segmentation heads, other
channels the input convolution, another patch or spacing the number of stages, kernels or widths. What was taken
and what not is returned as a :class:`~autoseg.schema.training.TransferReport` (saved in the fold folder, and
summarised per network block for the console).
"""

from __future__ import annotations

from pathlib import Path

import torch

from autoseg.errors import AutosegError
from autoseg.io.archive import ModelArchive
from autoseg.nn.checkpoint import load_checkpoint_bytes
from autoseg.schema.training import TransferredTensor, TransferReport


def parse_pretrained(value: str) -> tuple[Path, str | None]:
    """Split ``model.zip[:CONFIG]`` into the zip's path and the configuration (``None`` when not given)."""
    head, sep, tail = value.rpartition(":")
    if sep and tail and "/" not in tail and head.endswith(".zip"):
        return Path(head), tail
    return Path(value), None


def load_pretrained(network: torch.nn.Module, zip_path: Path, configuration: str, fold: str = "0"
                    ) -> TransferReport:
    """Load the weights of an exported fold into ``network`` where names and shapes match.

    Parameters
    ----------
    network
        A freshly built :class:`autoseg.nn.unet.UNet` (changed in place).
    zip_path
        An exported model (checked completely: manifest and member hashes).
    configuration, fold
        Which of the zip's checkpoints to take.

    Returns
    -------
    TransferReport
        Every tensor of ``network``, transferred or left as initialised, with both shapes.

    Raises
    ------
    AutosegError
        Unreadable or tampered zip, missing configuration or fold, or no tensor in common (one line).
    """
    zip_path = Path(zip_path)
    with ModelArchive(zip_path) as archive:
        if configuration not in archive.manifest.folds:
            raise AutosegError(f"{zip_path}: holds no configuration '{configuration}' (exported: "
                               f"{', '.join(archive.manifest.configurations)}); name one as {zip_path}:CONFIG")
        data, where = archive.checkpoint_bytes(configuration, str(fold))
    source = load_checkpoint_bytes(data, where, plans_sha256=archive.manifest.plans_sha256).get("model")
    if not isinstance(source, dict):
        raise AutosegError(f"{zip_path}: checkpoint of {configuration} fold {fold} holds no weights")
    target = network.state_dict()
    state, rows = dict(target), []
    for name, tensor in target.items():
        src = source.get(name)
        match = isinstance(src, torch.Tensor) and src.shape == tensor.shape
        if match:
            state[name] = src.to(dtype=tensor.dtype)
        rows.append(TransferredTensor(name, tuple(tensor.shape), tuple(src.shape) if isinstance(src, torch.Tensor)
                                      else None, match))
    report = TransferReport(str(zip_path), configuration, str(fold), tuple(rows))
    if not any(r.transferred and r.name.endswith("weight") for r in rows):
        raise AutosegError(f"{zip_path}: {configuration} network shares no weight tensor (same name and shape) "
                           f"with this one; nothing to fine-tune from")
    network.load_state_dict(state)
    return report


def block_summary(report: TransferReport) -> list[str]:
    """One line per network block (``encoder.0``, ``upsample.1``, ``seg_heads`` ...): tensors transferred of all."""
    blocks: dict[str, list[bool]] = {}
    for t in report.tensors:
        parts = t.name.split(".")
        key = parts[0] if parts[0] in ("seg_heads", "stem") else ".".join(parts[:2])
        blocks.setdefault(key, []).append(t.transferred)
    width = max(len(k) for k in blocks)
    return [f"  {k:<{width}}  {sum(v)}/{len(v)} tensor(s)" + ("" if all(v) else
                                                              "  (fresh: another shape or not in the source)")
            for k, v in blocks.items()]


def initialise_from_pretrained(network: torch.nn.Module, pretrained: str, configuration: str, fold: str
                               ) -> tuple[str, TransferReport]:
    """:func:`load_pretrained` for ``TrainConfig.pretrained`` (``model.zip[:CONFIG]``; the configuration defaults
    to the one being trained); returns a report for the console and the :class:`TransferReport`."""
    zip_path, source_config = parse_pretrained(pretrained)
    source_config = source_config or configuration
    report = load_pretrained(network, zip_path, source_config, fold)
    line = (f"initialised from {zip_path} ({source_config} fold {fold}): {len(report.loaded)} tensor(s) loaded, "
            f"{len(report.skipped)} skipped")
    return "\n".join([line, *(block_summary(report) if report.skipped else [])]), report
