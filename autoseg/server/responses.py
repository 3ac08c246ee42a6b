"""What the server's replies are made of: label values, result file names, Content-Disposition, multipart."""

import json
import unicodedata
from urllib.parse import quote

from autoseg.workflow.serving import UPLOAD_ENDINGS, ServedModel


def label_dict(model: ServedModel) -> dict[str, int]:
    """Label name -> consecutive value 1..N, as Slicer maps segment names."""
    return {name: k for k, name in enumerate(model.label_names, 1)}


def stem(filename: str | None) -> str:
    """The last path component of a client's file name without its image ending."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    for ending in (*UPLOAD_ENDINGS, ".zip"):
        if name.lower().endswith(ending):
            return name[:-len(ending)]
    return name


def _ascii_name(name: str) -> str:
    """An ASCII file name for a quoted ``filename=`` parameter: accents dropped, any other character ``_``."""
    kept = (c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in kept)[:100] or "result"


def disposition(kind: str, filename: str) -> str:
    """A Content-Disposition value naming ``filename`` (RFC 6266): ``filename="..."`` when the name is plain ASCII,
    else that ASCII fallback for old readers plus ``filename*=UTF-8''<percent-encoded>`` (RFC 8187) carrying the
    name itself (a header is latin-1 at most, so a CJK or emoji name cannot go in as it is).

    Examples
    --------
    >>> print(disposition("attachment", "case_001_seg.nii.gz"))
    attachment; filename="case_001_seg.nii.gz"
    >>> print(disposition("attachment", "Crâne 海马_seg.nrrd"))
    attachment; filename="Crane____seg.nrrd"; filename*=UTF-8''Cr%C3%A2ne%20%E6%B5%B7%E9%A9%AC_seg.nrrd
    """
    name = "".join("_" if unicodedata.category(c)[0] == "C" else c for c in filename)  # no control characters
    fallback = _ascii_name(name)
    if fallback == name:
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def multipart(result: dict, filename: str, data: bytes, boundary: str) -> bytes:
    """MONAI Label's ``/infer`` reply: a form with the JSON ``params``, then the label file ``image``."""
    part = disposition('form-data; name="image"', filename)
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
            f"Content-Type: application/json\r\n\r\n{json.dumps(result)}\r\n"
            f"--{boundary}\r\nContent-Disposition: {part}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
