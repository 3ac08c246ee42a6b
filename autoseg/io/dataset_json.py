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

Only ``dataset.json`` and the folder listings are read here; the image files themselves are checked by
:mod:`autoseg.io.verify`. Every problem found is collected and raised together as one :class:`DatasetError`, one
line per problem, each naming ``dataset.json`` or the file concerned.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoseg.errors import DatasetError
from autoseg.io.natural import ENDINGS as NATURAL_ENDINGS
from autoseg.schema.dataset import CaseSpec, DatasetSpec, Region

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_FOLDER_PREFIX = re.compile(r"^(Task\d+|Dataset\d+)_")
_KNOWN_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", *NATURAL_ENDINGS)


class _Object(dict):
    """A JSON object that remembers keys given more than once (``json`` silently keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object_hook(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    dup = []
    for k, v in pairs:
        if k in obj:
            dup.append(k)
        obj[k] = v
    obj.duplicates = tuple(dup)
    return obj


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
        data = json.loads(jpath.read_text(encoding="utf-8"), object_pairs_hook=_object_hook)
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{jpath}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{jpath}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{jpath}: expected a JSON object at the top level, found {_kind(data)}")

    problems: list[str] = []
    regions = order = None

    def bad(msg: str) -> None:
        problems.append(f"{jpath}: {msg}")

    if "channel_names" in data:
        layout = "nnunetv2"
        channels = _channel_names(data["channel_names"], "channel_names", bad)
        raw_labels = data.get("labels")
        if _has_regions(raw_labels):
            labels, regions, order = _region_labels(raw_labels, data.get("regions_class_order"), bad)
        else:
            labels = _labels_nnunetv2(raw_labels, bad)
            if "regions_class_order" in data:
                bad("'regions_class_order' is given but no label is a region (a list of several label values)")
        file_ending = data.get("file_ending")
        training, test = [], []
        if file_ending is None and "dataset" not in data and isinstance(data.get("training"), list):
            # nnU-Net v2's keys over MSD file lists (one file per case): the listed files tell the ending
            layout = "msd"
            training, test, _ = _cases_msd(raw_dir, data, problems)
            file_ending = _listed_ending(training + test, bad)
        elif file_ending is None:
            bad("missing key 'file_ending' (e.g. \".nii.gz\"), required in nnU-Net v2 layout")
        elif not isinstance(file_ending, str) or not file_ending.startswith("."):
            bad(f"'file_ending' must be a string starting with '.', e.g. \".nii.gz\", found {file_ending!r}")
            file_ending = None
        elif channels is not None:
            training, test = _cases_nnunetv2(raw_dir, data, len(channels), file_ending, problems)
    elif "modality" in data:
        layout = "msd"
        channels = _channel_names(data["modality"], "modality", bad)
        labels = _labels_msd(data.get("labels"), bad)
        tis = data.get("tensorImageSize")
        if tis is not None and tis not in ("3D", "4D"):
            bad(f"'tensorImageSize' must be \"3D\" or \"4D\", found {tis!r}")
        elif tis == "3D" and channels is not None and len(channels) > 1:
            bad(f"'tensorImageSize' is \"3D\" but 'modality' declares {len(channels)} channels; "
                f"multi-channel MSD images are single 4D files (\"tensorImageSize\": \"4D\")")
        training, test, file_ending = _cases_msd(raw_dir, data, problems)
    else:
        layout = "unknown"
        channels, labels, training, test, file_ending = None, None, [], [], None
        bad("neither 'modality' (Medical Segmentation Decathlon) nor 'channel_names' (nnU-Net v2) found; "
            "cannot tell the dataset layout")

    if layout != "unknown" and training:
        # nnU-Net v2: count every case id found, complete or not (incomplete ones are reported on their own)
        found = len(training) if layout == "msd" else _count_case_ids(raw_dir, data, training)
        _check_num_training(data.get("numTraining"), found, layout, bad)

    name = _dataset_name(data, raw_dir, bad)
    side = raw_dir / REGIONS_FILE
    if side.is_file():
        if regions is not None:
            bad(f"regions are declared both here and in {side}; keep one")
        elif labels is not None:
            regions, order = _regions_file(side, labels, problems)
    ignore = None
    if labels and labels[-1] == "ignore":  # partial annotation: not a class, its voxels do not count
        ignore, labels = len(labels) - 1, labels[:-1]
    source_values = _source_label_values(data.get("source_label_values"), labels, bad)
    if problems:
        raise DatasetError(*problems)
    return DatasetSpec(
        name=name,
        raw_dir=str(raw_dir.resolve()),
        layout=layout,
        channel_names=tuple(channels),
        labels=tuple(labels),
        file_ending=file_ending,
        training=tuple(training),
        test=tuple(test),
        source_label_values=source_values,
        ignore_label=ignore,
        regions=regions,
        regions_class_order=order,
    )


#: Beside an MSD ``dataset.json`` (which has no region syntax): ``{"regions": {"whole tumour": [1, 2, 3, 4], ...},
#: "regions_class_order": [2, 1, 4]}``, on the label values the MSD ``labels`` declare.
REGIONS_FILE = "regions.json"


def _has_regions(value: Any) -> bool:
    """nnU-Net's rule: region mode when a label's value is a list of more than one label value."""
    return isinstance(value, dict) and any(isinstance(v, (list, tuple)) and len(v) > 1 for v in value.values())


def _region_list(name: str, value: Any, where: str, bad) -> tuple[int, ...] | None:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        bad(f"{where} region {name!r} must be a label value or a list of label values, found {value!r}")
        return None
    if any(v <= 0 for v in values):
        bad(f"{where} region {name!r} includes the background 0 (or a negative value): {values}")
        return None
    return tuple(sorted(set(values)))


def _class_order(order: Any, regions: list, values: set[int], where: str, bad) -> tuple[int, ...] | None:
    n = len(regions)
    if order is None:
        bad(f"{where}: 'regions_class_order' is missing: one label value per region ({n}), written where the "
            f"region is predicted")
        return None
    if not isinstance(order, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in order):
        bad(f"{where}: 'regions_class_order' must be a list of {n} label values, found {order!r}")
        return None
    if len(order) != n:
        bad(f"{where}: 'regions_class_order' has {len(order)} entries for {n} regions "
            f"({', '.join(r.name for r in regions)})")
        return None
    unknown = sorted(set(order) - values)
    if unknown:
        bad(f"{where}: 'regions_class_order' names label value(s) {unknown} that no region holds "
            f"(values {sorted(values)})")
        return None
    return tuple(order)


def _region_labels(value: dict, order: Any, bad) -> tuple[list[str] | None, tuple[Region, ...] | None,
                                                         tuple[int, ...] | None]:
    """nnU-Net v2 region syntax: ``{"background": 0, "whole tumor": [1, 2, 3], "enhancing tumor": 3,
    "ignore": 4}``; every non-background, non-ignore entry is a region, in declaration order."""
    if value.get("background") != 0 or isinstance(value.get("background"), bool):
        bad("'labels' needs \"background\": 0 (a single value) in region-based datasets")
        return None, None, None
    regions, names_by_value, ok = [], {}, True
    for name, v in value.items():
        if name in ("background", "ignore"):
            continue
        got = _region_list(name, v, "'labels'", bad)
        if got is None:
            ok = False
            continue
        regions.append(Region(str(name), got))
        if len(got) == 1:
            names_by_value.setdefault(got[0], str(name))
    if not ok or not regions:
        return None, None, None
    values = sorted({v for r in regions for v in r.labels})
    if values != list(range(1, len(values) + 1)):
        bad(f"the label values of the regions must be consecutive 1..K, found {values}")
        return None, None, None
    names = ["background"] + [names_by_value.get(v, f"label_{v}") for v in values]
    ignore = value.get("ignore")
    if ignore is not None:
        if ignore != len(values) + 1 or isinstance(ignore, bool):
            bad(f"the 'ignore' label must have the highest value ({len(values) + 1}), found {ignore!r}")
            return None, None, None
        names.append("ignore")
    got_order = _class_order(order, regions, set(values), "'labels'", bad)
    return (names, tuple(regions), got_order) if got_order is not None else (None, None, None)


def _regions_file(path: Path, labels: list[str], problems: list[str]
                  ) -> tuple[tuple[Region, ...] | None, tuple[int, ...] | None]:
    """An MSD dataset's ``regions.json``, on the label values its ``labels`` declare."""
    def bad(msg: str) -> None:
        problems.append(f"{path}: {msg}")

    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_object_hook)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        bad(f"cannot be read as JSON ({e})")
        return None, None
    spec = data.get("regions") if isinstance(data, dict) else None
    if not isinstance(spec, dict) or not spec:
        bad('expected {"regions": {"name": [label values], ...}, "regions_class_order": [...]}')
        return None, None
    declared = set(range(1, len(labels) - (1 if labels[-1] == "ignore" else 0)))
    regions, ok = [], True
    for name, v in spec.items():
        got = _region_list(name, v, "'regions'", bad)
        if got is None:
            ok = False
            continue
        undeclared = sorted(set(got) - declared)
        if undeclared:
            bad(f"region {name!r} names label value(s) {undeclared} that dataset.json does not declare "
                f"(foreground labels {sorted(declared)})")
            ok = False
            continue
        regions.append(Region(str(name), got))
    if not ok:
        return None, None
    order = _class_order(data.get("regions_class_order"), regions, {v for r in regions for v in r.labels},
                         "'regions_class_order'", bad)
    return (tuple(regions), order) if order is not None else (None, None)


