"""A DICOMweb server (a PACS, Orthanc, a cloud healthcare API) as ``autoseg serve``'s datastore.

QIDO-RS lists the image series (MONAI Label's datastore lists them as images, by SeriesInstanceUID), WADO-RS
fetches one into a folder for ``/infer``, STOW-RS stores the DICOM-SEG of the result back. The HTTP client is
``dicomweb-client``'s :class:`~dicomweb_client.api.DICOMwebClient`, passed in (a test or a deployment gives its
own session, authentication, retries); :func:`connect` builds the plain one the CLI uses.

Failures are one-line :class:`DicomWebError`\\ s carrying the HTTP status the server answers with: 404 for a series
the DICOMweb server does not hold, 502 when it cannot be reached or refuses a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import AutosegError, require_extra

#: Modalities of series that hold no image to segment (our own SEG results among them): left out of the listing
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC"})
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# DICOM JSON tags of the series attributes the listing shows
_TAGS = {"study": "0020000D", "series": "0020000E", "modality": "00080060", "description": "0008103E",
         "number": "00200011", "instances": "00201209"}
_SHORT_REASONS = {"ConnectionError": "cannot connect", "ConnectTimeout": "timed out connecting",
                  "ReadTimeout": "timed out waiting for the reply", "SSLError": "TLS handshake failed"}


class DicomWebError(Exception):
    """A DICOMweb request that failed, as one line, with the HTTP status ``autoseg serve`` answers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredSeg:
    """Where a DICOM-SEG went: its study, series and SOP instance UIDs and its WADO-RS URL."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    url: str

    def as_dict(self) -> dict:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid,
                "sop_instance_uid": self.sop_instance_uid, "url": self.url}


def _value(record: dict, key: str):
    """A DICOM JSON attribute's first value, ``None`` when absent or empty."""
    values = record.get(_TAGS.get(key, key), {}).get("Value") or [None]
    return values[0]


