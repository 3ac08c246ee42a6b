"""The server's turn-taking and limits, deterministic: a real uvicorn server on a localhost port (in a thread)
with a stand-in model whose inference waits until the test lets it finish."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the [test] extra (httpx) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")

from autoseg.server import ServeOptions, create_app  # noqa: E402
from autoseg.workflow.serving import upload_ending  # noqa: E402


class SlowModel:
    """Looks like a ServedModel; ``segment`` copies the upload once ``release`` is set."""

    name, configuration, description, label_names, dims = "Slow", "3d_fullres", "stand-in", ("organ",), 3

    def __init__(self):
        self.release, self.running, self.calls, self.last_seconds = threading.Event(), 0, 0, 2.0
        self.max_running = 0

    def segment(self, image, out, source_values=True):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            assert self.release.wait(30)
            self.calls += 1
            out.write_bytes(image.read_bytes())
        finally:
            self.running -= 1


@pytest.fixture
def served():
    model = SlowModel()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app([model], ServeOptions(queue=2, max_upload_mb=1)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/healthz")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield model, url
    model.release.set()
    server.should_exit = True
    thread.join(10)


NIFTI = b"\x1f\x8b" + b"\0" * 100  # sniffed as .nii.gz; the stand-in model does not decode it


def test_one_inference_at_a_time_a_bounded_queue_then_503_with_retry_after(served):
    model, url = served
    results: list[httpx.Response] = []

    def send():
        results.append(httpx.post(f"{url}/v1/segment/Slow", files={"file": ("a.nii.gz", NIFTI)}, timeout=30))

    threads = [threading.Thread(target=send) for _ in range(3)]  # one runs, two wait
    for t in threads:
        t.start()
        time.sleep(0.3)
    rejected = httpx.post(f"{url}/v1/segment/Slow", files={"file": ("a.nii.gz", NIFTI)}, timeout=30)
    assert rejected.status_code == 503 and int(rejected.headers["retry-after"]) >= 1
    assert "busy" in rejected.json()["detail"]
    assert httpx.get(f"{url}/healthz").status_code == 200  # the server answers while the model works
    model.release.set()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200, 200]
    assert model.calls == 3 and model.max_running == 1
    assert all(r.content == NIFTI for r in results)


def test_uploads_over_the_limit_are_413_before_they_are_read(served):
    model, url = served
    r = httpx.post(f"{url}/v1/segment/Slow", files={"file": ("a.nii.gz", b"\0" * 1_100_000)})
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]

    def chunks():  # a well-formed multipart body without Content-Length: counted as it arrives
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.nii.gz"\r\n\r\n\x1f\x8b'
        for _ in range(30):
            yield b"\0" * 100_000
        yield b"\r\n--xyz--\r\n"

    r = httpx.post(f"{url}/v1/segment/Slow", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413
    assert model.calls == 0


@pytest.mark.parametrize("name, head, ending", [
    ("/home/u/scan.nii.gz", b"", ".nii.gz"), ("C:\\data\\MR Head.nrrd", b"", ".nrrd"), ("x.MHA", b"", ".mha"),
    ("upload", b"\x1f\x8b\x08\x00", ".nii.gz"), (None, b"NRRD0005\n", ".nrrd"), ("blob", b"ObjectType = Image", ".mha"),
    ("blob", b"\0" * 344 + b"n+1\0", ".nii"), ("fundus", b"\x89PNG\r\n\x1a\n", ".png"), ("x.txt", b"hello", None),
    (".nii.gz", b"", None),
])
def test_upload_endings(name, head, ending):
    assert upload_ending(name, head) == ending
