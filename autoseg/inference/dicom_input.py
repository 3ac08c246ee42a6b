"""DICOM input for prediction: every image series below the input folder is one case, named by its folder.

Case ids are stable (they depend on the folder layout and the series headers, not on the order files are found),
readable, unique and safe as file names:

* the path of the series' folder (the common parent of its files) relative to the input folder, its parts joined
  with ``_`` (``study/CT_venous`` -> ``study_CT_venous``); a series directly in the input folder takes the input
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

from autoseg.errors import AutosegError, option
from autoseg.io import natural
from autoseg.io.dicom_series import SeriesInfo, find_series, is_dicom_folder
from autoseg.io.roi import KNOWN_ENDINGS

NIFTI = "nifti"
DICOM_SEG = "dicom-seg"
OUTPUT_FORMATS = (NIFTI, DICOM_SEG)
"""What ``predict`` writes: label maps as images (NIfTI for DICOM input), or one DICOM-SEG per DICOM series."""
NIFTI_ENDING = ".nii.gz"
"""The label maps of DICOM input, written with the series' geometry."""
SEG_ENDING = ".dcm"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_output_format(output_format: str) -> None:
    """Refuse an unknown output format with one line."""
    if output_format not in OUTPUT_FORMATS:
        raise AutosegError(f"output_format '{output_format}': must be one of {', '.join(OUTPUT_FORMATS)}")


def _files_below(folder: Path):
    """Every file below ``folder`` (hidden files and folders skipped, as the DICOM search skips them)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / n for n in sorted(names) if not n.startswith("."))


def is_dicom_input(images_dir: Path, file_ending: str) -> bool:
    """Whether the input folder holds DICOM (at any depth) rather than image files.

    Raises
    ------
    AutosegError
        The folder holds both DICOM files and image files (of the dataset's ending or any image format): which
        would be segmented is not clear.
    """
    images_dir = Path(images_dir)
    if not is_dicom_folder(images_dir):
        return False
    endings = tuple({file_ending.lower(), *KNOWN_ENDINGS})
    other = next((p for p in _files_below(images_dir) if p.name.lower().endswith(endings)), None)
    if other is not None:
        raise AutosegError(f"{images_dir}: holds both DICOM files and other images (e.g. {other}); put the DICOM "
                           f"series and the image files in separate input folders")
    return True


def check_dicom_model(images_dir: Path, num_channels: int, file_ending: str) -> None:
    """Refuse DICOM input for a model it cannot feed: one DICOM series is one 3D channel.

    Raises
    ------
    AutosegError
        The model needs several channels, or was trained on 2D photographs (PNG, TIFF ...).
    """
    if num_channels != 1:
        raise AutosegError(f"{images_dir}: this model needs {num_channels} channels, a DICOM series gives one; "
                           f"convert the series to one image file per channel instead")
    if natural.has_natural_ending(file_ending):
        raise AutosegError(f"{images_dir}: this model segments {file_ending} images, not DICOM series (3D)")


def check_dicom_output(images_dir: Path, output_format: str, dicom: bool) -> None:
    """Refuse DICOM-SEG output for input that is not DICOM (a SEG must reference its source series)."""
    if output_format == DICOM_SEG and not dicom:
        raise AutosegError(f"{images_dir}: {option('output_format=dicom-seg')} needs DICOM input (a folder of "
                           f"DICOM series), the folder holds image files; write {NIFTI} instead")


def _series_folder(series: SeriesInfo) -> Path:
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
    ids = [_folder_id(_series_folder(s), Path(root)) for s in series]
    shared = Counter(ids)
    ids = [i if shared[i] == 1 else "_".join(p for p in (i, _series_suffix(s)) if p) for i, s in zip(ids, series)]
    still = Counter(ids)
    return [i if still[i] == 1 else f"{i}_{_uid_suffix(s)}" for i, s in zip(ids, series)]


def find_dicom_series(images_dir: Path) -> list[tuple[str, SeriesInfo]]:
    """``(case id, series)`` of every image series below ``images_dir``, sorted by case id.

    Each series names its own folder in error messages (not the input folder), so a line says where to look.

    Raises
    ------
    AutosegError
        As :func:`autoseg.io.dicom_series.find_series`: no image series, or a DICOM file whose header cannot be read
        (this stops the whole run: the file's series is unknown).
    """
    images_dir = Path(images_dir)
    series = [replace(s, folder=_series_folder(s)) for s in find_series(images_dir)]
    return sorted(zip(series_case_ids(series, images_dir), series), key=lambda pair: pair[0])
