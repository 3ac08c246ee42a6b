"""Multi-node data-parallel training through torchrun, with two "nodes" (two torchrun agents) on this machine.

A two-node run must pass the end-of-training replica check (every rank holds the same weights) and save the same
bits as a one-node run with two processes (the batch streams depend on the global rank only); a run whose second
node is killed must fail on the first node (not hang) and resume from its latest checkpoint when both nodes are
started again with the same command.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.training import distributed as D

# slow: torchrun launches of two nodes, about 20 s each
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

#: The same command on every node; ``--resume`` from the start, so a relaunch after a failure is the same command.
TRAIN = ["-c", "3d_fullres", "-f", "0", "--iterations-per-epoch", "2", "--no-validation", "--deterministic",
         "-j", "0", "--batch-size", "2", "--resume"]
#: Seconds a torchrun launch may take before the test kills it (a launch takes ~20 s on 2 cores).
LAUNCH_TIMEOUT = 120
DIGEST = re.compile(r"weights identical on all ranks: sha256 ([0-9a-f]{64})")


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A workspace with the tiny dataset planned and preprocessed (copied by each test before training)."""
    tmp = tmp_path_factory.mktemp("multinode")
    raw, ws = tmp / "raw", tmp / "ws"
    assert main(["demo", "--make-data", str(raw), "--kind", "tiny"]) == 0
    assert main(["plan", str(raw), "-w", str(ws), "-j", "1", "--no-preprocess"]) == 0
    assert main(["preprocess", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-j", "1"]) == 0
    return ws


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Linux ``/proc``): torchrun starts each worker in a session of its own, so
    killing the agent's process group would leave the workers running."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue  # exited meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


class Node:
    """One torchrun agent (a "node") and its workers."""

    def __init__(self, log: Path, ws: Path, port: int, epochs: int, nnodes: int, node_rank: int, nproc: int,
                 c10d: bool = False):
        # static rendezvous (rank 0's node given) or c10d (the nodes agree on ranks; the form for SLURM)
        rendezvous = (["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tiny"] if c10d
                      else ["--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port)])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
               *rendezvous, "-m", "autoseg", "train", "Tiny", "-w", str(ws), "--epochs", str(epochs), *TRAIN,
               "--checkpoint-every", "1"]
        # one thread per process: 2 cores for up to 2 workers plus the agents
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 (closed in close()); a file, not a pipe: cannot fill up
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def kill(self) -> None:
        """SIGKILL the agent and its workers at once, like a node losing power."""
        if self.proc.poll() is None:
            for pid in _process_tree(self.proc.pid):  # all found before any is killed (orphans get reparented)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait()

    def wait(self, deadline: float) -> int | None:
        """Exit code, or ``None`` when still running at ``deadline`` (``time.monotonic()``)."""
        try:
            return self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def close(self) -> None:
        self.kill()
        self._out.close()


def _report(nodes: list[Node]) -> str:
    return "\n".join(f"--- {n.log.name} (exit {n.proc.returncode}) ---\n{n.output()}" for n in nodes)


def _launch(tmp: Path, name: str, ws: Path, epochs: int, nnodes: int, nproc: int, c10d: bool = False) -> list[Node]:
    port = _free_port()
    return [Node(tmp / f"{name}_node{r}.log", ws, port, epochs, nnodes, r, nproc, c10d) for r in range(nnodes)]


def _finish(nodes: list[Node]) -> list[str]:
    """Wait for every node to exit 0 (else kill them all and fail with their output); their outputs."""
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        codes = [n.wait(deadline) for n in nodes]
        if codes != [0] * len(nodes):
            pytest.fail(f"exit codes {codes} (None: killed after {LAUNCH_TIMEOUT} s)\n{_report(nodes)}")
        return [n.output() for n in nodes]
    finally:
        for n in nodes:
            n.close()


def _fold(ws: Path) -> Path:
    return ws / "Tiny" / "models" / "3d_fullres" / "fold_0"


def _final_model(ws: Path) -> dict[str, torch.Tensor]:
    return torch.load(_fold(ws) / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]


def test_two_nodes_train_like_one_node_with_two_processes(planned, tmp_path):
    ws2, ws1 = tmp_path / "ws_two_nodes", tmp_path / "ws_one_node"
    shutil.copytree(planned, ws2)
    shutil.copytree(planned, ws1)
    node0, node1 = _finish(_launch(tmp_path, "two", ws2, epochs=2, nnodes=2, nproc=1))
    (one,) = _finish(_launch(tmp_path, "one", ws1, epochs=2, nnodes=1, nproc=2))

    # both ranks passed the replica check, and it was over the weights rank 0 saved
    two_nodes = _final_model(ws2)
    assert DIGEST.findall(node0) == [D.state_sha256(two_nodes)], node0
    assert not DIGEST.findall(node1), "only rank 0 reports"
    # the same global batch in deterministic mode: bit-identical weights, whatever the ranks' placement on nodes
    one_node = _final_model(ws1)
    assert two_nodes.keys() == one_node.keys()
    different = [k for k in two_nodes if not torch.equal(two_nodes[k], one_node[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
    assert DIGEST.findall(one) == [D.state_sha256(one_node)]
    assert not (_fold(ws2) / "checkpoint_latest.pt").exists()


def test_killed_node_fails_the_other_then_both_resume(planned, tmp_path):
    """Through the c10d rendezvous (which node holds rank 0 is then the rendezvous' choice)."""
    ws = tmp_path / "ws"
    shutil.copytree(planned, ws)
    latest = _fold(ws) / "checkpoint_latest.pt"
    nodes = _launch(tmp_path, "killed", ws, epochs=4, nnodes=2, nproc=1, c10d=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not latest.exists():
            if time.monotonic() > deadline or any(n.proc.poll() is not None for n in nodes):
                pytest.fail(f"no {latest.name} while both nodes ran\n{_report(nodes)}")
            time.sleep(0.05)
        killed_at = time.monotonic()
        nodes[1].kill()
        # the survivor must notice the lost peer (its connection closes) and fail, not wait on a collective
        code = nodes[0].wait(killed_at + 60)
        assert code not in (None, 0), f"node 0 after node 1 was killed: exit {code}\n{_report(nodes)}"
        print(f"node 0 failed {time.monotonic() - killed_at:.1f} s after node 1 was killed")
    finally:
        for n in nodes:
            n.close()
    assert latest.exists() and not (_fold(ws) / "checkpoint_final.pt").exists()
    resumed_from = torch.load(latest, map_location="cpu", weights_only=True)["state"]
    epoch = int(re.search(r'"epoch": (\d+)', resumed_from).group(1))
    assert 1 <= epoch < 4

    out = "\n".join(_finish(_launch(tmp_path, "relaunched", ws, epochs=4, nnodes=2, nproc=1, c10d=True)))
    trained = re.findall(r"^epoch (\d+)/4:", out, flags=re.MULTILINE)
    assert trained == [str(e) for e in range(epoch + 1, 5)], out  # continued after the checkpoint's epoch
    final = torch.load(_fold(ws) / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert '"epoch": 4' in final["state"] and '"batches_drawn": 8' in final["state"]
    assert DIGEST.findall(out) == [D.state_sha256(final["model"])]


def _diverging_worker(rank: int, world: int, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    D.init(D.DistributedSpec(rank, world, rank, "127.0.0.1", port), torch.device("cpu"))
    try:
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        out[(rank, "same")] = D.check_replicas(net)
        if rank == 1:
            with torch.no_grad():
                net.bias[0] += 1e-6  # one drifted value is enough
        try:
            D.check_replicas(net)
            out[(rank, "drifted")] = "passed"
        except AutosegError as e:
            out[(rank, "drifted")] = str(e)
    finally:
        D.shutdown()


def test_replica_check_fails_on_every_rank_when_weights_differ():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_diverging_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="fork")
        out = dict(out)
    torch.manual_seed(0)
    assert out[(0, "same")] == out[(1, "same")] == D.state_sha256(torch.nn.Linear(3, 2).state_dict())
    assert "rank(s) 1 differ from rank 0's" in out[(0, "drifted")] and out[(0, "drifted")] == out[(1, "drifted")]
    assert D.check_replicas(torch.nn.Linear(3, 2)) is None  # outside a distributed run
