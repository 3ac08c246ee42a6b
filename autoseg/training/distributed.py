"""Data-parallel training over several processes (torchrun): explicit rank information, no env reading here."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from autoseg.errors import AutosegError


@dataclass(frozen=True)
class DistributedSpec:
    """Where this process sits in a distributed run (the CLI fills it from torchrun's variables).

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes, rank on this machine (selects the CUDA device).
    master_addr, master_port
        Rendezvous address of rank 0.
    local_world_size
        Processes on this machine (they share its cores: each gets its share of data-loading workers).
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(spec: DistributedSpec, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPU.

    An NCCL group reduces CUDA tensors only (it has no CPU backend): every collective of a run on ``device``
    takes tensors on ``device``. On CUDA the group is bound to this process's GPU (``device_id``), so object
    collectives and barriers need not guess it. torch's own collective timeouts apply: 10 minutes under NCCL,
    30 under gloo.
    """
    if device.type == "cuda":
        device = torch.device("cuda", spec.local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=f"tcp://{spec.master_addr}:{spec.master_port}",
                                rank=spec.rank, world_size=spec.world_size, device_id=device)
        return
    dist.init_process_group("gloo", init_method=f"tcp://{spec.master_addr}:{spec.master_port}",
                            rank=spec.rank, world_size=spec.world_size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing outside a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (identity outside a distributed run); a new tensor, on ``t``'s device.

    ``t`` must be on the group's device: a CUDA tensor under NCCL (which has no CPU backend: a CPU tensor raises
    "No backend type associated with device type cpu"), a CPU tensor under gloo. The trainer makes its tensors on
    the model's device.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return t
    out = t.clone()
    dist.all_reduce(out)
    return out


def split_batch(batch_size: int, world_size: int, rank: int) -> int:
    """This rank's share of the global batch (the first ``batch_size % world_size`` ranks take one more)."""
    if batch_size < world_size:
        raise ValueError(f"global batch {batch_size} is smaller than the {world_size} processes")
    return batch_size // world_size + int(rank < batch_size % world_size)


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and exact bytes (equal digests: bit-identical tensors).

    Parameters
    ----------
    state
        A module's ``state_dict()`` or a checkpoint's ``"model"`` entry.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # bytes through uint8 (numpy has no bfloat16); a 0-dim tensor needs a dimension to be viewed
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(module: torch.nn.Module) -> str | None:
    """Check that every rank holds bit-identical weights; returns their digest (``None`` outside a distributed run).

    Only rank 0 saves checkpoints, so a rank whose weights drifted (resumed from other files, ran other steps, other
    code on another node) would go unnoticed; one all-gather of a digest per rank at the end of training makes it
    loud. Every rank must call it (it is a collective).

    Parameters
    ----------
    module
        The trained network (bare or DDP-wrapped: the digest is over the bare network's state dict).

    Returns
    -------
    str or None
        :func:`state_sha256` of the weights, the same on every rank.

    Raises
    ------
    AutosegError
        Some rank's weights differ from rank 0's.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    bare = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
    digest = state_sha256(bare.state_dict())
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)  # strings, so NCCL and gloo alike (no device tensor to place)
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise AutosegError(f"distributed training: the weights of rank(s) {', '.join(map(str, differing))} differ "
                           f"from rank 0's (every node must run the same autoseg and torch versions on the same "
                           f"workspace, on a shared file system)")
    return digest
