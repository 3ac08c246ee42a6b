"""Start ``autoseg serve`` for a benchmark: a free localhost port, its own process, wait until it answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def start_server(workspace: Path, dataset: str, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``(process, base URL)`` of ``autoseg serve DATASET -w WORKSPACE EXTRA...`` once ``/healthz`` answers 200;
    its output goes to ``log``. Exits the benchmark when the server dies before answering."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(log, "w")
    server = subprocess.Popen([sys.executable, "-m", "autoseg", "serve", dataset, "-w", str(workspace), "--port",
                               str(port), *extra], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            raise SystemExit(f"server exited: see {log}")
