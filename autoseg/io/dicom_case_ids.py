"""Case ids of the DICOM image series below a folder: every series is one case, named by its folder.

``autoseg predict`` (DICOM input) and ``autoseg convert`` (a DICOM folder) name cases alike, so a converted
dataset's case and the prediction for the same series share their id. Ids are stable (they depend on the folder
layout and the series headers, not on the order files are found), readable, unique and safe as file names:

* the path of the series' folder (the common parent of its files) relative to the root folder, its parts joined
  with ``_`` (``study/CT_venous`` -> ``study_CT_venous``); a series directly in the root folder takes the root
  folder's own name;
* when several series share a folder, each gets ``_s<SeriesNumber>_<SeriesDescription>`` appended
  (``study_s3_venous``), the parts it has;
* ids still equal after that (the same number and description) get the first 8 hex digits of the SHA-1 of the
  SeriesInstanceUID appended;
* characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from autoseg.io.dicom_series import SeriesInfo, find_series

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def series_folder(series: SeriesInfo) -> Path:
    """The common parent folder of a series' files."""
    return Path(os.path.commonpath([str(f.parent) for f in series.files]))


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.")


def _folder_id(folder: Path, root: Path) -> str:
    rel = folder.relative_to(root) if folder != root else Path()
    parts = [_safe(p) for p in rel.parts] or [_safe(root.resolve().name)]
    return "_".join(p for p in parts if p) or "series"


def _series_suffix(series: SeriesInfo) -> str:
    parts = ([f"s{series.number}"] if series.number is not None else []) + [_safe(series.description)]
    return "_".join(p for p in parts if p)


def _uid_suffix(series: SeriesInfo) -> str:
    return hashlib.sha1(series.uid.encode()).hexdigest()[:8]


def series_case_ids(series: Sequence[SeriesInfo], root: Path) -> list[str]:
    """The case id of each series found below ``root`` (see the module docstring), in the same order."""
    ids = [_folder_id(series_folder(s), Path(root)) for s in series]
    shared = Counter(ids)
    ids = [i if shared[i] == 1 else "_".join(p for p in (i, _series_suffix(s)) if p) for i, s in zip(ids, series)]
    still = Counter(ids)
    return [i if still[i] == 1 else f"{i}_{_uid_suffix(s)}" for i, s in zip(ids, series)]


def find_series_cases(root: Path) -> list[tuple[str, SeriesInfo]]:
    """``(case id, series)`` of every image series below ``root``, sorted by case id.

    Each series names its own folder in error messages (not ``root``), so a line says where to look.

    Raises
    ------
    AutosegError
        As :func:`autoseg.io.dicom_series.find_series`: no image series, or a DICOM file whose header cannot be read
        (this stops the whole search: the file's series is unknown).
    """
    root = Path(root)
    series = [replace(s, folder=series_folder(s)) for s in find_series(root)]
    return sorted(zip(series_case_ids(series, root), series), key=lambda pair: pair[0])
