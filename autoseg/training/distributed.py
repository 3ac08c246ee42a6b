"""Data-parallel training over several processes (torchrun): explicit rank information, no env reading here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedSpec:
    """Where this process sits in a distributed run (the CLI fills it from torchrun's variables).

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes, rank on this machine (selects the CUDA device).
    master_addr, master_port
        Rendezvous address of rank 0.
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(spec: DistributedSpec, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPU."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://{spec.master_addr}:{spec.master_port}",
                            rank=spec.rank, world_size=spec.world_size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (identity outside a distributed run). CPU float64 tensors go through gloo."""
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
