"""Fine-tuning: initialise a network from a checkpoint inside an exported model zip (``autoseg export``).

Every tensor whose name and shape match is loaded. Tensors that may differ are the segmentation heads (another
number of labels) and the input convolution (another number of channels): they keep their fresh initialisation.
Any other difference means another topology, which is an error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autoseg.errors import AutosegError
from autoseg.io.archive import ModelArchive
from autoseg.nn.checkpoint import load_checkpoint_bytes
from autoseg.schema.plans import ArchitecturePlan

_TOPOLOGY_FIELDS = ("network", "features_per_stage", "kernel_sizes", "strides", "blocks_per_stage_encoder",
                    "blocks_per_stage_decoder")


def parse_pretrained(value: str) -> tuple[Path, str | None]:
    """Split ``model.zip[:CONFIG]`` into the zip's path and the configuration (``None`` when not given)."""
    head, sep, tail = value.rpartition(":")
    if sep and tail and "/" not in tail and head.endswith(".zip"):
        return Path(head), tail
    return Path(value), None


def load_pretrained(network: torch.nn.Module, zip_path: Path, configuration: str, fold: str = "0",
                    architecture: ArchitecturePlan | None = None) -> tuple[list[str], list[str]]:
    """Load the weights of an exported fold into ``network`` where names and shapes match.

    Parameters
    ----------
    network
        A freshly built :class:`autoseg.nn.unet.UNet` (changed in place).
    zip_path
        An exported model (checked completely: manifest and member hashes).
    configuration, fold
        Which of the zip's checkpoints to take.
    architecture
        The architecture ``network`` was built from; when given, it must equal the exported one in topology
        (network type, stages, features, kernels, strides, blocks).

    Returns
    -------
    loaded, skipped
        Names of the state-dict tensors taken from the checkpoint, and of those left as initialised
        (segmentation heads for another label count, the input convolution for another channel count).

    Raises
    ------
    AutosegError
        Unreadable or tampered zip, missing configuration or fold, or another topology (one line).
    """
    zip_path = Path(zip_path)
    with ModelArchive(zip_path) as archive:
        if configuration not in archive.manifest.folds:
            raise AutosegError(f"{zip_path}: holds no configuration '{configuration}' (exported: "
                               f"{', '.join(archive.manifest.configurations)}); name one as {zip_path}:CONFIG")
        source_arch = archive.plans.configurations[configuration].architecture
        data, where = archive.checkpoint_bytes(configuration, str(fold))
    ckpt = load_checkpoint_bytes(data, where, plans_sha256=archive.manifest.plans_sha256)
    if architecture is not None:
        differ = [f for f in _TOPOLOGY_FIELDS if getattr(architecture, f) != getattr(source_arch, f)]
        if differ:
            f = differ[0]
            raise AutosegError(f"{zip_path}: {configuration} network has another topology ({f} "
                               f"{_plain(getattr(source_arch, f))}, this network {_plain(getattr(architecture, f))})"
                               f"; fine-tuning needs the same stages and features")
    source = ckpt.get("model")
    if not isinstance(source, dict):
        raise AutosegError(f"{zip_path}: checkpoint of {configuration} fold {fold} holds no weights")
    target = network.state_dict()
    if set(source) != set(target):
        extra = sorted(set(source) ^ set(target))
        raise AutosegError(f"{zip_path}: {configuration} network has another topology (e.g. tensor {extra[0]} is "
                           f"only in one of them); fine-tuning needs the same stages and features")
    input_layer = next(n for n, t in target.items() if t.ndim >= 3)  # the first convolution's weight
    loaded, skipped, state = [], [], dict(target)
    for name, tensor in target.items():
        src = source[name]
        if src.shape == tensor.shape:
            state[name] = src.to(dtype=tensor.dtype)
            loaded.append(name)
        elif name.startswith("seg_heads.") or _only_channels_differ(name, input_layer, src, tensor):
            skipped.append(name)
        else:
            raise AutosegError(f"{zip_path}: {configuration} network has another topology (tensor {name}: "
                               f"{tuple(src.shape)} in the zip, {tuple(tensor.shape)} here); fine-tuning needs "
                               f"the same stages and features")
    network.load_state_dict(state)
    return loaded, skipped


def _only_channels_differ(name: str, input_layer: str, src: torch.Tensor, dst: torch.Tensor) -> bool:
    return (name == input_layer and src.ndim == dst.ndim and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:])


def _plain(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_plain(v) for v in value) + ")"
    return str(value)


def initialise_from_pretrained(network: torch.nn.Module, pretrained: str, configuration: str, fold: str,
                               architecture: ArchitecturePlan) -> str:
    """:func:`load_pretrained` for ``TrainConfig.pretrained`` (``model.zip[:CONFIG]``; the configuration defaults
    to the one being trained); returns a one-line report."""
    zip_path, source_config = parse_pretrained(pretrained)
    source_config = source_config or configuration
    loaded, skipped = load_pretrained(network, zip_path, source_config, fold, architecture)
    line = (f"initialised from {zip_path} ({source_config} fold {fold}): {len(loaded)} tensor(s) loaded, "
            f"{len(skipped)} skipped")
    heads = sum(1 for n in skipped if n.startswith("seg_heads."))
    reasons = ([f"{heads} of the segmentation heads: another number of labels"] if heads else []) + \
        (["the input convolution: another number of channels"] if heads < len(skipped) else [])
    return line + (f" ({'; '.join(reasons)})" if reasons else "")
