"""``autoseg serve --studies URL`` against a real PACS: Orthanc with its DICOMweb plugin, started per test on a free
localhost port (skipped only when the Orthanc binary is absent: ``apt-get install orthanc orthanc-dicomweb``).

A synthetic series is stored with STOW-RS (dicomweb-client), listed through the MONAI Label datastore, segmented
by ``/infer?image=SERIES_UID``; the DICOM-SEG that lands in Orthanc must reference the series and read back to the
label map ``/infer`` returned. The error statuses are checked in-process with FastAPI's TestClient.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the [test] extra (httpx) is not installed")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
pydicom = pytest.importorskip("pydicom", reason="the [dicom] extra is not installed")
pytest.importorskip("highdicom", reason="the [dicom] extra is not installed")
dicomweb_api = pytest.importorskip("dicomweb_client.api", reason="the [dicom] extra (dicomweb-client) is missing")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "io"))  # the synthetic series writers
import _dicom_fixtures as fx  # noqa: E402

from autoseg.io.dicom import find_series  # noqa: E402
from autoseg.io.dicom_seg import read_dicom_seg  # noqa: E402
from autoseg.io.image import read_image, read_label  # noqa: E402

ORTHANC = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                           if Path(p).is_file()), None)
pytestmark = [pytest.mark.skipif(ORTHANC is None, reason="the Orthanc binary is absent (apt-get install orthanc "
                                                         "orthanc-dicomweb)"),
              pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dicomweb_plugin() -> str:
    """The DICOMweb plugin's shared library, as the orthanc-dicomweb package installs it."""
    listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True).stdout.split()
    found = [p for p in listed if "libOrthancDicomWeb.so" in p and Path(p).is_file()]
    if not found:
        pytest.fail("Orthanc is installed without its DICOMweb plugin: apt-get install orthanc-dicomweb")
    return sorted(found, key=len)[0]


class Orthanc:
    """One Orthanc process with DICOMweb at ``self.url``, its storage under ``folder``."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        config = {"Name": "autoseg-test", "HttpPort": self.port, "DicomServerEnabled": False,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "Plugins": [_dicomweb_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w+")
        self.proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/system", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"Orthanc did not start: {self.output()}")
        self.version = httpx.get(f"http://127.0.0.1:{self.port}/system").json()["Version"]
        self.client = dicomweb_api.DICOMwebClient(self.url)
        self.client.set_http_retry_params(retry=False)  # as autoseg's own connect(): a stopped server fails at once

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def store(self, files) -> None:
        self.client.store_instances([pydicom.dcmread(f) for f in files])

    def segs(self, study_uid: str) -> list[dict]:
        return [s for s in self.client.search_for_series(study_uid) if s["00080060"]["Value"][0] == "SEG"]


@pytest.fixture
def orthanc(tmp_path):
    o = Orthanc(tmp_path / "orthanc")
    yield o
    o.stop()


def _series_like_a_case(raw: Path, folder: Path) -> list[Path]:
    """A test case of the tiny dataset as a CT series (its grid and intensities, stored as int16)."""
    image, geometry = read_image([sorted((raw / "imagesTs").glob("*.nii.gz"))[0]])
    volume = np.clip(np.round(image[0]), -32768, 32767).astype(np.int16)
    grid = fx.Grid(spacing=tuple(float(v) for v in geometry.spacing), origin=tuple(geometry.origin))
    return fx.write_series(folder, volume, grid, description="tiny case")


def _form(response) -> tuple[dict, bytes]:
    """MONAI Label's multipart ``/infer`` reply: the params, the label file's bytes."""
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
                                              + response.content)
    params, data = None, None
    for part in msg.iter_parts():
        if part.get_filename():
            data = part.get_payload(decode=True)
        else:
            params = json.loads(part.get_payload(decode=True))
    return params, data


def _label_map(data: bytes, folder: Path) -> np.ndarray:
    path = folder / "result.nii.gz"
    path.write_bytes(data)
    return read_label(path)[0]


def _stored_seg(orthanc: Orthanc, study_uid: str, folder: Path) -> Path:
    """The one SEG Orthanc holds in the study, fetched with WADO-RS into a file."""
    segs = orthanc.segs(study_uid)
    assert len(segs) == 1, segs
    series_uid = segs[0]["0020000E"]["Value"][0]
    (seg,) = orthanc.client.retrieve_series(study_uid, series_uid)
    path = folder / "stored_seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path


def test_serve_studies_lists_infers_and_stores_the_seg_in_orthanc(tiny_model, orthanc, tmp_path):
    from test_server import Server  # the real-process server of the server tests

    raw, ws = tiny_model
    files = _series_like_a_case(raw, tmp_path / "series")
    orthanc.store(files)
    ds = pydicom.dcmread(files[0])
    series_uid, study_uid = str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)

    server = Server(ws, "--studies", orthanc.url, "--no-tta")
    try:
        listing = httpx.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
        assert list(listing["objects"]) == [series_uid]
        info = listing["objects"][series_uid]["image"]["info"]
        assert info["study_uid"] == study_uid and info["modality"] == "CT" and info["instances"] == len(files)
        assert httpx.get(f"{server.url}/datastore/", timeout=30).json()["total"] == 1

        started = time.perf_counter()
        r = httpx.post(f"{server.url}/infer/Tiny", params={"image": series_uid},
                       data={"params": json.dumps({"result_extension": ".nii.gz"})}, timeout=300)
        seconds = time.perf_counter() - started
        assert r.status_code == 200, r.text
        params, data = _form(r)
        returned = _label_map(data, tmp_path)

        stored = params["dicom_seg"]
        assert stored["study_uid"] == study_uid and stored["url"].startswith(orthanc.url)
        seg_file = _stored_seg(orthanc, study_uid, tmp_path)
        seg = pydicom.dcmread(seg_file)
        assert str(seg.SOPInstanceUID) == stored["sop_instance_uid"]
        assert str(seg.SeriesInstanceUID) == stored["series_uid"]
        assert [str(i.SeriesInstanceUID) for i in seg.ReferencedSeriesSequence] == [series_uid]
        assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["liver", "spleen"]
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert "Tiny" in str(algorithm.get("AlgorithmParameters", "")) and str(algorithm.AlgorithmVersion)
        np.testing.assert_array_equal(read_dicom_seg(seg_file, find_series(tmp_path / "series")[0]), returned)
        assert returned.shape == (len(files), *ds.pixel_array.shape)

        # the same series as a zip upload: the label map is what the DICOMweb path returned
        archive = tmp_path / "series.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for f in files:
                zf.write(f, f"export/{f.name}")
        r = httpx.post(f"{server.url}/infer/Tiny", files={"file": ("series.zip", archive.read_bytes())},
                       timeout=300)
        assert r.status_code == 200, r.text
        params, data = _form(r)
        assert "dicom_seg" not in params
        np.testing.assert_array_equal(_label_map(data, tmp_path), returned)
        assert len(orthanc.segs(study_uid)) == 1  # an upload is not stored in the PACS

        spool = Path(server.output().split("uploads are spooled in ")[1].split()[0])
        assert sorted(p.name for p in spool.iterdir()) == ["store"]  # every fetched series and SEG removed
        print(f"Orthanc {orthanc.version}: /infer of a {returned.shape} series in {seconds:.2f} s, "
              f"{int((returned > 0).sum())} foreground voxels")
    finally:
        server.stop()


def test_serve_exits_2_with_one_line_when_the_dicomweb_server_is_unreachable(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    r = subprocess.run([sys.executable, "-m", "autoseg", "serve", "-w", str(tmp_path / "ws"), "--studies", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "not reachable" in lines[0] and "cannot connect" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout


class WrongStudyStow(dicomweb_api.DICOMwebClient):
    """A client whose STOW-RS names another study than the SEG's: a real refusal (Orthanc answers 409)."""

    def store_instances(self, datasets, study_instance_uid=None, additional_params=None):
        return super().store_instances(datasets, "1.2.3.4.5")


