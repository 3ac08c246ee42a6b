"""Read a raw dataset folder's ``dataset.json`` into a layout-independent :class:`DatasetSpec`.

Two layouts are accepted, detected from the keys of ``dataset.json``:

* Medical Segmentation Decathlon (``modality`` key): ``labels`` maps value -> name, cases are listed explicitly in
  ``training`` (``{"image": ..., "label": ...}``) and ``test`` (file paths). One image file per case: 3D for a single
  channel, 4D (channels last in the file) for several.
* nnU-Net v2 raw (``channel_names`` key): ``labels`` maps name -> value, cases are discovered from the files
  ``imagesTr/<case>_<cccc><file_ending>`` and ``labelsTr/<case><file_ending>`` (``imagesTs`` likewise, optional),
  or taken from nnU-Net's explicit ``dataset`` listing when present. Without ``file_ending`` but with MSD's
  ``training`` (and ``test``) lists, the cases are those listed, as in MSD (layout ``"msd"``), and the ending is
  that of the listed files (all must share one).

In both layouts an optional ``imagesTrUnlabelled/`` folder holds training images without labels, named as the
layout names its training images; semi-supervised training learns from them (see
:func:`autoseg.io.dataset_cases.cases_unlabelled`).

Only ``dataset.json`` and the folder listings are read here; the image files themselves are checked by
:mod:`autoseg.io.verify`. Every problem found is collected and raised together as one :class:`DatasetError`, one
line per problem, each naming ``dataset.json`` or the file concerned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

from autoseg.errors import DatasetError
from autoseg.io.dataset_cases import cases_msd, cases_nnunetv2, cases_unlabelled, count_case_ids, listed_ending
from autoseg.io.dataset_labels import (REGIONS_FILE, has_regions, labels_msd, labels_nnunetv2, read_regions_file,
                                       region_labels, source_label_values, split_ignore)
from autoseg.io.json_object import kind, load_object
from autoseg.schema.dataset import CaseSpec, DatasetSpec, Region

__all__ = ["read_dataset_spec", "REGIONS_FILE"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_FOLDER_PREFIX = re.compile(r"^(Task\d+|Dataset\d+)_")


class _Layout(NamedTuple):
    """What one layout's reader found in ``dataset.json`` and the folder (``None``: reported as a problem)."""

    layout: str
    channels: list[str] | None
    labels: list[str] | None
    training: list[CaseSpec]
    test: list[CaseSpec]
    file_ending: str | None
    regions: tuple[Region, ...] | None = None
    regions_class_order: tuple[int, ...] | None = None


def read_dataset_spec(raw_dir: Path) -> DatasetSpec:
    """Parse and validate ``raw_dir/dataset.json`` (MSD or nnU-Net v2 raw layout).

    Parameters
    ----------
    raw_dir
        The raw dataset folder, as the user gave it (messages name files under it in that form).

    Returns
    -------
    DatasetSpec
        Channels, labels and cases; image and label paths are relative to ``raw_dir`` (POSIX form).

    Raises
    ------
    DatasetError
        Every problem found, one line each (``"<path>: <problem>"``): a missing or invalid ``dataset.json``, missing
        or malformed keys, labels that are not consecutive from background 0, no foreground label, duplicate case
        ids, listed or expected files that do not exist, a ``numTraining`` that disagrees with the cases found.
    """
    raw_dir = Path(raw_dir)
    jpath = raw_dir / "dataset.json"
    data = _load(raw_dir, jpath)
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(f"{jpath}: {msg}")

    found = _read_layout(raw_dir, data, problems, bad)
    if found.layout != "unknown" and found.training:
        # nnU-Net v2: count every case id found, complete or not (incomplete ones are reported on their own)
        count = len(found.training) if found.layout == "msd" else count_case_ids(raw_dir, data, found.training)
        _check_num_training(data.get("numTraining"), count, found.layout, bad)
    name = _dataset_name(data, raw_dir, bad)
    regions, order = _with_side_regions(raw_dir, found, problems, bad)
    labels, ignore = split_ignore(found.labels)
    source_values = source_label_values(data.get("source_label_values"), labels, bad)
    unlabelled = []
    if found.layout != "unknown" and found.channels is not None and found.file_ending:
        unlabelled = cases_unlabelled(raw_dir, found.layout, len(found.channels), found.file_ending,
                                      found.training, problems)
    if problems:
        raise DatasetError(*problems)
    return DatasetSpec(name=name, raw_dir=str(raw_dir.resolve()), layout=found.layout,
                       channel_names=tuple(found.channels), labels=tuple(labels), file_ending=found.file_ending,
                       training=tuple(found.training), test=tuple(found.test), source_label_values=source_values,
                       ignore_label=ignore, regions=regions, regions_class_order=order,
                       unlabelled=tuple(unlabelled) or None)


