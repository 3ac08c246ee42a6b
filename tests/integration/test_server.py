"""``autoseg serve`` as a server: a real process on a free localhost port, real HTTP clients (httpx, the exact
bytes MONAI Label's client sends, and ``monailabel.client.MONAILabelClient`` when it is importable).

One tiny model is trained once for the module; its ``autoseg predict`` outputs are the reference.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io.image import read_image, read_label, write_image

httpx = pytest.importorskip("httpx", reason="the [test] extra (httpx) is not installed")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")

#: the boundary MONAI Label's client uses, unquoted, with a ``$`` in it
MONAI_BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, ws: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(ws.parent / f"server_{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "autoseg", "serve", "-w", str(ws), "--port",
                                      str(self.port), *extra], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"server did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if not self.log.closed:
            self.output_after_stop = self.output()
            self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory):
    raw, ws = tiny_model  # this module's copy of the session's tiny trained workspace
    ref = tmp_path_factory.mktemp("serve") / "predicted"
    assert main(["predict", "Tiny", "-w", str(ws), "-i", str(raw / "imagesTs"), "-o", str(ref)]) == 0
    return raw, ws, ref


@pytest.fixture(scope="module")
def server(model):
    _, ws, _ = model
    s = Server(ws)
    yield s
    s.stop()


def _images(raw: Path) -> list[Path]:
    return sorted((raw / "imagesTs").glob("*.nii.gz"))


def _decoded(data: bytes, ending: str, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"result{ending}"
    path.write_bytes(data)
    return read_label(path)[0]


def test_segment_endpoint_returns_what_predict_writes(model, server, tmp_path):
    raw, _, ref = model
    for image in _images(raw):
        with open(image, "rb") as f:
            r = httpx.post(f"{server.url}/v1/segment/Tiny", files={"file": (image.name, f)}, timeout=120)
        assert r.status_code == 200, r.text
        assert image.name.replace(".nii.gz", "_seg.nii.gz") in r.headers["content-disposition"]
        got = tmp_path / image.name
        got.write_bytes(r.content)
        seg, geometry = read_label(got)
        expected, expected_geometry = read_label(ref / image.name)
        np.testing.assert_array_equal(seg, expected)
        assert geometry == expected_geometry  # the input's geometry


def test_info_and_absent_endpoints_as_the_slicer_extension_expects(server):
    info = httpx.get(f"{server.url}/info/").json()
    assert info["models"]["Tiny"]["type"] == "segmentation" and info["models"]["Tiny"]["description"]
    assert info["labels"] == ["liver", "spleen"]  # every name, for Slicer's segments
    assert info["models"]["Tiny"]["labels"] == {"liver": 1, "spleen": 2}  # consecutive values 1..N
    assert not info.get("config") and info["trainers"] == {} and info["strategies"] == {}
    assert httpx.get(f"{server.url}/info").status_code == 200
    for path in ("/auth/", "/train/?check_if_running=true", "/anything"):
        assert httpx.get(f"{server.url}{path}").status_code == 404  # never a 200 catch-all


def _monai_infer(url: str, model: str, image_id: str, params: dict, file: Path | None) -> tuple[int, dict, bytes]:
    """``POST /infer`` exactly as MONAILabelClient encodes it (MONAI_LABEL_API.md §2.1): unquoted boundary with a
    ``$``, params first, the full local path as file name, an explicit Content-Length."""
    from urllib.parse import quote_plus, urlparse

    parts = [f'--{MONAI_BOUNDARY}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
             f'{json.dumps(params)}\r\n'.encode()]
    if file is not None:
        parts.append(f'--{MONAI_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{file}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + file.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{MONAI_BOUNDARY}--\r\n\r\n".encode()
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("POST", f"/infer/{quote_plus(model)}?image={quote_plus(image_id)}", body,
                 {"content-type": f"multipart/form-data; boundary={MONAI_BOUNDARY}",
                  "content-length": str(len(body))})
    r = conn.getresponse()
    data, headers = r.read(), {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    return r.status, headers, data


def _parse_multipart(headers: dict, data: bytes) -> tuple[dict, dict[str, bytes]]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + data)
    form, files = {}, {}
    for part in msg.iter_parts():
        if part.get_filename():
            files[part.get_filename()] = part.get_payload(decode=True)
        else:
            form[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True).decode()
    return form, files


def test_monai_label_infer_with_the_clients_bytes(model, server, tmp_path):
    raw, _, ref = model
    image = _images(raw)[0]
    status, headers, data = _monai_infer(server.url, "Tiny", "", {"client_id": "t"}, image)
    assert status == 200, data[:300]
    assert "multipart/form-data" in headers["content-type"] and "content-length" in headers
    assert "chunked" not in headers.get("transfer-encoding", "") and "content-encoding" not in headers
    form, files = _parse_multipart(headers, data)
    params = json.loads(form["params"])
    assert params["label_names"] == {"liver": 1, "spleen": 2}
    (name, content), = files.items()
    assert "/" not in name and name.endswith(".nii.gz")  # a bare basename with a real ending
    np.testing.assert_array_equal(_decoded(content, ".nii.gz", tmp_path), read_label(ref / image.name)[0])


def test_slicer_upload_then_infer_by_image_id_and_sessions(model, server, tmp_path):
    raw, _, ref = model
    image = _images(raw)[1]
    expected = read_label(ref / image.name)[0]
    # Slicer (HEAD plugin): PUT /datastore/?image=<node name>, then /infer?image=<node name> with no file
    with open(image, "rb") as f:
        r = httpx.put(f"{server.url}/datastore/", params={"image": "MR Head: 1"},
                      files={"file": (f"/tmp/slicer/{image.name}", f)}, data={"params": '{"client_id": "user-xyz"}'})
    assert r.status_code == 200 and r.json() == {"image": "MR Head: 1"}
    status, headers, data = _monai_infer(server.url, "Tiny", "MR Head: 1",
                                         {"result_extension": ".nrrd", "result_dtype": "uint8",
                                          "client_id": "user-xyz"}, None)
    assert status == 200, data[:300]
    _, files = _parse_multipart(headers, data)
    (name, content), = files.items()
    assert name.endswith(".nrrd")
    np.testing.assert_array_equal(_decoded(content, ".nrrd", tmp_path), expected)
    # older plugins: PUT /session/ (field "files"), GET /session/<id>, /infer?session_id=
    with open(image, "rb") as f:
        r = httpx.put(f"{server.url}/session/", files={"files": (image.name, f)}, data={"client_id": "u"})
    sid = r.json()["session_id"]
    assert httpx.get(f"{server.url}/session/{sid}").json()
    r = httpx.post(f"{server.url}/infer/Tiny", params={"image": "x", "session_id": sid, "output": "image"},
                   data={"params": "{}"}, timeout=120)
    assert r.status_code == 200
    np.testing.assert_array_equal(_decoded(r.content, ".nii.gz", tmp_path), expected)
    assert httpx.post(f"{server.url}/infer/Tiny", params={"image": "never uploaded"},
                      data={"params": "{}"}).status_code == 404


def test_monailabel_client_class_when_installed(model, server, tmp_path):
    client_module = pytest.importorskip("monailabel.client", reason="monailabel is not installed (its client is "
                                        "checked by the raw-bytes test above)")
    raw, _, ref = model
    image = _images(raw)[0]
    c = client_module.MONAILabelClient(server.url, tmpdir=str(tmp_path))
    assert "Tiny" in c.info()["models"]
    path, params = c.infer("Tiny", "", {}, file=str(image))
    assert params["label_names"]
    np.testing.assert_array_equal(read_label(Path(path))[0], read_label(ref / image.name)[0])


def _disposition_names(value: str) -> tuple[str, str]:
    """``(filename, decoded filename*)`` of a Content-Disposition value (RFC 6266 / RFC 8187)."""
    fallback = re.search(r'filename="([^"]*)"', value)
    extended = re.search(r"filename\*=UTF-8''([^;\s]+)", value)
    assert fallback and extended, value
    return fallback.group(1), unquote(extended.group(1), errors="strict")


def test_file_names_beyond_latin_1_come_back_in_rfc_6266_dispositions(model, server, tmp_path):
    raw, _, ref = model
    image = _images(raw)[0]
    expected = read_label(ref / image.name)[0]
    name = "海马_😀.nii.gz"  # CJK and an emoji, as a browser or Slicer sends them (UTF-8 in the form)
    r = httpx.post(f"{server.url}/v1/segment/Tiny", files={"file": (name, image.read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    header = r.headers["content-disposition"]
    assert header.isascii() and header.startswith("attachment;")
    fallback, decoded = _disposition_names(header)
    assert decoded == "海马_😀_seg.nii.gz" and fallback.isascii() and fallback.endswith("_seg.nii.gz")
    np.testing.assert_array_equal(_decoded(r.content, ".nii.gz", tmp_path), expected)
    r = httpx.post(f"{server.url}/infer/Tiny", params={"output": "image"}, data={"params": "{}"},
                   files={"file": (f"C:\\Users\\ü\\{name}", image.read_bytes())}, timeout=120)
    assert r.status_code == 200, r.text
    assert _disposition_names(r.headers["content-disposition"])[1] == "海马_😀_seg.nii.gz"
    # MONAI Label's multipart answer: the label file part names it the same way
    r = httpx.put(f"{server.url}/datastore/", files={"file": (name, image.read_bytes())})
    assert r.status_code == 200 and r.json() == {"image": "海马_😀"}
    status, headers, data = _monai_infer(server.url, "Tiny", "海马_😀", {"result_extension": ".nrrd"}, None)
    assert status == 200, data[:300]
    head = data.split(b"\r\n\r\n", 2)[1].decode("ascii")  # params, then the headers of the file part: ASCII
    fallback, decoded = _disposition_names(head)
    assert decoded == "海马_😀_seg.nrrd" and fallback.isascii()
    _, files = _parse_multipart(headers, data)
    (got, content), = files.items()
    assert got.endswith("_seg.nrrd")
    np.testing.assert_array_equal(_decoded(content, ".nrrd", tmp_path), expected)


def _bad_uploads(raw: Path, tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    image = _images(raw)[0]
    data = image.read_bytes()
    arr, geometry = read_image([image])
    two = tmp_path / "two_channels.nii.gz"
    write_image(np.stack([arr[0], arr[0]]), geometry, two)
    nan = tmp_path / "nan.nii.gz"
    with_nan = arr[0].copy()
    with_nan[0, 0, 0] = np.nan
    write_image(with_nan, geometry, nan)
    return {"truncated": ("scan.nii.gz", data[: len(data) // 2]),
            "not an image": ("notes.txt", b"hello, this is not an image"),
            "gzip of text": ("scan.nii.gz", gzip.compress(b"not a nifti file" * 100)),
            "two channels": ("two.nii.gz", two.read_bytes()),
            "nan": ("nan.nii.gz", nan.read_bytes()),
            "empty": ("empty.nii.gz", b"")}


def test_bad_uploads_are_4xx_with_one_line_and_the_server_keeps_serving(model, server, tmp_path):
    raw, _, ref = model
    for what, (name, data) in _bad_uploads(raw, tmp_path).items():
        r = httpx.post(f"{server.url}/v1/segment/Tiny", files={"file": (name, data)}, timeout=60)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and detail, (what, detail)
        assert "autoseg-serve" not in detail, detail  # names the upload, not the server's temporary file
    assert httpx.post(f"{server.url}/v1/segment/Nope", files={"file": ("a.nii.gz", b"x")}).status_code == 404
    assert httpx.post(f"{server.url}/infer/Tiny", data={"params": "[1, 2"},
                      files={"file": ("a.nii.gz", b"x")}).status_code == 400
    image = _images(raw)[0]
    r = httpx.post(f"{server.url}/v1/segment/Tiny", files={"file": (image.name, image.read_bytes())}, timeout=120)
    assert r.status_code == 200
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_token_size_limit_and_graceful_shutdown(model, tmp_path):
    raw, ws, ref = model
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    s = Server(ws, "Tiny", "--token-file", str(token), "--max-upload-mb", "50")
    try:
        image = _images(raw)[0]
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # liveness stays open
        assert httpx.get(f"{s.url}/info/").status_code == 401
        assert httpx.get(f"{s.url}/info/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{s.url}/info/", headers=auth).status_code == 200
        big = httpx.post(f"{s.url}/v1/segment/Tiny", headers=auth,
                         files={"file": ("big.nii.gz", b"\0" * 51_000_000)}, timeout=60)
        assert big.status_code == 413
        # a larger image keeps the model busy for seconds (the check below takes milliseconds) so that the server
        # is stopped in the middle of it; its reference is what `autoseg predict` writes for it
        arr, geometry = read_image([image])
        (tmp_path / "large").mkdir()
        large = tmp_path / "large" / image.name
        write_image(np.tile(arr[0], (2, 1, 1)), geometry, large)
        assert main(["predict", "Tiny", "-w", str(ws), "-i", str(large.parent), "-o", str(tmp_path / "ref")]) == 0
        result = {}

        def request():
            result["r"] = httpx.post(f"{s.url}/v1/segment/Tiny", headers=auth,
                                     files={"file": (large.name, large.read_bytes())}, timeout=300)

        t = threading.Thread(target=request)
        t.start()
        answered = '"POST /v1/segment/Tiny HTTP/1.1" 200'  # uvicorn's access log line, written as it answers
        deadline = time.monotonic() + 120
        while httpx.get(f"{s.url}/healthz").json()["load"]["Tiny"]["running"] != 1:  # the server says it runs
            assert time.monotonic() < deadline and t.is_alive() and answered not in s.output()
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGTERM)
        t.join(300)
        assert result["r"].status_code == 200  # the request in flight was finished ...
        seg = _decoded(result["r"].content, ".nii.gz", tmp_path)
        np.testing.assert_array_equal(seg, read_label(tmp_path / "ref" / image.name)[0])  # ... correctly
        # uvicorn exits by re-raising the signal it handled once the requests in flight are done
        assert s.proc.wait(60) in (0, -signal.SIGTERM)
        log = s.output()
        assert "Finished server process" in log
        # it was answered after the server took the signal: it was in flight then, not done before
        assert log.count(answered) == 1 and log.index("Shutting down") < log.index(answered), log
    finally:
        s.stop()
    spooled = re.search(r"uploads are spooled in (\S+)", s.output_after_stop)
    assert spooled and not Path(spooled.group(1)).exists()  # temporary files removed at shutdown
