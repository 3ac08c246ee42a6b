"""Two CPU processes with gloo train a tiny network data-parallel and end with identical weights."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from autoseg.training import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    spec = D.DistributedSpec(rank, world, rank, "127.0.0.1", port)
    torch.set_num_threads(1)
    D.init(spec, torch.device("cpu"))
    try:
        torch.manual_seed(0)  # same initial weights on every rank (as train_fold does)
        net = torch.nn.Conv3d(1, 2, 3, padding=1)
        model = torch.nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
        for _ in range(3):
            x = torch.randn(D.split_batch(4, world, rank), 1, 6, 6, 6, generator=gen)
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        counts = D.all_reduce_sum(torch.ones(2, dtype=torch.float64) * (rank + 1))
        out[rank] = ([p.detach().clone() for p in net.parameters()], counts)
    finally:
        D.shutdown()


def test_two_gloo_ranks_hold_identical_weights():
    world = 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(world, _free_port(), out), nprocs=world, join=True, start_method="fork")
        w0, c0 = out[0]
        w1, c1 = out[1]
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))
    assert torch.equal(c0, torch.tensor([3.0, 3.0], dtype=torch.float64)) and torch.equal(c0, c1)


@pytest.mark.parametrize("batch, world, shares", [(7, 2, [4, 3]), (4, 2, [2, 2]), (2, 2, [1, 1])])
def test_split_batch(batch, world, shares):
    assert [D.split_batch(batch, world, r) for r in range(world)] == shares
    assert sum(shares) == batch


def test_split_batch_smaller_than_world():
    with pytest.raises(ValueError):
        D.split_batch(1, 2, 0)