def _load(raw_dir: Path, jpath: Path) -> dict:
    """``dataset.json`` as a JSON object; a missing folder or file, or one that is not a JSON object, is an error
    of its own (nothing else can be checked)."""
    if not raw_dir.exists():
        raise DatasetError(f"{raw_dir}: folder not found")
    if not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir}: not a folder (expected a raw dataset folder containing dataset.json)")
    if not jpath.is_file():
        raise DatasetError(
            f"{jpath}: not found (a raw dataset folder needs a dataset.json in Medical Segmentation Decathlon "
            f"or nnU-Net v2 format)"
        )
    try:
        data = load_object(jpath)
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{jpath}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{jpath}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{jpath}: expected a JSON object at the top level, found {kind(data)}")
    return data


def _read_layout(raw_dir: Path, data: dict, problems: list[str], bad: Callable[[str], None]) -> _Layout:
    """The layout's channels, labels and cases, detected from the keys: ``channel_names`` (nnU-Net v2) or
    ``modality`` (MSD)."""
    if "channel_names" in data:
        return _read_nnunetv2(raw_dir, data, problems, bad)
    if "modality" in data:
        return _read_msd(raw_dir, data, problems, bad)
    bad("neither 'modality' (Medical Segmentation Decathlon) nor 'channel_names' (nnU-Net v2) found; "
        "cannot tell the dataset layout")
    return _Layout("unknown", None, None, [], [], None)


def _read_nnunetv2(raw_dir: Path, data: dict, problems: list[str], bad: Callable[[str], None]) -> _Layout:
    channels = _channel_names(data["channel_names"], "channel_names", bad)
    raw_labels = data.get("labels")
    regions = order = None
    if has_regions(raw_labels):
        labels, regions, order = region_labels(raw_labels, data.get("regions_class_order"), bad)
    else:
        labels = labels_nnunetv2(raw_labels, bad)
        if "regions_class_order" in data:
            bad("'regions_class_order' is given but no label is a region (a list of several label values)")
    layout, file_ending = "nnunetv2", data.get("file_ending")
    training: list[CaseSpec] = []
    test: list[CaseSpec] = []
    if file_ending is None and "dataset" not in data and isinstance(data.get("training"), list):
        # nnU-Net v2's keys over MSD file lists (one file per case): the listed files tell the ending
        layout = "msd"
        training, test, _ = cases_msd(raw_dir, data, problems)
        file_ending = listed_ending(training + test, bad)
    elif file_ending is None:
        bad("missing key 'file_ending' (e.g. \".nii.gz\"), required in nnU-Net v2 layout")
    elif not isinstance(file_ending, str) or not file_ending.startswith("."):
        bad(f"'file_ending' must be a string starting with '.', e.g. \".nii.gz\", found {file_ending!r}")
        file_ending = None
    elif channels is not None:
        training, test = cases_nnunetv2(raw_dir, data, len(channels), file_ending, problems)
    return _Layout(layout, channels, labels, training, test, file_ending, regions, order)