def _reason(err: Exception) -> str:
    """A requests exception as a short single line (the status line, or the exception's first line)."""
    response = getattr(err, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    kind = type(err).__name__  # requests' own messages nest the whole urllib3 retry story
    if kind in _SHORT_REASONS:
        return _SHORT_REASONS[kind]
    text = " ".join(str(err).split())
    return (text or kind)[:160]


class DicomWebStudies:
    """A DICOMweb server's studies as a datastore.

    Parameters
    ----------
    client
        A :class:`dicomweb_client.api.DICOMwebClient` (or any object with its ``search_for_studies``,
        ``search_for_series``, ``iter_series`` and ``store_instances``).
    url
        The server's DICOMweb base URL, as messages and STOW replies name it.
    """

    def __init__(self, client, url: str):
        self.client, self.url = client, url.rstrip("/")

    def check(self) -> None:
        """Fail with one line unless the server answers a QIDO-RS query (at start-up, before models load).

        Raises
        ------
        AutosegError
            Unreachable, or not a DICOMweb server there.
        """
        try:
            self.client.search_for_studies(limit=1)
        except Exception as e:  # requests raises ConnectionError, Timeout, HTTPError, InvalidURL ...
            raise AutosegError(f"{self.url}: DICOMweb server not reachable or not answering QIDO-RS "
                               f"({_reason(e)})") from None

    def _requested(self, what: str, call, *args, **kwargs):
        """``call(*args, **kwargs)`` with a failure of the server as a 502 :class:`DicomWebError`."""
        requests = require_extra("requests", "dicom", "a DICOMweb datastore")
        try:
            return call(*args, **kwargs)
        except (requests.RequestException, ValueError) as e:  # ValueError: a reply that is not DICOM (JSON)
            raise DicomWebError(502, f"{self.url}: {what} failed ({_reason(e)})") from None

    def image_series(self) -> list[dict]:
        """The image series the server holds (QIDO-RS), as ``{study_uid, series_uid, modality, description,
        number, instances}`` records (no patient attributes: a viewer asks the PACS itself); SEG, SR and other
        non-image series are left out."""
        fields = ["StudyInstanceUID", "SeriesDescription", "NumberOfSeriesRelatedInstances"]
        found = self._requested("QIDO-RS series search", self.client.search_for_series, fields=fields) or []
        out = []
        for record in found:
            modality = str(_value(record, "modality") or "")
            if modality.upper() in NON_IMAGE_MODALITIES:
                continue
            out.append({"study_uid": _value(record, "study"), "series_uid": _value(record, "series"),
                        "modality": modality, "description": str(_value(record, "description") or ""),
                        "number": _value(record, "number"), "instances": _value(record, "instances")})
        return out

    def study_of(self, series_uid: str) -> str:
        """The StudyInstanceUID of a series (QIDO-RS); 404 :class:`DicomWebError` for a series not held."""
        if not _UID.fullmatch(series_uid or ""):
            raise DicomWebError(404, f"{self.url}: no series '{series_uid}' (not a DICOM UID)")
        found = self._requested("QIDO-RS series search", self.client.search_for_series,
                                search_filters={"SeriesInstanceUID": series_uid}, fields=["StudyInstanceUID"])
        studies = [_value(r, "study") for r in found or [] if _value(r, "series") == series_uid]
        if not studies or not studies[0]:
            raise DicomWebError(404, f"{self.url}: no series {series_uid}")
        return str(studies[0])

    def fetch(self, series_uid: str, folder: Path) -> str:
        """Write every instance of a series (WADO-RS) into ``folder``, one file each; returns its study UID.

        Raises
        ------
        DicomWebError
            404: no such series; 502: the server failed.
        """
        study = self.study_of(series_uid)
        count = self._requested("WADO-RS series retrieval", self._write_instances, study, series_uid, Path(folder))
        if not count:
            raise DicomWebError(404, f"{self.url}: series {series_uid} has no instances")
        return study

    def _write_instances(self, study: str, series_uid: str, folder: Path) -> int:
        """Stream the series' instances to files (one in memory at a time); their count."""
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for k, ds in enumerate(self.client.iter_series(study, series_uid)):
            uid = str(ds.get("SOPInstanceUID", ""))
            name = uid if _UID.fullmatch(uid) else f"instance{k:05d}"  # messages name the files: UIDs say most
            ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
            count += 1
        return count

    def store(self, seg_file: Path) -> StoredSeg:
        """Store a DICOM-SEG (STOW-RS); 502 :class:`DicomWebError` when the server refuses it."""
        pydicom = require_extra("pydicom", "dicom", "a DICOMweb datastore")
        ds = pydicom.dcmread(seg_file)
        study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        reply = self._requested("STOW-RS of the DICOM-SEG", self.client.store_instances, [ds], study)
        failed = reply.get("FailedSOPSequence") if reply is not None else None
        if failed:  # a 200/202 reply may still list the instance as refused
            raise DicomWebError(502, f"{self.url}: STOW-RS of the DICOM-SEG failed (the server refused "
                                     f"instance {sop})")
        url = f"{self.url}/studies/{study}/series/{series}/instances/{sop}"
        return StoredSeg(study, series, sop, url)


def connect(url: str, timeout: float = 30.0) -> DicomWebStudies:
    """The studies of the DICOMweb server at ``url`` with a plain ``dicomweb-client`` (checked: it answers).

    Raises
    ------
    AutosegError
        The ``dicomweb-client`` package is missing (the line names the extra), or the server does not answer.
    """
    api = require_extra("dicomweb_client.api", "dicom", "a DICOMweb datastore (--studies)")
    if not re.match(r"https?://", url):
        raise AutosegError(f"{url}: not an http(s) URL of a DICOMweb server")
    try:
        client = api.DICOMwebClient(url, timeout=timeout)
    except ValueError as e:
        raise AutosegError(f"{url}: not a DICOMweb URL ({e})") from None
    # its retries back off for half a minute on a refused connection: a client waiting on /infer is better told
    client.set_http_retry_params(retry=False)
    studies = DicomWebStudies(client, url)
    studies.check()
    return studies
