"""Finding DICOM image series: which files of a folder are DICOM, which hold images, and how they group.

Hospitals store images as DICOM: one file per slice, named by the archive (``IM0001``, a UID, anything), several
series mixed in one folder, together with reports (SR), presentation states (PR) and segmentations (SEG) that hold
no image. This module finds the image series in a folder from the files' headers only (no pixel data is read);
:mod:`autoseg.io.dicom` checks a series' geometry and reads its voxels. A file whose header is truncated or corrupt
is refused with one line naming it.

pydicom is an optional dependency (``pip install 'autoseg[dicom]'``), imported only when a function needs it;
:func:`is_dicom_folder` works without it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.errors import AutosegError, require_extra

#: Modalities of objects that hold no image to segment (reports, presentation states, RT objects, SEG ...)
_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "KO",
                                   "REG", "DOC", "FID", "PLAN", "RWV", "AU", "ECG", "HD"})
#: SOP classes (and their sub-classes) that are not images: SR, presentation states, raw data / registration /
#: SEG, RT, encapsulated documents, DICOMDIR, waveforms, MR spectroscopy
_NON_IMAGE_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88", "1.2.840.10008.5.1.4.1.1.11", "1.2.840.10008.5.1.4.1.1.66",
                          "1.2.840.10008.5.1.4.1.1.481", "1.2.840.10008.5.1.4.1.1.104", "1.2.840.10008.1.3.10",
                          "1.2.840.10008.5.1.4.1.1.9", "1.2.840.10008.5.1.4.1.1.4.2")


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder, from the headers of its files.

    Attributes
    ----------
    uid
        SeriesInstanceUID.
    description
        SeriesDescription ('' when absent).
    modality
        Modality (CT, MR, ...).
    files
        The series' files, in the order they were found (not the slice order).
    folder
        The folder that was searched (the common parent of ``files`` when given as a list); named in errors.
    number
        SeriesNumber, or None when absent.
    """

    uid: str
    description: str
    modality: str
    files: tuple[Path, ...]
    folder: Path
    number: int | None = None

    @property
    def n_instances(self) -> int:
        """Number of DICOM instances (files) in the series."""
        return len(self.files)

    def name(self) -> str:
        """How error messages name the series: ``folder: DICOM series UID ('description')``."""
        described = f" ('{self.description}')" if self.description else ""
        return f"{self.folder}: DICOM series {self.uid}{described}"

    def summary(self) -> str:
        """One line for listings: ``UID ('description', CT, 120 instances)``."""
        parts = [f"'{self.description}'"] if self.description else []
        return f"{self.uid} ({', '.join(parts + [self.modality or '?', f'{self.n_instances} instances'])})"


def _pydicom():
    return require_extra("pydicom", "dicom", "reading DICOM")


def error_reason(err: BaseException) -> str:
    """An exception as a short single line (pydicom's messages span lines)."""
    text = " ".join(str(err).split()).split(" - ")[0]  # pydicom appends guesses after " - "
    return (text or type(err).__name__)[:200]


def files_under(folder: Path) -> list[Path]:
    """Every regular file below ``folder``, in a stable order (hidden files and folders skipped)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return found


def sniff(path: Path) -> str | None:
    """'preamble' for a DICOM file, 'bare' for what may be one without its 128-byte preamble, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return "preamble"
    # old exports drop the preamble: the data then starts with a group 0002 or 0008 element, little endian
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0:
        return "bare"
    return None