def _source_label_values(value: Any, labels: list[str] | None, bad) -> tuple[int, ...] | None:
    """``"source_label_values": {"background": 0, "vessel": 255}``: the value of every label in the source files
    (written by ``autoseg convert``), as a tuple indexed like the labels."""
    if value is None or labels is None:
        return None
    example = '{"background": 0, "vessel": 255}'
    if not isinstance(value, dict):
        bad(f"'source_label_values' must map every label name to its value in the source files, e.g. {example}")
        return None
    if set(value) != set(labels):
        missing, extra = sorted(set(labels) - set(value)), sorted(set(value) - set(labels))
        bad(f"'source_label_values' must name exactly the labels" + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else ""))
        return None
    out = [value[n] for n in labels]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535 for v in out):
        bad(f"'source_label_values' must be integers 0..65535, found {out}")
        return None
    if len(set(out)) != len(out):
        bad(f"'source_label_values' gives two labels the same value: {value}")
        return None
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# keys shared by both layouts


def _kind(value: Any) -> str:
    return {dict: "an object", _Object: "an object", list: "a list", str: "a string", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


def _channel_names(value: Any, key: str, bad) -> list[str] | None:
    """``{"0": "MRI", "1": "T2"}`` -> ``["MRI", "T2"]``; ``None`` after reporting a problem."""
    example = f"'{key}' must be an object like {{\"0\": \"MRI\"}}"
    if not isinstance(value, dict):
        bad(f"{example}, found {_kind(value)}")
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


def _check_label_values(values: dict[int, str], bad) -> list[str] | None:
    """Names ordered by value, after checking values are 0..K-1 with at least one foreground label."""
    if not values:
        bad("'labels' is empty: expected background 0 and at least one foreground label")
        return None
    ok = True
    found = sorted(values)
    if 0 not in values:
        bad(f"'labels' has no background value 0 (values found: {found})")
        ok = False
    elif found != list(range(len(found))):
        missing = sorted(set(range(max(found) + 1)) - set(found))
        bad(f"label values must be consecutive integers 0..K-1, found {found}"
            + (f" (missing {missing})" if missing else ""))
        ok = False
    if len(values) < 2:
        bad("'labels' declares no foreground label: at least one besides background 0 is needed")
        ok = False
    names = [values[v] for v in found]
    dup_names = sorted({n for n in names if names.count(n) > 1})
    if dup_names:
        bad(f"label names must be unique, {dup_names} used for several values")
        ok = False
    if "ignore" in names:
        if names[-1] != "ignore":
            bad(f"the 'ignore' label must have the highest value ({len(names) - 1}), found "
                f"{names.index('ignore')}: it cannot be the background or lie between other labels")
            ok = False
        elif len(names) < 3:
            bad("'labels' declares no foreground label besides 'ignore' and the background")
            ok = False
    return names if ok else None


def _labels_object(value: Any, bad, mapping: str, example: str, short_example: str, key) -> bool | None:
    """Checks shared by both layouts' ``labels``: present, an object, no key declared twice.

    Returns ``None`` when the value cannot be read further, else whether no key was declared twice.
    """
    if value is None:
        bad(f"missing key 'labels' (e.g. {example})")
        return None
    if not isinstance(value, dict):
        bad(f"'labels' must be an object of {mapping}, e.g. {short_example}, found {_kind(value)}")
        return None
    ok = True
    for k in sorted(set(getattr(value, "duplicates", ()))):
        bad(f"{key(k)} is declared more than once in 'labels'")
        ok = False
    return ok


def _labels_msd(value: Any, bad) -> list[str] | None:
    """MSD: ``{"0": "background", "1": "Anterior"}`` (value -> name)."""
    ok = _labels_object(value, bad, "value -> name", '{"0": "background", "1": "tumour"}', '{"0": "background"}',
                        lambda k: f"label value {k}")
    if ok is None:
        return None
    values: dict[int, str] = {}
    for k, v in value.items():
        try:
            iv = int(k)
        except ValueError:
            bad(f"'labels' key {k!r} is not an integer label value (MSD layout maps value -> name)")
            ok = False
            continue
        if iv in values:
            bad(f"label value {iv} is declared more than once in 'labels' (keys {k!r} and another)")
            ok = False
        if not isinstance(v, str) or not v.strip():
            bad(f"label {k} has an empty or non-string name {v!r}")
            ok = False
        values[iv] = str(v)
    names = _check_label_values(values, bad)
    return names if ok else None


def _labels_nnunetv2(value: Any, bad) -> list[str] | None:
    """nnU-Net v2: ``{"background": 0, "liver": 1}`` (name -> value)."""
    ok = _labels_object(value, bad, "name -> value", '{"background": 0, "liver": 1}', '{"background": 0}',
                        lambda k: f"label name {k!r}")
    if ok is None:
        return None
    if value and all(isinstance(k, str) and k.isdigit() for k in value) and all(isinstance(v, str) for v in
                                                                               value.values()):
        bad("'labels' looks MSD-style (value -> name) but nnU-Net v2 layout ('channel_names') maps name -> value, "
            "e.g. {\"background\": 0, \"liver\": 1}")
        return None
    values: dict[int, str] = {}
    for k, v in value.items():
        if isinstance(v, (list, tuple)):
            bad(f"label {k!r} has the one-value list {v}: write the value itself (a region lists several)")
            ok = False
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            bad(f"label {k!r} must have an integer value, found {v!r}")
            ok = False
            continue
        if v in values:
            bad(f"label value {v} is used by both {values[v]!r} and {k!r}")
            ok = False
            continue
        values[v] = k
    names = _check_label_values(values, bad)
    return names if ok else None


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


# ---------------------------------------------------------------------------------------------------------------
# MSD


def _normalise(rel: str) -> str:
    """``"./imagesTr/x.nii.gz"`` -> ``"imagesTr/x.nii.gz"`` (POSIX separators)."""
    return os.path.normpath(rel).replace(os.sep, "/")


def _split_ending(filename: str) -> tuple[str, str]:
    for e in _KNOWN_ENDINGS:
        if filename.endswith(e) and len(filename) > len(e):
            return filename[: -len(e)], e
    stem, dot, ext = filename.rpartition(".")
    return (stem, "." + ext) if dot and stem else (filename, "")


def _cases_msd(raw_dir: Path, data: dict, problems: list[str]) -> tuple[list[CaseSpec], list[CaseSpec], str]:
    jpath = raw_dir / "dataset.json"
    endings: list[str] = []

    def listed(rel: Any, where: str) -> str | None:
        """Normalised relative path of a listed file; reports wrong types and missing files."""
        if not isinstance(rel, str) or not rel.strip():
            problems.append(f"{jpath}: {where} must be a file path string, found {rel!r}")
            return None
        norm = _normalise(rel)
        if not (raw_dir / norm).is_file():
            problems.append(f"{raw_dir / norm}: listed in dataset.json {where} but not found")
        return norm

    def case_id(rel: str) -> str:
        stem, ending = _split_ending(rel.rsplit("/", 1)[-1])
        endings.append(ending)
        return stem

    training: list[CaseSpec] = []
    entries = data.get("training")
    if entries is None:
        problems.append(f"{jpath}: missing key 'training' (the list of {{\"image\": ..., \"label\": ...}} cases)")
    elif not isinstance(entries, list):
        problems.append(f"{jpath}: 'training' must be a list of {{\"image\": ..., \"label\": ...}}, "
                        f"found {_kind(entries)}")
    elif not entries:
        problems.append(f"{jpath}: 'training' is empty: at least one labelled case is needed")
    else:
        for i, e in enumerate(entries):
            where = f"training[{i}]"
            if not isinstance(e, dict):
                problems.append(f"{jpath}: {where} must be an object {{\"image\": ..., \"label\": ...}}, "
                                f"found {_kind(e)}")
                continue
            missing = [k for k in ("image", "label") if k not in e]
            if missing:
                problems.append(f"{jpath}: {where} has no {' / '.join(repr(k) for k in missing)}")
                continue
            img, lab = listed(e["image"], f"{where}.image"), listed(e["label"], f"{where}.label")
            roi = listed(e["roi"], f"{where}.roi") if e.get("roi") is not None else None
            if img is not None and lab is not None:
                training.append(CaseSpec(case_id(img), (img,), lab, roi))

    test: list[CaseSpec] = []
    tentries = data.get("test", [])
    if tentries is None:
        tentries = []
    if not isinstance(tentries, list):
        problems.append(f"{jpath}: 'test' must be a list of image paths, found {_kind(tentries)}")
        tentries = []
    for i, e in enumerate(tentries):
        roi = None
        if isinstance(e, dict) and "image" in e:  # some converted datasets list {"image": ...} (+ "roi")
            roi = listed(e["roi"], f"test[{i}].roi") if e.get("roi") is not None else None
            e = e["image"]
        img = listed(e, f"test[{i}]")
        if img is not None:
            test.append(CaseSpec(case_id(img), (img,), None, roi))

    _check_duplicate_ids(training, "training", jpath, problems)
    _check_duplicate_ids(test, "test", jpath, problems)
    file_ending = max(set(endings), key=endings.count) if endings else ".nii.gz"
    return training, test, file_ending


def _listed_ending(cases: list[CaseSpec], bad) -> str | None:
    """The one file ending of the cases' image and label files (``None``, reported, when there is not one)."""
    endings = sorted({_split_ending(rel.rsplit("/", 1)[-1])[1]
                      for c in cases for rel in (*c.images, *([c.label] if c.label else []))})
    if len(endings) == 1 and endings[0].startswith("."):
        return endings[0]
    if not endings:
        bad("missing key 'file_ending' (e.g. \".nii.gz\"), required in nnU-Net v2 layout")
    else:
        found = ", ".join(repr(e) if e else "(none)" for e in endings)
        bad(f"no 'file_ending', and the files listed in 'training' / 'test' end in {found}; list files of one "
            f"format or give 'file_ending'")
    return None


def _check_duplicate_ids(cases: list[CaseSpec], where: str, jpath: Path, problems: list[str]) -> None:
    by_id: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        by_id[c.case_id].append(c.images[0])
    for cid, files in by_id.items():
        if len(files) > 1:
            problems.append(f"{jpath}: case id {cid!r} occurs {len(files)} times in '{where}' "
                            f"({', '.join(files)}); case ids must be unique")


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net v2 raw


def _cases_nnunetv2(raw_dir: Path, data: dict, num_channels: int, ending: str,
                    problems: list[str]) -> tuple[list[CaseSpec], list[CaseSpec]]:
    if "dataset" in data:
        training = _cases_from_listing(raw_dir, data["dataset"], num_channels, problems)
    else:
        training = _discover(raw_dir, "imagesTr", "labelsTr", num_channels, ending, problems)
    test = []
    if (raw_dir / "imagesTs").is_dir():
        test = _discover(raw_dir, "imagesTs", None, num_channels, ending, problems) or []
    test = _attach_rois(raw_dir, "roiTs", test, ending, problems)
    if training is None:  # imagesTr missing, already reported
        return [], test
    training = _attach_rois(raw_dir, "roiTr", training, ending, problems)
    if not training and not any(str(raw_dir / "imagesTr") in p or "dataset[" in p for p in problems):
        where = "'dataset'" if "dataset" in data else f"{raw_dir / 'imagesTr'} (files <case>_0000{ending})"
        problems.append(f"{raw_dir / 'dataset.json'}: no training cases found in {where}")
    return training, test


def _attach_rois(raw_dir: Path, sub: str, cases: list[CaseSpec], ending: str, problems: list[str]
                 ) -> list[CaseSpec]:
    """Region-of-interest masks ``<sub>/<case><ending>`` (optional, per case) attached to their cases."""
    folder = raw_dir / sub
    if not folder.is_dir():
        return cases
    by_id = {c.case_id: c for c in cases}
    found = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file() or not f.name.endswith(ending):
            continue
        cid = f.name[: -len(ending)]
        if cid in by_id:
            found[cid] = f"{sub}/{f.name}"
        else:
            problems.append(f"{f}: region-of-interest mask without a case (no image {cid}_0000{ending})")
    return [replace(c, roi=found.get(c.case_id)) for c in cases]


def _count_case_ids(raw_dir: Path, data: dict, training: list[CaseSpec]) -> int:
    """Distinct case ids among ``imagesTr/<case>_<cccc>`` and ``labelsTr/<case>`` files (nnU-Net v2 layout)."""
    if "dataset" in data or not isinstance(data.get("file_ending"), str):
        return len(training)
    ending = data["file_ending"]
    pattern = re.compile(r"^(.+)_\d{4}" + re.escape(ending) + r"$")
    ids = {c.case_id for c in training}
    for sub, rx in (("imagesTr", pattern), ("labelsTr", None)):
        if (raw_dir / sub).is_dir():
            for f in (raw_dir / sub).iterdir():
                if f.name.startswith(".") or not f.name.endswith(ending):
                    continue
                if rx is None:
                    ids.add(f.name[: -len(ending)])
                elif (m := rx.match(f.name)) is not None:
                    ids.add(m.group(1))
    return len(ids)


def _cases_from_listing(raw_dir: Path, listing: Any, num_channels: int, problems: list[str]) -> list[CaseSpec]:
    """nnU-Net's explicit ``"dataset": {"case": {"images": [...], "label": "..."}}`` (paths relative to raw_dir)."""
    jpath = raw_dir / "dataset.json"
    if not isinstance(listing, dict):
        problems.append(f"{jpath}: 'dataset' must be an object of case id -> {{\"images\": [...], \"label\": ...}}")
        return []
    for k in sorted(set(getattr(listing, "duplicates", ()))):
        problems.append(f"{jpath}: case id {k!r} occurs more than once in 'dataset'; case ids must be unique")
    cases = []
    for cid, entry in listing.items():
        where = f"dataset[{cid!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            problems.append(f"{jpath}: {where} must be {{\"images\": [one path per channel], \"label\": path}}")
            continue
        images = entry["images"]
        if len(images) != num_channels:
            problems.append(f"{jpath}: {where} lists {len(images)} image files, 'channel_names' declares "
                            f"{num_channels} channels")
            continue
        rels = []
        for rel in list(images) + [entry["label"]]:
            if not isinstance(rel, str) or not rel.strip():
                problems.append(f"{jpath}: {where} has a non-string path {rel!r}")
                continue
            norm = _normalise(rel)
            if not (raw_dir / norm).is_file():
                problems.append(f"{raw_dir / norm}: listed in dataset.json {where} but not found")
            rels.append(norm)
        if len(rels) == num_channels + 1:
            cases.append(CaseSpec(str(cid), tuple(rels[:-1]), rels[-1]))
    return cases


def _discover(raw_dir: Path, images_sub: str, labels_sub: str | None, num_channels: int, ending: str,
              problems: list[str]) -> list[CaseSpec] | None:
    """Cases from ``<images_sub>/<case>_<cccc><ending>`` (+ ``<labels_sub>/<case><ending>`` when given)."""
    img_dir = raw_dir / images_sub
    if not img_dir.is_dir():
        problems.append(f"{img_dir}: folder not found (nnU-Net v2 layout expects {images_sub}/<case>_0000{ending})")
        return None
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + r"$")
    channels: dict[str, dict[int, str]] = defaultdict(dict)
    for f in sorted(img_dir.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(ending) or not f.is_file():
            continue
        m = pattern.match(f.name)
        if m is None:
            problems.append(f"{f}: image file name does not follow <case>_<cccc>{ending} "
                            f"(e.g. case_001_0000{ending})")
            continue
        channels[m.group(1)][int(m.group(2))] = f"{images_sub}/{f.name}"
    labels: dict[str, str] = {}
    if labels_sub is not None:
        lab_dir = raw_dir / labels_sub
        if not lab_dir.is_dir():
            problems.append(f"{lab_dir}: folder not found (nnU-Net v2 layout expects {labels_sub}/<case>{ending})")
        else:
            for f in sorted(lab_dir.iterdir()):
                if f.name.startswith(".") or not f.name.endswith(ending) or not f.is_file():
                    continue
                labels[f.name[: -len(ending)]] = f"{labels_sub}/{f.name}"
            for cid in sorted(set(labels) - set(channels)):
                problems.append(f"{raw_dir / labels[cid]}: label without image files "
                                f"(expected {images_sub}/{cid}_0000{ending})")
    cases = []
    # an RGB file holds three channels: nnU-Net names it <case>_0000.png with channel_names R, G, B
    one_file = ending.lower() in NATURAL_ENDINGS and num_channels > 1
    for cid in sorted(channels):
        found = channels[cid]
        ok = True
        if one_file and set(found) == {0}:
            files = (found[0],)
        else:
            files = tuple(found[c] for c in range(num_channels) if c in found)
            for c in range(num_channels):
                if c not in found:
                    problems.append(f"{img_dir / f'{cid}_{c:04d}{ending}'}: missing channel file: case {cid!r} "
                                    f"has no channel {c} (dataset.json declares {num_channels} channels, one "
                                    f"file each)")
                    ok = False
            for c in sorted(set(found) - set(range(num_channels))):
                problems.append(f"{raw_dir / found[c]}: channel {c} but dataset.json declares only {num_channels} "
                                f"channel(s)")
                ok = False
        label = None
        if labels_sub is not None:
            label = labels.get(cid)
            if label is None and (raw_dir / labels_sub).is_dir():
                problems.append(f"{raw_dir / labels_sub / (cid + ending)}: missing label file of case {cid!r} "
                                f"(its images are in {images_sub})")
                ok = False
        if ok:
            cases.append(CaseSpec(cid, files, label))
    return cases