def test_errors_are_one_line_with_the_right_status(tiny_model, orthanc, tmp_path):
    from fastapi.testclient import TestClient

    from autoseg.server import create_app
    from autoseg.server.dicomweb import DicomWebStudies
    from autoseg.workflow.context import load_context
    from autoseg.workflow.serving import load_served_model

    raw, ws = tiny_model
    good = _series_like_a_case(raw, tmp_path / "good")
    bad = fx.write_series(tmp_path / "bad", fx.ct_volume(), edit=lambda k, ds: None if k == 3 else ds)
    orthanc.store(good + bad)
    good_uid, bad_uid = (str(pydicom.dcmread(f[0]).SeriesInstanceUID) for f in (good, bad))
    study_uid = str(pydicom.dcmread(good[0]).StudyInstanceUID)
    model = load_served_model(load_context(ws, "Tiny"), mirror=False)

    def infer(client, series_uid):
        return client.post("/infer/Tiny", params={"image": series_uid, "output": "json"})

    with TestClient(create_app([model], studies=DicomWebStudies(orthanc.client, orthanc.url))) as client:
        r = infer(client, "1.2.826.0.1.999")
        assert r.status_code == 404 and r.json()["detail"] == f"{orthanc.url}: no series 1.2.826.0.1.999"
        assert infer(client, "../etc/passwd").status_code == 404
        r = infer(client, bad_uid)
        detail = r.json()["detail"]
        assert r.status_code == 422 and "\n" not in detail and "missing slices" in detail
        assert detail.startswith(f"{orthanc.url}: DICOM series {bad_uid}") and "/tmp" not in detail
        ok = infer(client, good_uid)
        assert ok.status_code == 200 and ok.json()["dicom_seg"]["series_uid"]  # the server keeps serving
        r = client.post("/infer/Tiny", params={"image": good_uid, "output": "dicom_seg"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
        seg = tmp_path / "seg.dcm"
        seg.write_bytes(r.content)
        assert pydicom.dcmread(seg).Modality == "SEG" and len(orthanc.segs(study_uid)) == 2
        r = client.post("/infer/Tiny", params={"output": "dicom_seg"}, files={"file": ("a.nii.gz", b"\x1f\x8b")})
        assert r.status_code == 422 and "only for a series of the DICOMweb datastore" in r.json()["detail"]

    wrong = WrongStudyStow(orthanc.url)
    wrong.set_http_retry_params(retry=False)
    refusing = DicomWebStudies(wrong, orthanc.url)
    with TestClient(create_app([model], studies=refusing)) as client:
        r = infer(client, good_uid)
        assert r.status_code == 502, r.text
        assert r.json()["detail"] == f"{orthanc.url}: STOW-RS of the DICOM-SEG failed (HTTP 409 Conflict)"
        orthanc.stop()  # the PACS goes away while the server runs
        r = client.get("/datastore/", params={"output": "all"})
        assert r.status_code == 502 and r.json()["detail"] == \
            f"{orthanc.url}: QIDO-RS series search failed (cannot connect)"
        assert infer(client, good_uid).status_code == 502
