""":class:`autoseg.server.dicomweb.DicomWebStudies` around stand-in clients, for the replies a test Orthanc does not
give (a STOW reply listing a refused instance, a listing with SEG series, odd ids); the real exchanges with Orthanc
are in tests/integration/test_dicomweb_server.py."""

import pytest

pydicom = pytest.importorskip("pydicom", reason="the [dicom] extra is not installed")
requests = pytest.importorskip("requests", reason="the [dicom] extra (dicomweb-client, requests) is not installed")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from autoseg.errors import AutosegError  # noqa: E402
from autoseg.server.dicomweb import DicomWebError, DicomWebStudies  # noqa: E402

URL = "http://pacs.example/dicom-web"


def _record(series, study, modality):
    return {"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [series]},
            "00080060": {"vr": "CS", "Value": [modality]}, "00201209": {"vr": "IS", "Value": [3]}}


class StandIn:
    """A DICOMweb client's surface: two image series and a SEG; STOW answers ``stow_reply``; ``down`` refuses."""

    def __init__(self, stow_reply=None, down=False):
        self.stow_reply, self.down = stow_reply, down
        self.records = [_record("1.2.1", "1.2", "CT"), _record("1.2.2", "1.2", "SEG"), _record("1.2.3", "1.2", "MR")]

    def _refuse(self):
        if self.down:
            raise requests.ConnectionError("HTTPConnectionPool(host='pacs.example', port=80): Max retries exceeded")

    def search_for_studies(self, limit=None):
        self._refuse()
        return []

    def search_for_series(self, search_filters=None, fields=None):
        self._refuse()
        uid = (search_filters or {}).get("SeriesInstanceUID")
        return [r for r in self.records if uid is None or r["0020000E"]["Value"][0] == uid]

    def store_instances(self, datasets, study_instance_uid=None):
        self._refuse()
        return self.stow_reply


def _seg_file(tmp_path):
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", generate_uid(), generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def test_listing_leaves_out_non_image_series_and_finds_studies():
    studies = DicomWebStudies(StandIn(), URL + "/")
    assert [s["series_uid"] for s in studies.image_series()] == ["1.2.1", "1.2.3"]
    assert studies.image_series()[0] == {"study_uid": "1.2", "series_uid": "1.2.1", "modality": "CT",
                                         "description": "", "number": None, "instances": 3}
    assert studies.study_of("1.2.3") == "1.2"
    for odd in ("1.2.9", "", "1.2.*", "../x"):
        with pytest.raises(DicomWebError) as e:
            studies.study_of(odd)
        assert e.value.status == 404 and str(e.value).startswith(f"{URL}: no series")


def test_stow_replies_listing_a_refused_instance_are_502(tmp_path):
    path, ds = _seg_file(tmp_path)
    refused = Dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID, item.FailureReason = ds.SOPInstanceUID, 0xA700
    refused.FailedSOPSequence = Sequence([item])
    with pytest.raises(DicomWebError) as e:
        DicomWebStudies(StandIn(stow_reply=refused), URL).store(path)
    assert e.value.status == 502
    assert str(e.value) == f"{URL}: STOW-RS of the DICOM-SEG failed (the server refused instance {ds.SOPInstanceUID})"
    accepted = Dataset()
    accepted.FailedSOPSequence = Sequence([])  # Orthanc sends it empty
    stored = DicomWebStudies(StandIn(stow_reply=accepted), URL).store(path)
    assert stored.as_dict() == {"study_uid": "1.2", "series_uid": ds.SeriesInstanceUID,
                                "sop_instance_uid": ds.SOPInstanceUID,
                                "url": f"{URL}/studies/1.2/series/{ds.SeriesInstanceUID}/instances/"
                                       f"{ds.SOPInstanceUID}"}


def test_a_server_that_is_down_is_one_short_line():
    studies = DicomWebStudies(StandIn(down=True), URL)
    with pytest.raises(AutosegError) as e:
        studies.check()
    assert str(e.value) == f"{URL}: DICOMweb server not reachable or not answering QIDO-RS (cannot connect)"
    with pytest.raises(DicomWebError) as e:
        studies.image_series()
    assert e.value.status == 502 and str(e.value) == f"{URL}: QIDO-RS series search failed (cannot connect)"


def test_connect_refuses_what_is_not_an_http_url():
    pytest.importorskip("dicomweb_client", reason="the [dicom] extra (dicomweb-client) is not installed")
    from autoseg.server.dicomweb import connect

    with pytest.raises(AutosegError, match="not an http"):
        connect("pacs.example/dicom-web")
