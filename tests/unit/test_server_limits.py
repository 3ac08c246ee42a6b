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
    server, thread, url = _serve(model, ServeOptions(queue=2, max_upload_mb=1))
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


class Clock:
    """A monotonic clock the test moves by hand, seconds."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retry_after_is_the_measured_inference_time_times_the_inferences_ahead():
    from autoseg.server.admission import Turns

    clock = Clock()
    turns = Turns(capacity=2, clock=clock)  # one running + one waiting
    assert turns.admit(0, None) == (True, 0, None)
    assert turns.retry_after(1) == Turns.UNMEASURED  # nothing measured yet
    turns.start()
    clock.now += 4.0
    turns.finish()
    assert turns.mean_seconds == 4.0
    turns.start()
    clock.now += 2.0
    turns.finish()
    assert turns.mean_seconds == pytest.approx(4.0 + Turns.ALPHA * (2.0 - 4.0))  # moving average
    turns.mean_seconds = 4.0
    turns.start()  # one inference running for 1 s, one waiting: the line is full
    clock.now += 1.0
    ok, retry, first = turns.admit(2, None)
    assert not ok and first and retry == 3  # the running one ends in ~3 s, freeing a place
    ok, retry, second = turns.admit(2, None)
    assert not ok and second != first and retry == 7  # behind the first ticket: two inferences must end
    clock.now += 10.0  # the running one is overdue: its end is due any moment, never a negative estimate
    assert turns.retry_after(1) == 1 and turns.retry_after(3) == 8


def test_a_ticket_keeps_its_place_in_line_and_lapses_when_its_holder_stays_away():
    from autoseg.server.admission import Turns

    clock = Clock()
    turns = Turns(capacity=2, clock=clock, max_tickets=3)
    turns.mean_seconds = 1.0
    turns.start()
    _, r1, t1 = turns.admit(2, None)
    _, r2, t2 = turns.admit(2, None)
    assert (r1, r2) == (1, 2)
    turns.finish()
    turns.start()  # the waiting one runs: one place free, held for t1
    assert turns.admit(1, None)[0] is False  # a newcomer queues behind the tickets ...
    assert list(turns.tickets)[:2] == [t1, t2]
    assert turns.admit(1, t2)[0] is False  # ... and so does a later ticket
    assert turns.admit(1, t1) == (True, 0, None)  # the first in line takes the place
    ok, _, again = turns.admit(2, t2)
    assert not ok and again == t2 and list(turns.tickets)[0] == t2  # turned away again: same ticket, first now
    assert turns.admit(0, None)[0] is True  # a model with nothing to do never waits for an absent holder
    # a full book of tickets: a 503 without one
    turns.admit(2, None)
    assert len(turns.tickets) == 3
    ok, retry, none = turns.admit(2, None)
    assert not ok and none is None and retry >= 1
    # holders that stay away past their Retry-After plus the grace period lose their places
    clock.now += 60.0
    assert turns.admit(1, None) == (True, 0, None) and not turns.tickets
    ok, _, fresh = turns.admit(2, t2)  # a lapsed ticket is a fresh request
    assert not ok and fresh != t2


class StepModel(SlowModel):
    """A stand-in whose inferences end one at a time, each when the test calls ``step``."""

    def __init__(self):
        super().__init__()
        self.steps = threading.Semaphore(0)
        self.release.set()

    def segment(self, image, out, source_values=True):
        assert self.steps.acquire(timeout=30)
        super().segment(image, out, source_values)


def _serve(model, options):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app([model], options), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/healthz")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    return server, thread, url


def _until(url: str, **load) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = httpx.get(f"{url}/healthz").json()["load"]["Slow"]
        if all(got[k] == v for k, v in load.items()):
            return
        time.sleep(0.02)
    raise AssertionError(f"load never reached {load}: {got}")


def test_a_client_that_waited_its_retry_after_is_served_before_newcomers():
    from autoseg.server import TICKET_HEADER

    model = StepModel()
    server, thread, url = _serve(model, ServeOptions(queue=1))
    results: dict[str, httpx.Response] = {}

    def send(key, headers=None):
        results[key] = httpx.post(f"{url}/v1/segment/Slow", files={"file": ("a.nii.gz", NIFTI)},
                                  headers=headers or {}, timeout=30)

    try:
        a = threading.Thread(target=send, args=("a",))
        a.start()
        _until(url, running=1, waiting=0)
        b = threading.Thread(target=send, args=("b",))
        b.start()
        _until(url, running=1, waiting=1)  # the line (1 running + 1 waiting) is full
        send("c")
        assert results["c"].status_code == 503 and int(results["c"].headers["retry-after"]) >= 1
        ticket = results["c"].headers[TICKET_HEADER]
        model.steps.release()  # a's inference ends, b's begins: one place frees, c's by its ticket
        a.join(30)
        _until(url, running=1, waiting=0, tickets=1)
        send("d")  # a newcomer does not take it
        assert results["d"].status_code == 503 and results["d"].headers[TICKET_HEADER] != ticket
        c = threading.Thread(target=send, args=("c", {TICKET_HEADER: ticket}))
        c.start()
        _until(url, running=1, waiting=1)  # c waits in the place it was promised
        late = results["d"].headers[TICKET_HEADER]
        send("d", {TICKET_HEADER: late})
        assert results["d"].status_code == 503 and results["d"].headers[TICKET_HEADER] == late  # first in line now
        for _ in range(3):
            model.steps.release()
        b.join(30)
        c.join(30)
        send("d", {TICKET_HEADER: late})
        assert [results[k].status_code for k in "abcd"] == [200] * 4
        assert model.calls == 4 and model.max_running == 1
    finally:
        for _ in range(4):
            model.steps.release()
        server.should_exit = True
        thread.join(10)


def test_result_file_names_beyond_latin_1_are_rfc_6266_headers(served):
    from urllib.parse import unquote

    model, url = served
    model.release.set()
    name = "海马_😀.nii.gz"
    r = httpx.post(f"{url}/v1/segment/Slow", files={"file": (name, NIFTI)}, timeout=30)
    assert r.status_code == 200, r.text
    disposition = r.headers["content-disposition"]
    assert disposition.isascii() and 'filename="' in disposition
    assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == "海马_😀_seg.nii.gz"
