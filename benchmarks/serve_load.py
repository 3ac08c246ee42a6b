"""Load against ``autoseg serve``: 200 requests from 8 concurrent clients, latencies, server memory.

    .venv/bin/python benchmarks/serve_load.py -w WORKSPACE [--dataset Hippocampus] [--requests 200] [--clients 8]
                                             [--queue 4] [--no-tta]

Starts ``autoseg serve DATASET`` on a free localhost port in its own process, predicts the reference label maps
with ``autoseg predict`` first (same model), then sends ``--requests`` ``POST /v1/segment/DATASET`` requests, the
test images in turn, from ``--clients`` threads at once. A client that gets 503 waits its Retry-After and sends the
same image again with the ``Autoseg-Ticket`` the 503 carried, which keeps its place in line (at most 20 times).
Every 200 answer is compared with the reference label map. Prints how many were answered 200 and 503, any lost (no
answer, other status) or wrong, p50/p95 latency of the 200 answers (from the first send, retries included), the
Retry-After values received, and the server's resident memory at start, after a warm-up, and at the end (goal:
growth under 10% from after the warm-up).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _serve import start_server
from autoseg import api
from autoseg.io.image import read_label
from autoseg.server import TICKET_HEADER

HIPPO_TS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus" / "imagesTs"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workspace", type=Path, required=True)
    ap.add_argument("--dataset", default="Hippocampus")
    ap.add_argument("--images", type=Path, default=HIPPO_TS)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--no-tta", action="store_true")
    args = ap.parse_args()
    images = sorted(args.images.glob("*.nii.gz"))
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    api.predict(args.workspace, args.dataset, args.images, tmp / "reference", tta=not args.no_tta, progress=False)
    reference = {p.name: read_label(tmp / "reference" / p.name)[0] for p in images}

    server, url = start_server(args.workspace, args.dataset, tmp / "server.log", "--queue", str(args.queue),
                               *(["--no-tta"] if args.no_tta else []))
    rss = {"start": rss_mb(server.pid)}
    with open(images[0], "rb") as f:  # warm-up: first inference allocates the network's buffers
        httpx.post(f"{url}/v1/segment/{args.dataset}", files={"file": (images[0].name, f.read())}, timeout=600)
    rss["after warm-up"] = rss_mb(server.pid)

    lock = threading.Lock()
    todo = list(range(args.requests))
    results: list[dict] = []
    retries: list[float] = []  # every Retry-After received, seconds

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                image = images[i % len(images)]
                data = image.read_bytes()
                start, busy, early, status, wrong, ticket = time.perf_counter(), 0, 0, None, False, {}
                for _ in range(21):
                    try:
                        r = http.post(f"{url}/v1/segment/{args.dataset}", files={"file": (image.name, data)},
                                      headers=ticket)
                    except httpx.TransportError:
                        status = "lost"
                        break
                    status = r.status_code
                    if status != 503:
                        break
                    busy += 1
                    early += bool(ticket)  # turned away again after waiting the Retry-After it was given
                    ticket = {TICKET_HEADER: r.headers[TICKET_HEADER]} if TICKET_HEADER in r.headers else {}
                    retry = float(r.headers.get("retry-after", "1"))
                    with lock:
                        retries.append(retry)
                    time.sleep(retry)
                if status == 200:
                    out = tmp / f"got_{i}.nii.gz"
                    out.write_bytes(r.content)
                    wrong = not np.array_equal(read_label(out)[0], reference[image.name])
                    out.unlink()
                with lock:
                    results.append({"status": status, "busy": busy, "early": early, "wrong": wrong,
                                    "seconds": time.perf_counter() - start})

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss["end"] = rss_mb(server.pid)
    server.terminate()
    server.wait(120)
    ok = [r for r in results if r["status"] == 200]
    lat = np.array([r["seconds"] for r in ok]) if ok else np.array([np.nan])
    print(f"[bench] summary: {args.requests} requests from {args.clients} clients to one server "
          f"({args.dataset}, queue {args.queue}, {'no TTA' if args.no_tta else 'mirroring TTA'}, CPU), {wall:.0f} s")
    print(f"  answered 200: {len(ok)}; 503 answers (busy, then retried): {sum(r['busy'] for r in results)}; "
          f"given up after 20 retries: {sum(1 for r in results if r['status'] == 503)}; most 503s before one "
          f"request's 200: {max((r['busy'] for r in ok), default=0)}")
    if retries:
        print(f"  Retry-After received: {len(retries)}, mean {np.mean(retries):.1f} s, max {max(retries):.0f} s; "
              f"503 again after waiting it (ticket sent back): {sum(r['early'] for r in results)}")
    print(f"  lost (no answer or other status): {sum(1 for r in results if r['status'] not in (200, 503))}; "
          f"wrong label maps: {sum(r['wrong'] for r in results)}; requests accounted for: {len(results)}")
    print(f"  latency of 200 answers (from first send): p50 {np.percentile(lat, 50):.2f} s, "
          f"p95 {np.percentile(lat, 95):.2f} s; throughput {len(ok) / wall:.2f} cases/s")
    growth = (rss["end"] - rss["after warm-up"]) / rss["after warm-up"]
    print(f"  server RSS: start {rss['start']:.0f} MB, after warm-up {rss['after warm-up']:.0f} MB, "
          f"end {rss['end']:.0f} MB ({growth:+.1%} since warm-up; goal under +10%)")


if __name__ == "__main__":
    main()