def is_dicom_folder(path: Path | str) -> bool:
    """Whether ``path`` is a directory holding at least one DICOM file (at any depth).

    Cheap: reads at most 132 bytes per file and stops at the first DICOM file; does not need pydicom.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(sniff(Path(root) / n) for n in names if not n.startswith(".")):
            return True
    return False


@dataclass(frozen=True)
class DicomHeader:
    """A file's header and whether data follows it (pixel data: reading stopped before the end of the file).

    Attributes
    ----------
    ds
        The pydicom data set, without pixel data.
    has_pixels
        Whether the file goes on after the header (its pixel data).
    """

    ds: object
    has_pixels: bool


def read_header(path: Path, kind: str = "preamble") -> DicomHeader | None:
    """The file's header (no pixel data); None for a 'bare' candidate that is not DICOM after all.

    Raises
    ------
    AutosegError
        The file is truncated or corrupt (one line naming it); pydicom is not installed.
    """
    pydicom = _pydicom()
    try:
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            size = os.fstat(f.fileno()).st_size
            # pydicom ends quietly at the end of a truncated file; it stops early only at the pixel data
            header = DicomHeader(ds, f.tell() < size)
    except Exception as e:  # pydicom raises many types (EOFError, ValueError, struct.error ...) for damaged files
        if kind == "bare":
            return None
        raise AutosegError(f"{path}: cannot be read as DICOM, truncated or corrupt file ({error_reason(e)})") from None
    if not header.has_pixels and _last_element_cut(ds, size):
        if kind == "bare":
            return None
        raise AutosegError(f"{path}: truncated or corrupt DICOM file (its last element ends past the end of the "
                           f"file)")
    try:
        for _ in ds:  # converts every raw element: a damaged value fails here, where the file can be named
            pass
    except Exception as e:  # as above
        if kind == "bare":
            return None
        raise AutosegError(f"{path}: cannot be read as DICOM, truncated or corrupt file ({error_reason(e)})") from None
    if kind == "bare" and not _sop_class(ds):
        return None  # bytes that merely looked like a DICOM data set
    return header


def _last_element_cut(ds, size: int) -> bool:
    """Whether the file ends inside the value of its last element (pydicom reads the short value as it is)."""
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(tags[-1])  # still the raw element: it knows where its value starts and how long it is
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    return tell is not None and length is not None and length != 0xFFFFFFFF and tell + length > size


def _sop_class(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else "") or "")


def _is_image(header: DicomHeader, path: Path) -> bool:
    """Whether the object is an image; an image whose header ends before its pixel data is refused as truncated."""
    ds = header.ds
    sop = _sop_class(ds)
    if not sop:
        raise AutosegError(f"{path}: truncated or corrupt DICOM file (no SOP class)")
    if any(sop == c or sop.startswith(c + ".") for c in _NON_IMAGE_SOP_CLASSES):
        return False
    if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
        return False
    from pydicom.uid import UID

    image_class = "Image Storage" in UID(sop).name
    complete = header.has_pixels and "Rows" in ds and "Columns" in ds
    if (image_class or "Rows" in ds) and not complete:
        raise AutosegError(f"{path}: truncated or corrupt DICOM file (an image whose header ends before its "
                           f"pixel data)")
    return complete


def _group(files: Sequence[Path], folder: Path) -> tuple[list[SeriesInfo], Counter]:
    """Image series among ``files`` (sorted by number, description, UID), and a count of the non-image objects by
    modality."""
    first: dict[str, object] = {}  # SeriesInstanceUID -> the header of its first file
    members: dict[str, list[Path]] = {}
    others: Counter = Counter()
    for path in files:
        kind = sniff(path)
        header = read_header(path, kind) if kind else None
        if header is None:
            continue
        ds = header.ds
        if not _is_image(header, path):
            others[str(ds.get("Modality", "")) or "non-image"] += 1
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            raise AutosegError(f"{path}: DICOM image without a SeriesInstanceUID")
        first.setdefault(uid, ds)
        members.setdefault(uid, []).append(path)
    series = [_info(uid, first[uid], paths, folder) for uid, paths in members.items()]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.description, s.uid)), others


def _info(uid: str, ds, files: list[Path], folder: Path) -> SeriesInfo:
    number = ds.get("SeriesNumber")
    return SeriesInfo(uid=uid, description=str(ds.get("SeriesDescription", "")).strip(),
                      modality=str(ds.get("Modality", "")), files=tuple(files), folder=folder,
                      number=int(number) if number not in (None, "") else None)


def _no_image_error(folder: Path, others: Counter) -> AutosegError:
    if not others:
        return AutosegError(f"{folder}: no DICOM files found")
    kinds = ", ".join(f"{n} {m}" for m, n in sorted(others.items()))
    return AutosegError(f"{folder}: only non-image DICOM objects ({kinds}), no image series to read")


def find_series(folder: Path | str) -> list[SeriesInfo]:
    """The DICOM image series in a folder and its subfolders, read from the headers only.

    Files that are not DICOM are ignored; non-image objects (SR, PR, SEG, RTSTRUCT, ...) are skipped.

    Parameters
    ----------
    folder
        Folder to search recursively.

    Returns
    -------
    list of SeriesInfo
        One per SeriesInstanceUID, sorted by series number, then description.

    Raises
    ------
    AutosegError
        The folder does not exist, holds no DICOM file, or only non-image objects; a DICOM file is truncated or
        corrupt (one line naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AutosegError(f"{folder}: folder not found")
    series, others = _group(files_under(folder), folder)
    if not series:
        raise _no_image_error(folder, others)
    return series


def select_series(folder: Path | str, series_uid: str | None = None) -> SeriesInfo:
    """The one image series of a folder, or the one with ``series_uid``.

    Raises
    ------
    AutosegError
        As :func:`find_series`; the folder holds several series and ``series_uid`` is None (the line lists them
        and says how to choose), or none with ``series_uid``.
    """
    series = find_series(folder)
    listing = "; ".join(s.summary() for s in series)
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            raise AutosegError(f"{folder}: no DICOM series {series_uid}, the folder holds: {listing}")
        return chosen[0]
    if len(series) > 1:
        raise AutosegError(f"{folder}: {len(series)} DICOM image series, expected one: {listing}; "
                           "put each series in a folder of its own")
    return series[0]


def as_series(series: SeriesInfo | Sequence[Path | str]) -> SeriesInfo:
    """A series as given (:class:`SeriesInfo`), or the one series that its files (any order) hold.

    Raises
    ------
    AutosegError
        A file is missing or unreadable, or the files hold no image series or several.
    """
    if isinstance(series, SeriesInfo):
        return series
    files = [Path(f) for f in series]
    if not files:
        raise ValueError("no DICOM files given")
    for f in files:
        if not f.is_file():
            raise AutosegError(f"{f}: file not found")
    folder = Path(os.path.commonpath([str(f.parent) for f in files]))
    found, others = _group(files, folder)
    if not found:
        raise _no_image_error(folder, others)
    if len(found) > 1:
        raise AutosegError(f"{folder}: the files given hold {len(found)} DICOM image series, expected one: "
                           + "; ".join(s.summary() for s in found))
    return found[0]
