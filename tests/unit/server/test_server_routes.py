"""Every endpoint in-process: the app built around stand-in models and called through FastAPI's TestClient (the
real-process tests, with a trained model and MONAI Label's own client, are in tests/integration/test_server.py)."""

import json
from email.parser import BytesParser
from email.policy import HTTP

import pytest

pytest.importorskip("httpx", reason="the [test] extra (httpx) is not installed")
testclient = pytest.importorskip("fastapi.testclient", reason="the [serve] extra is not installed")

from autoseg.errors import AutosegError  # noqa: E402
from autoseg.server import ServeOptions, create_app  # noqa: E402
from autoseg.server.responses import disposition, label_dict, stem  # noqa: E402

NIFTI = b"\x1f\x8b" + b"\0" * 100  # sniffed as .nii.gz; the stand-in does not decode it


class Echo:
    """Looks like a ServedModel: the "label map" is the upload reversed; an upload starting with b"bad" is refused
    as the real model refuses an image it cannot read."""

    configuration, description, dims, last_seconds = "3d_fullres", "stand-in", 3, 0.25

    def __init__(self, name="Echo", label_names=("liver", "spleen")):
        self.name, self.label_names, self.calls = name, tuple(label_names), []

    def segment(self, image, out, source_values=True):
        data = image.read_bytes()
        self.calls.append((image.name, source_values))
        if data[2:5] == b"bad":
            raise AutosegError(f"{image}: not a NIfTI image (truncated header)\nsecond line")
        out.write_bytes(data[::-1])


@pytest.fixture
def client():
    models = [Echo(), Echo("Other", ("tumour",))]
    with testclient.TestClient(create_app(models, ServeOptions(max_upload_mb=0.01))) as c:
        c.models = models
        yield c


def _nifti(payload=b""):
    return NIFTI + payload


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["models"] == ["Echo", "Other"]
    assert body["load"]["Echo"] == {"running": 0, "waiting": 0, "tickets": 0}


def test_v1_segment(client):
    r = client.post("/v1/segment/Echo", files={"file": ("case_1.nii.gz", _nifti(b"x"))})
    assert r.status_code == 200 and r.content == _nifti(b"x")[::-1]
    assert r.headers["content-disposition"] == 'attachment; filename="case_1_seg.nii.gz"'
    assert client.models[0].calls[-1][1] is True  # the dataset's own label values
    assert client.post("/v1/segment/Nope", files={"file": ("a.nii.gz", NIFTI)}).status_code == 404
    r = client.post("/v1/segment/Echo", files={"file": ("a.txt", b"hello")})
    assert r.status_code == 400 and "not a recognised image file" in r.json()["detail"]
    r = client.post("/v1/segment/Echo", files={"file": ("mine.nii.gz", NIFTI[:2] + b"bad" + NIFTI[5:])})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail == "mine.nii.gz: not a NIfTI image (truncated header)"  # one line, the client's name
    assert client.get("/healthz").json()["load"]["Echo"]["running"] == 0  # the model is free again


def test_info(client):
    info = client.get("/info/").json()
    assert info["labels"] == ["liver", "spleen", "tumour"]
    assert info["models"]["Echo"]["labels"] == {"liver": 1, "spleen": 2}
    assert info["models"]["Other"]["dimension"] == 3 and info["trainers"] == {}
    assert client.get("/info").status_code == 200 and info["datastore"]["total"] == 0


def test_datastore_then_infer_by_image_id(client):
    r = client.put("/datastore/?image=img7", files={"file": ("img7.nii.gz", _nifti(b"7"))},
                   data={"params": "{}"})
    assert r.status_code == 200 and r.json() == {"image": "img7"}
    assert client.get("/info/").json()["datastore"]["total"] == 1
    r = client.post("/infer/Echo?image=img7&output=image")
    assert r.status_code == 200 and r.content == _nifti(b"7")[::-1]
    assert client.models[0].calls[-1][1] is False  # MONAI Label's values 1..N
    assert client.post("/infer/Echo?image=img7&output=image").status_code == 200  # kept for another call
    assert client.post("/infer/Echo?image=missing").status_code == 404


def test_sessions(client):
    r = client.put("/session/", files={"files": ("s.nii.gz", _nifti(b"s"))}, data={"params": "{}"})
    assert r.status_code == 200
    sid = r.json()["session_id"]
    assert client.get(f"/session/{sid}").json()["size"] == len(_nifti(b"s"))
    assert client.post(f"/infer/Echo?session_id={sid}&output=json").json()["label_names"] == {"liver": 1,
                                                                                               "spleen": 2}
    assert client.delete(f"/session/{sid}").status_code == 200
    assert client.get(f"/session/{sid}").status_code == 404
    assert client.delete(f"/session/{sid}").status_code == 404


def test_infer_inline_is_monai_labels_multipart_form(client):
    r = client.post("/infer/Echo", files={"file": ("/home/u/img.nrrd", b"NRRD0004\n" + b"\0" * 20)},
                    data={"params": json.dumps({"result_extension": ".nrrd"})})
    assert r.status_code == 200
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {r.headers['content-type']}\r\n\r\n".encode() + r.content)
    params, image = list(message.iter_parts())
    assert json.loads(params.get_content()) == {"label_names": {"liver": 1, "spleen": 2},
                                                "latencies": {"infer": 0.25}, "model": "Echo"}
    assert image.get_filename() == "img_seg.nrrd"
    assert image.get_content() == (b"NRRD0004\n" + b"\0" * 20)[::-1]


@pytest.mark.parametrize("query, params, status, fragment", [
    ("output=xml", "{}", 422, "this server answers image, json or all"),
    ("", json.dumps({"result_extension": ".exe"}), 400, "result_extension '.exe'"),
    ("", "[1, 2]", 400, "params: not a JSON object"),
    ("", "{not json", 400, "params: not a JSON object"),
])
def test_infer_refuses_bad_requests_in_one_line(client, query, params, status, fragment):
    r = client.post(f"/infer/Echo?{query}", files={"file": ("a.nii.gz", NIFTI)}, data={"params": params})
    assert r.status_code == status and fragment in r.json()["detail"]


def test_a_body_over_the_limit_is_413(client):
    r = client.post("/v1/segment/Echo", files={"file": ("big.nii.gz", _nifti(b"\0" * 20_000))})
    assert r.status_code == 413 and "0.01 MB limit" in r.json()["detail"]
    assert client.models[0].calls == []


def test_a_token_guards_every_endpoint_but_healthz():
    with testclient.TestClient(create_app([Echo()], ServeOptions(token="s3cret"))) as c:
        assert c.get("/healthz").status_code == 200
        for method, path in (("get", "/info/"), ("post", "/v1/segment/Echo"), ("post", "/infer/Echo"),
                             ("put", "/datastore/"), ("put", "/session/"), ("get", "/session/x"),
                             ("delete", "/session/x")):
            r = getattr(c, method)(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path)
        ok = c.get("/info/", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/info/", headers={"Authorization": "Bearer s3cre"}).status_code == 401


def test_absent_families_are_404():
    with testclient.TestClient(create_app([Echo()])) as c:
        for path in ("/auth/", "/train/", "/activelearning/random", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 404


def test_response_helpers():
    assert label_dict(Echo()) == {"liver": 1, "spleen": 2}
    assert stem("C:\\data\\case_01.nii.gz") == "case_01" and stem(None) == ""
    assert disposition("attachment", "a b.nrrd").startswith('attachment; filename="a_b.nrrd"; filename*=')
