"""The labels of a dataset description: MSD's value -> name and nnU-Net v2's name -> value, the ignore label,
regions (nnU-Net v2's syntax in ``labels``, or an MSD dataset's ``regions.json`` side file) and the source files'
label values that ``autoseg convert`` records. Each reader reports its problems through ``bad`` (one line each) and
returns ``None`` for what it could not read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoseg.io.json_object import kind, load_object
from autoseg.schema.dataset import Region

#: Beside an MSD ``dataset.json`` (which has no region syntax): ``{"regions": {"whole tumour": [1, 2, 3, 4], ...},
#: "regions_class_order": [2, 1, 4]}``, on the label values the MSD ``labels`` declare.
REGIONS_FILE = "regions.json"


def split_ignore(labels: list[str] | None) -> tuple[list[str] | None, int | None]:
    """``(labels without a trailing "ignore", its value or None)``: partial annotation, not a class (its voxels do
    not count)."""
    if labels and labels[-1] == "ignore":
        return labels[:-1], len(labels) - 1
    return labels, None


def has_regions(value: Any) -> bool:
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

def region_labels(value: dict, order: Any, bad) -> tuple[list[str] | None, tuple[Region, ...] | None,
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

def read_regions_file(path: Path, labels: list[str], problems: list[str]
                  ) -> tuple[tuple[Region, ...] | None, tuple[int, ...] | None]:
    """An MSD dataset's ``regions.json``, on the label values its ``labels`` declare."""
    def bad(msg: str) -> None:
        problems.append(f"{path}: {msg}")

    try:
        data = load_object(path)
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

def source_label_values(value: Any, labels: list[str] | None, bad) -> tuple[int, ...] | None:
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
        bad(f"'labels' must be an object of {mapping}, e.g. {short_example}, found {kind(value)}")
        return None
    ok = True
    for k in sorted(set(getattr(value, "duplicates", ()))):
        bad(f"{key(k)} is declared more than once in 'labels'")
        ok = False
    return ok

def labels_msd(value: Any, bad) -> list[str] | None:
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

def labels_nnunetv2(value: Any, bad) -> list[str] | None:
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
