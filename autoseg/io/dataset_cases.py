"""The cases of a dataset description: MSD's explicit ``training``/``test`` lists, nnU-Net v2's files discovered in
``imagesTr``/``labelsTr``/``imagesTs`` (or its explicit ``dataset`` listing), and the optional region-of-interest
masks in ``roiTr``/``roiTs``. Only folder listings are read; every problem is appended to ``problems``, one line
each naming ``dataset.json`` or the file concerned."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoseg.io.json_object import kind
from autoseg.io.natural import ENDINGS as NATURAL_ENDINGS
from autoseg.schema.dataset import CaseSpec

_KNOWN_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", *NATURAL_ENDINGS)


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

def cases_msd(raw_dir: Path, data: dict, problems: list[str]) -> tuple[list[CaseSpec], list[CaseSpec], str]:
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
                        f"found {kind(entries)}")
    elif not entries:
        problems.append(f"{jpath}: 'training' is empty: at least one labelled case is needed")
    else:
        for i, e in enumerate(entries):
            where = f"training[{i}]"
            if not isinstance(e, dict):
                problems.append(f"{jpath}: {where} must be an object {{\"image\": ..., \"label\": ...}}, "
                                f"found {kind(e)}")
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
        problems.append(f"{jpath}: 'test' must be a list of image paths, found {kind(tentries)}")
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

def listed_ending(cases: list[CaseSpec], bad) -> str | None:
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


def cases_nnunetv2(raw_dir: Path, data: dict, num_channels: int, ending: str,
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

def count_case_ids(raw_dir: Path, data: dict, training: list[CaseSpec]) -> int:
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

# ---------------------------------------------------------------------------------------------------------------
# unlabelled training images (both layouts)

#: Folder of a raw dataset holding training images without labels (semi-supervised training). Named like the
#: images it sits beside: ``imagesTr`` are the labelled training images, these the unlabelled ones.
UNLABELLED_DIR = "imagesTrUnlabelled"


def cases_unlabelled(raw_dir: Path, layout: str, num_channels: int, ending: str, labelled: list[CaseSpec],
                     problems: list[str]) -> list[CaseSpec]:
    """The images of ``imagesTrUnlabelled/`` (none when the folder does not exist).

    Files are named as the layout names its training images: ``<case>_<cccc><ending>`` one per channel (nnU-Net
    v2), ``<case><ending>`` one per case, 3D or 4D (MSD). A case id that is also a labelled case's is reported:
    a labelled scan must not be trained on twice, once without its label.
    """
    folder = raw_dir / UNLABELLED_DIR
    if not folder.is_dir():
        return []
    if layout == "nnunetv2":
        cases = _discover(raw_dir, UNLABELLED_DIR, None, num_channels, ending, problems) or []
    else:
        cases = []
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            if not f.name.endswith(ending) or len(f.name) == len(ending):
                problems.append(f"{f}: not a {ending} image (the dataset's training images are {ending} files)")
                continue
            cases.append(CaseSpec(f.name[: -len(ending)], (f"{UNLABELLED_DIR}/{f.name}",)))
    ids = {c.case_id for c in labelled}
    for c in cases:
        if c.case_id in ids:
            problems.append(f"{raw_dir / c.images[0]}: case id {c.case_id!r} is also a labelled training case; "
                            f"an unlabelled image needs an id of its own")
    if not cases and not any(str(folder) in p for p in problems):
        problems.append(f"{folder}: folder is empty (remove it, or put the unlabelled training images there)")
    return [c for c in cases if c.case_id not in ids]
