"""A zip of one DICOM series uploaded to ``/infer`` (unpacked safely, within the upload limit) and the MONAI Label
datastore listing without a PACS, in-process around a stand-in model (the DICOMweb datastore against a real
Orthanc is tests/integration/test_dicomweb_server.py)."""

import io
import stat
import zipfile

import pytest

pytest.importorskip("httpx", reason="the [test] extra (httpx) is not installed")
testclient = pytest.importorskip("fastapi.testclient", reason="the [serve] extra is not installed")

from autoseg.errors import AutosegError  # noqa: E402
from autoseg.server import ServeOptions, create_app  # noqa: E402
from autoseg.server.archive import is_zip  # noqa: E402


class SeriesEcho:
    """Looks like a ServedModel: given a folder, the "label map" lists the files in it; a file named ``bad``
    makes it refuse the series as the real reader refuses one, naming the folder."""

    name, configuration, description, dims, last_seconds = "Echo", "3d_fullres", "stand-in", 3, 0.25
    label_names = ("liver",)

    def __init__(self):
        self.folders = []

    def segment(self, image, out, source_values=True):
        assert image.is_dir()
        self.folders.append(image)
        names = sorted(str(p.relative_to(image)) for p in image.rglob("*") if p.is_file())
        if "bad" in [n.rsplit("/", 1)[-1] for n in names]:
            raise AutosegError(f"{image}: DICOM series 1.2.3: missing slices: a gap of 5.000 mm\nsecond line")
        out.write_bytes("\n".join(names).encode())


@pytest.fixture
def client():
    model = SeriesEcho()
    with testclient.TestClient(create_app([model], ServeOptions(max_upload_mb=0.01))) as c:
        c.model = model
        c.spool = c.app.state.autoseg.folder
        yield c


def _zip(members: dict, links=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _infer(client, data, filename="series.zip"):
    return client.post("/infer/Echo", params={"output": "image"}, files={"file": (filename, data)})


def _spool_is_clean(client):
    return sorted(p.name for p in client.spool.iterdir()) == ["store"]


def test_a_zip_of_a_series_is_unpacked_with_its_folders_and_removed_after(client):
    r = _infer(client, _zip({"export/CT/IM0001": b"a", "export/CT/IM0002": b"b", "export/": b""}),
               "C:\\exports\\CT_series.zip")
    assert r.status_code == 200, r.text
    assert r.content == b"export/CT/IM0001\nexport/CT/IM0002"
    assert r.headers["content-disposition"] == 'attachment; filename="CT_series_seg.nii.gz"'
    assert _spool_is_clean(client) and not client.model.folders[-1].exists()
    r = _infer(client, _zip({"IM1": b"a"}), "blob")  # no ending: sniffed by its first bytes
    assert r.status_code == 200 and r.content == b"IM1"


@pytest.mark.parametrize("members,links,expected", [
    ({"../evil": b"x"}, (), "unsafe path in the zip (../evil)"),
    ({"ok/../../evil": b"x"}, (), "unsafe path in the zip"),
    ({"/etc/evil": b"x"}, (), "unsafe path in the zip (/etc/evil)"),
    ({"C:/evil": b"x"}, (), "unsafe path in the zip"),
    ({"IM1": b"a"}, ("link",), "the zip holds a link (link)"),
])
def test_unsafe_zips_are_refused_with_one_line(client, members, links, expected):
    r = _infer(client, _zip(members, links))
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("series.zip: ") and expected in r.json()["detail"]
    assert not client.model.folders and _spool_is_clean(client)
    assert not (client.spool.parent / "evil").exists()


def test_a_zip_unpacking_past_the_upload_limit_is_413(client):
    bomb = _zip({"IM1": b"\0" * 30_000})  # 10 kB limit: the zip is small, what it unpacks to is not
    assert len(bomb) < 10_000
    r = _infer(client, bomb)
    assert r.status_code == 413 and r.json()["detail"] == "series.zip: the zip unpacks to more than the 0.01 MB " \
                                                          "upload limit"
    assert not client.model.folders and _spool_is_clean(client)


def test_a_damaged_zip_or_refused_series_is_400_naming_the_upload(client):
    r = _infer(client, b"PK\x03\x04" + b"\0" * 100)
    assert r.status_code == 400 and r.json()["detail"].startswith("series.zip: not a readable zip file")
    r = _infer(client, _zip({"a/bad": b"x"}))
    assert r.status_code == 400
    assert r.json()["detail"] == "series.zip: DICOM series 1.2.3: missing slices: a gap of 5.000 mm"
    assert _spool_is_clean(client)
    r = client.post("/v1/segment/Echo", files={"file": ("series.zip", _zip({"IM1": b"a"}))})
    assert r.status_code == 400 and "not a recognised image file" in r.json()["detail"]  # /infer only


def test_datastore_listing_without_a_pacs_lists_the_uploads(client):
    assert client.get("/datastore/").json() == {"total": 0, "completed": 0, "label_tags": {}}
    r = client.put("/datastore/", params={"image": "MR Head"}, files={"file": ("x.nii.gz", b"\x1f\x8b" + b"\0" * 9)})
    assert r.status_code == 200
    client.put("/session/", files={"files": ("y.nii.gz", b"\x1f\x8b" + b"\0" * 9)})  # sessions are not listed
    listing = client.get("/datastore/", params={"output": "all"}).json()
    assert listing["objects"] == {"MR Head": {"image": {"ext": ".nii.gz", "info": {"size": 11}}, "labels": {}}}
    assert client.get("/datastore", params={"output": "stats"}).json()["total"] == 1
    assert client.get("/datastore/", params={"output": "train"}).status_code == 422


def test_is_zip_doctest():
    import doctest

    import autoseg.server.archive as archive

    assert doctest.testmod(archive).failed == 0
    assert not is_zip("x.nii.gz", b"PK")
