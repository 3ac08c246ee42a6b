"""Region-of-interest masks: where a case's image counts (DeepMedic's ROI masks, DRIVE's field of view).

A mask is a single-channel file on its image's grid, nonzero inside. Outside it training ignores the labels,
prediction writes background (:func:`apply_roi`) and evaluation does not look. Masks are matched to cases by
name, like labels: ``<case><ending>`` in a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.io import natural
from autoseg.io.verify import load_and_check_roi
from autoseg.schema.dataset import DatasetSpec

#: Image endings a mask (or a reference) may have.
KNOWN_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", *natural.ENDINGS)


def find_rois(roi_dir: Path, case_ids: Sequence[str], ending: str) -> dict[str, Path]:
    """The mask of every case: ``roi_dir/<case><ending>``, or the same name with another image ending
    (a ``.gif`` mask beside ``.tif`` images).

    Raises
    ------
    AutosegError
        The folder is missing, or cases have no mask (one line each).
    """
    roi_dir = Path(roi_dir)
    if not roi_dir.is_dir():
        raise AutosegError(f"{roi_dir}: region-of-interest folder not found")
    names = {p.name: p for p in roi_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    found, missing = {}, []
    for cid in case_ids:
        hit = next((names[cid + e] for e in (ending, *KNOWN_ENDINGS) if cid + e in names), None)
        if hit is None:
            missing.append(f"{roi_dir / (cid + ending)}: region-of-interest mask of case {cid!r} not found")
        else:
            found[cid] = hit
    if missing:
        raise AutosegError(*missing)
    return found


def spec_rois(spec: DatasetSpec) -> dict[str, Path]:
    """Case id -> mask file of the dataset's cases that have one (training and test)."""
    raw = Path(spec.raw_dir)
    return {c.case_id: raw / c.roi for c in spec.training + spec.test if c.roi is not None}


def read_roi(path: Path, image_file: Path) -> np.ndarray:
    """A case's mask as ``(z, y, x)`` bool after checking it against its image file.

    Raises
    ------
    AutosegError
        The mask cannot be read, is on another grid, multi-channel or empty.
    """
    roi, problems = load_and_check_roi(Path(path), Path(image_file))
    if problems:
        raise AutosegError(*problems)
    return roi


def apply_roi(segmentation: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    """Background (0) outside the mask; ``segmentation`` unchanged (not copied) without one.

    Examples
    --------
    >>> apply_roi(np.array([[1, 2], [2, 1]]), np.array([[True, False], [True, True]])).tolist()
    [[1, 0], [2, 1]]
    """
    if roi is None:
        return segmentation
    if roi.shape != segmentation.shape[-roi.ndim:]:
        raise ValueError(f"mask of shape {roi.shape} for a segmentation of shape {segmentation.shape}")
    return np.where(roi, segmentation, 0).astype(segmentation.dtype, copy=False)


def apply_roi_to_probabilities(probabilities: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    """``(K, z, y, x)`` class probabilities: certain background outside the mask (in place)."""
    if roi is not None:
        outside = ~roi
        probabilities[:, outside] = 0
        probabilities[0, outside] = 1
    return probabilities


def masks_by_case(rois: Mapping[str, Path] | Path | None, case_ids: Sequence[str], ending: str
                  ) -> dict[str, Path]:
    """Normalise an ROI argument: a folder (every case needs a mask) or a case id -> file mapping (cases without
    an entry have none)."""
    if rois is None:
        return {}
    if isinstance(rois, (str, Path)):
        return find_rois(Path(rois), case_ids, ending)
    return {cid: Path(p) for cid, p in rois.items() if cid in set(case_ids)}