def _read_msd(raw_dir: Path, data: dict, problems: list[str], bad: Callable[[str], None]) -> _Layout:
    channels = _channel_names(data["modality"], "modality", bad)
    labels = labels_msd(data.get("labels"), bad)
    tis = data.get("tensorImageSize")
    if tis is not None and tis not in ("3D", "4D"):
        bad(f"'tensorImageSize' must be \"3D\" or \"4D\", found {tis!r}")
    elif tis == "3D" and channels is not None and len(channels) > 1:
        bad(f"'tensorImageSize' is \"3D\" but 'modality' declares {len(channels)} channels; "
            f"multi-channel MSD images are single 4D files (\"tensorImageSize\": \"4D\")")
    training, test, file_ending = cases_msd(raw_dir, data, problems)
    return _Layout("msd", channels, labels, training, test, file_ending)


def _with_side_regions(raw_dir: Path, found: _Layout, problems: list[str], bad: Callable[[str], None]
                       ) -> tuple[tuple[Region, ...] | None, tuple[int, ...] | None]:
    """The regions of ``dataset.json``, or of a ``regions.json`` beside it (not both)."""
    side = raw_dir / REGIONS_FILE
    if not side.is_file():
        return found.regions, found.regions_class_order
    if found.regions is not None:
        bad(f"regions are declared both here and in {side}; keep one")
        return found.regions, found.regions_class_order
    if found.labels is None:
        return None, None
    return read_regions_file(side, found.labels, problems)


# ---------------------------------------------------------------------------------------------------------------
# keys shared by both layouts


def _channel_names(value: Any, key: str, bad) -> list[str] | None:
    """``{"0": "MRI", "1": "T2"}`` -> ``["MRI", "T2"]``; ``None`` after reporting a problem."""
    example = f"'{key}' must be an object like {{\"0\": \"MRI\"}}"
    if not isinstance(value, dict):
        bad(f"{example}, found {kind(value)}")
        return None
    if not value:
        bad(f"'{key}' is empty: at least one input channel must be named, e.g. {{\"0\": \"MRI\"}}")
        return None
    ok = True
    dup = sorted(set(getattr(value, "duplicates", ())))
    if dup:
        bad(f"'{key}' gives channel {', '.join(dup)} more than once")
        ok = False
    idx: dict[int, str] = {}
    for k, v in value.items():
        if not (isinstance(k, str) and k.isdigit()):
            bad(f"'{key}' key {k!r} is not a channel index (\"0\", \"1\", ...)")
            ok = False
            continue
        if not isinstance(v, str) or not v.strip():
            bad(f"'{key}' channel {k} has an empty or non-string name {v!r}")
            ok = False
        idx[int(k)] = v if isinstance(v, str) else str(v)
    if ok and sorted(idx) != list(range(len(idx))):
        bad(f"'{key}' channel indices must be 0..{len(idx) - 1}, found {sorted(idx)}")
        ok = False
    return [idx[i] for i in range(len(idx))] if ok else None

def _check_num_training(value: Any, found: int, layout: str, bad) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        bad(f"'numTraining' must be an integer, found {value!r}")
    elif value != found:
        where = "listed in 'training'" if layout == "msd" else "found in imagesTr/labelsTr"
        bad(f"'numTraining' is {value} but {found} training cases are {where}")

def _dataset_name(data: dict, raw_dir: Path, bad) -> str:
    """MSD ``name`` (or nnU-Net's optional ``name``), else the folder name without ``TaskNN_``/``DatasetNNN_``."""
    candidates = []
    if isinstance(data.get("name"), str):
        candidates.append(data["name"])
    folder = raw_dir.resolve().name
    candidates.append(_FOLDER_PREFIX.sub("", folder))
    candidates.append(folder)
    for c in candidates:
        safe = _SAFE_NAME.sub("_", c.strip()).strip("._-")
        if safe:
            return safe
    bad("cannot derive a dataset name: give a 'name' made of letters, digits, '.', '_' or '-'")
    return "dataset"
