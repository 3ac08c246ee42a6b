"""``autoseg convert``: any folder of images and masks -> an nnU-Net v2 raw dataset autoseg plans and trains.

A user describes where each case's files are with patterns relative to the source folder, ``{case}`` standing for
the case id in the file name::

    images  training/images/{case}_training.tif        (one pattern per channel file)
    labels  training/1st_manual/{case}_manual1.gif
    roi     training/mask/{case}_training_mask.gif     (optional region-of-interest masks)
    test_images / test_roi                             (optional unlabelled cases)
    label_map {255: 1}, label_names [background, vessel], channel_names [R, G, B]

Everything is checked before anything is written: every file in a pattern's folder that does not match it, every
case missing a partner (an image without a label or mask, a label without an image), a label or mask whose size
differs from its image, an RGB label, a label value that is neither mapped nor a label index, images of mixed
formats. Each is one line naming the file; then nothing is written. Otherwise the dataset is written to a
temporary folder beside the output and renamed into place, so an interrupted conversion leaves nothing half-done.

Output layout (nnU-Net v2 raw, readable by nnU-Net too): ``imagesTr/<case>_0000<ending>`` (files copied, or
hard-linked, unchanged; JPEG re-encoded losslessly as PNG so labels can share the ending), ``labelsTr/<case>``
with the mapped values, ``roiTr/<case>`` (0/1), ``imagesTs``/``roiTs``, and ``dataset.json`` with
``source_label_values`` (so predictions are written back in the source's values, 255 for vessels) and the
conversion spec itself under ``autoseg_convert``.

A folder of DICOM (image series with DICOM-SEG / RTSTRUCT annotations) needs no patterns: see
:mod:`autoseg.io.dicom_dataset`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.progress import wrap
from autoseg.io import natural
from autoseg.io.image import read_header, read_label, write_image
from autoseg.io.roi import KNOWN_ENDINGS
from autoseg.schema.base import link_or_copy, locked_temporary

if TYPE_CHECKING:
    from autoseg.io.dicom_dataset import DicomConvertSpec

PLACEHOLDER = "{case}"


@dataclass(frozen=True)
class ConvertSpec:
    """Where a dataset's files are and how its labels map (see the module notes).

    Attributes
    ----------
    images
        One pattern per channel file, relative to the source folder (``{case}`` in the file name).
    labels
        Pattern of the training labels.
    roi
        Pattern of the training cases' region-of-interest masks, or ``None``.
    test_images, test_roi
        Patterns of unlabelled cases (one per channel) and their masks; empty / ``None`` for none.
    label_map
        Source value -> label index; values not listed must already be label indices.
    label_names
        Name of every label index, background first; default ``background``, ``label_1`` ...
    channel_names
        One per input channel; default R, G, B for colour files, else ``image`` (z-scored).
    name
        Dataset name; default the output folder's name.
    """

    images: tuple[str, ...]
    labels: str
    roi: str | None = None
    test_images: tuple[str, ...] = ()
    test_roi: str | None = None
    label_map: Mapping[int, int] = field(default_factory=dict)
    label_names: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()
    name: str | None = None

    @classmethod
    def from_json(cls, path: Path) -> "ConvertSpec":
        """Read a spec file (the keys of this class; ``label_map`` as ``{"255": 1}``)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AutosegError(f"{path}: cannot be read as JSON ({e})") from None
        if not isinstance(data, dict):
            raise AutosegError(f"{path}: expected a JSON object with 'images' and 'labels'")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise AutosegError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            images = data["images"]
            data["images"] = (images,) if isinstance(images, str) else tuple(images)
            test = data.get("test_images", ())
            data["test_images"] = (test,) if isinstance(test, str) else tuple(test)
            data["label_map"] = parse_label_map([f"{k}={v}" for k, v in dict(data.get("label_map", {})).items()])
            for key in ("label_names", "channel_names"):
                data[key] = tuple(data.get(key, ()))
            return cls(**data)
        except (KeyError, TypeError, ValueError) as e:
            raise AutosegError(f"{path}: {e}") from None


def parse_label_map(items: Sequence[str]) -> dict[int, int]:
    """``["255=1", "128=2"]`` -> ``{255: 1, 128: 2}``.

    Examples
    --------
    >>> parse_label_map(["255=1"])
    {255: 1}
    """
    out: dict[int, int] = {}
    for item in items:
        src, sep, dst = str(item).partition("=")
        try:
            s, d = int(src), int(dst)
        except ValueError:
            raise AutosegError(f"label map {item!r}: expected SOURCE=LABEL with integers, e.g. 255=1") from None
        if not sep or s < 0 or d < 0:
            raise AutosegError(f"label map {item!r}: expected SOURCE=LABEL with non-negative integers, e.g. 255=1")
        if s in out:
            raise AutosegError(f"label map: source value {s} mapped twice")
        out[s] = d
    return out


@dataclass(frozen=True)
class _Pattern:
    text: str
    folder: Path
    regex: re.Pattern


def _pattern(source: Path, text: str, what: str, problems: list[str]) -> _Pattern | None:
    rel = Path(text)
    if rel.is_absolute() or ".." in rel.parts:
        problems.append(f"{what} pattern {text!r}: must be relative to {source}, without '..'")
        return None
    if rel.name.count(PLACEHOLDER) != 1 or PLACEHOLDER in str(rel.parent):
        problems.append(f"{what} pattern {text!r}: needs {PLACEHOLDER} exactly once, in the file name "
                        f"(e.g. images/{PLACEHOLDER}.png)")
        return None
    folder = source / rel.parent
    if not folder.is_dir():
        problems.append(f"{folder}: folder of the {what} pattern {text!r} not found")
        return None
    before, after = rel.name.split(PLACEHOLDER)
    return _Pattern(text, folder, re.compile(re.escape(before) + r"(?P<case>.+)" + re.escape(after) + r"\Z"))


def _match(p: _Pattern, what: str, claimed: dict[Path, str]) -> dict[str, Path]:
    """Case id -> file of a pattern; files of its folder it does not match are problems (unless another pattern
    sharing the folder matches them)."""
    found = {}
    for f in sorted(p.folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        m = p.regex.match(f.name)
        if m is None:
            claimed.setdefault(f, "")
            continue
        claimed[f] = what
        found[m.group("case")] = f
    return found


def _unmatched(claimed: dict[Path, str], patterns: list[_Pattern], problems: list[str]) -> None:
    for f, what in sorted(claimed.items()):
        if not what:
            which = " or ".join(repr(p.text) for p in patterns if p.folder == f.parent)
            problems.append(f"{f}: matches no pattern ({which}); move it out or fix the pattern")


def _ending(path: Path) -> str:
    name = path.name.lower()
    return next((e for e in KNOWN_ENDINGS if name.endswith(e)), path.suffix.lower())


@dataclass
class _Case:
    case_id: str
    images: list[Path]
    label: Path | None = None
    roi: Path | None = None


def _cases(source: Path, image_patterns: Sequence[str], label_pattern: str | None, roi_pattern: str | None,
           where: str, problems: list[str], claimed: dict[Path, str], patterns: list[_Pattern]) -> list[_Case]:
    imgs = [_pattern(source, t, f"{where} image", problems) for t in image_patterns]
    lab = _pattern(source, label_pattern, f"{where} label", problems) if label_pattern else None
    roi = _pattern(source, roi_pattern, f"{where} region-of-interest", problems) if roi_pattern else None
    if None in imgs or (label_pattern and lab is None) or (roi_pattern and roi is None):
        return []
    patterns.extend(p for p in (*imgs, lab, roi) if p is not None)
    channel_files = [_match(p, f"{where} image", claimed) for p in imgs]
    labels = _match(lab, f"{where} label", claimed) if lab else {}
    rois = _match(roi, f"{where} roi", claimed) if roi else {}
    ids = set().union(*channel_files) | set(labels) | set(rois)
    cases = []
    for cid in sorted(ids):
        ok = True
        for p, files in zip(imgs, channel_files):
            if cid not in files:
                other = next((f[cid] for f in (*channel_files, labels, rois) if cid in f), None)
                problems.append(f"{other}: case {cid!r} has no image matching {p.text!r} in {p.folder}")
                ok = False
        first = next((f[cid] for f in channel_files if cid in f), None)
        if lab is not None and cid not in labels and first is not None:
            problems.append(f"{first}: case {cid!r} has no label matching {lab.text!r} in {lab.folder}")
            ok = False
        if roi is not None and cid not in rois and first is not None:
            problems.append(f"{first}: case {cid!r} has no region-of-interest mask matching {roi.text!r} in "
                            f"{roi.folder}")
            ok = False
        if ok:
            cases.append(_Case(cid, [f[cid] for f in channel_files], labels.get(cid), rois.get(cid)))
    return cases


def _read_mask(path: Path, image: Path, what: str, problems: list[str]) -> np.ndarray | None:
    """A label or mask file's values, checked to be one channel on its image's grid."""
    try:
        arr, _ = read_label(path)
        size = read_header(image).size
    except AutosegError as e:
        problems.extend(e.problems)
        return None
    if arr.shape != tuple(size):
        if natural.has_natural_ending(path) and natural.has_natural_ending(image):
            problems.append(f"{path}: {what} of {arr.shape[2]}x{arr.shape[1]} pixels (width x height), its image "
                            f"{image.name} has {size[2]}x{size[1]}")
        else:
            problems.append(f"{path}: {what} of size {'x'.join(map(str, arr.shape))} (z,y,x), its image "
                            f"{image.name} has {'x'.join(map(str, size))}")
        return None
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        problems.append(f"{path}: {what} holds non-integer values")
        return None
    return arr


def _unmapped(values: set[int], label_map: Mapping[int, int], num_labels: int, path: Path,
              problems: list[str]) -> None:
    """One line when a label file holds values neither mapped nor label indices."""
    out_of = sorted(v for v in values if v not in label_map and not 0 <= v < num_labels)
    if out_of:
        shown = ", ".join(map(str, out_of[:8])) + (", ..." if len(out_of) > 8 else "")
        problems.append(f"{path}: label value(s) {shown} not mapped (give e.g. --map {out_of[0]}=1) and not a "
                        f"label index 0..{num_labels - 1}")


def _mapped(arr: np.ndarray, label_map: Mapping[int, int], num_labels: int) -> np.ndarray:
    """Label values through ``label_map`` (checked by :func:`_unmapped`), as uint8 (uint16 beyond 256 labels)."""
    arr = arr.astype(np.int64)
    lut = np.arange(max([int(arr.max()), *label_map]) + 1, dtype=np.int64)
    for s, d in label_map.items():
        lut[s] = d
    return lut[arr].astype(np.uint8 if num_labels <= 256 else np.uint16)


def convert(source: Path, out_dir: Path, spec: ConvertSpec | DicomConvertSpec | None,
            progress: bool = True) -> Path:
    """Write ``out_dir`` (an nnU-Net v2 raw dataset) from the files ``spec`` describes under ``source``.

    ``spec`` None or a :class:`autoseg.io.dicom_dataset.DicomConvertSpec`: ``source`` is a folder of DICOM image
    series and their DICOM-SEG / RTSTRUCT annotations (:func:`autoseg.io.dicom_dataset.convert_dicom`).

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    AutosegError
        Every problem found (one line each); nothing is written then.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not isinstance(spec, ConvertSpec):
        from autoseg.io.dicom_dataset import convert_dicom  # pydicom only for DICOM folders

        return convert_dicom(source, out_dir, spec, progress)
    _check_arguments(source, out_dir, spec)
    train, test, ending = _matched_cases(source, spec)
    num_labels, names, channels = _checked_contents(train, test, spec, progress)

    def write(tmp: Path) -> None:
        _write_cases(tmp, train, test, spec, ending, num_labels, progress)
        meta = _dataset_json(source, out_dir, spec, channels, names, len(train), natural.output_ending(ending))
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return publish_dataset(out_dir, write)


def check_folders(source: Path, out_dir: Path) -> None:
    """Refuse a missing source folder, or an output that exists and is not an empty folder (nothing on disk is
    ever replaced)."""
    if not source.is_dir():
        raise AutosegError(f"{source}: source folder not found")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AutosegError(f"{out_dir}: exists and is not empty; choose a new output folder")


def publish_dataset(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a new hidden folder beside ``out_dir``, then rename it to ``out_dir`` (absent or empty,
    :func:`check_folders`); on any failure the folder is removed and ``out_dir`` is left as it was.

    A killed convert leaves no half dataset, and the next one removes what it left
    (:func:`autoseg.schema.base.locked_temporary`).
    """
    with locked_temporary(out_dir, ".converting", folder=True) as tmp:
        try:
            write(tmp)
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked before)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def _check_arguments(source: Path, out_dir: Path, spec: ConvertSpec) -> None:
    check_folders(source, out_dir)
    if not spec.images:
        raise AutosegError("no image pattern given (e.g. --images 'images/{case}.png')")


def _matched_cases(source: Path, spec: ConvertSpec) -> tuple[list, list, str]:
    """The training and test cases the patterns match, and their images' one file ending; every file under
    ``source`` that a pattern's folder holds but no case claims is a problem."""
    problems: list[str] = []
    claimed: dict[Path, str] = {}
    patterns: list[_Pattern] = []
    train = _cases(source, spec.images, spec.labels, spec.roi, "training", problems, claimed, patterns)
    test = []
    if spec.test_images:
        if len(spec.test_images) != len(spec.images):
            problems.append(f"{len(spec.test_images)} test image pattern(s) for {len(spec.images)} channel "
                            f"pattern(s): give one per channel, in the same order")
        else:
            test = _cases(source, spec.test_images, None, spec.test_roi, "test", problems, claimed, patterns)
    elif spec.test_roi:
        problems.append("a test region-of-interest pattern needs test image patterns")
    _unmatched(claimed, patterns, problems)
    if not train and not problems:
        problems.append(f"{source}: no training case matches {spec.images[0]!r}")
    endings = {_ending(f) for c in train + test for f in c.images}
    if len(endings) > 1:
        problems.append(f"{source}: images of several formats ({', '.join(sorted(endings))}); a dataset has one")
    if problems:
        raise AutosegError(*problems)
    return train, test, endings.pop()


def _checked_contents(train: list, test: list, spec: ConvertSpec, progress: bool
                      ) -> tuple[int, tuple[str, ...], list[str]]:
    """``(number of labels, label names, channel names)`` after reading every label map and mask once: label
    values the map does not cover, empty regions of interest and missing names are problems."""
    problems: list[str] = []
    num_labels = len(spec.label_names) if spec.label_names else None
    # every label and mask is read once to check it, and once more when it is written: memory stays at one case
    values_of: dict[str, set[int]] = {}
    for c in wrap(train, len(train), "check labels", "case", progress):
        arr = _read_mask(c.label, c.images[0], "label map", problems)
        if arr is not None:
            values_of[c.case_id] = {int(v) for v in np.unique(arr)}
    raw_values = set().union(*values_of.values())
    targets = sorted({spec.label_map.get(v, v) for v in raw_values} | {0})
    if num_labels is None:
        num_labels = max(targets) + 1 if targets else 2
    beyond = sorted(d for d in set(spec.label_map.values()) if d >= num_labels)
    if beyond:
        problems.append(f"label map: target value(s) {beyond} beyond the {num_labels} label names given")
    for c in train:
        if c.case_id in values_of:
            _unmapped(values_of[c.case_id], spec.label_map, num_labels, c.label, problems)
    for c in train + test:
        if c.roi is not None:
            arr = _read_mask(c.roi, c.images[0], "region-of-interest mask", problems)
            if arr is not None and not arr.any():
                problems.append(f"{c.roi}: region-of-interest mask is empty (no nonzero pixel)")
    channels = _channel_names(spec, train[0].images, problems)
    names = spec.label_names or ("background", *(f"label_{k}" for k in range(1, num_labels)))
    if len(names) < 2:
        problems.append("label names: need the background and at least one foreground label")
    if problems:
        raise AutosegError(*problems)
    return num_labels, tuple(names), channels


def _write_cases(tmp: Path, train: list, test: list, spec: ConvertSpec, ending: str, num_labels: int,
                 progress: bool) -> None:
    """Every case's images (linked, or decoded and written losslessly), mapped label map and region of interest
    into the raw layout under ``tmp``."""
    out_ending = natural.output_ending(ending)
    is_2d = natural.has_natural_ending(ending)
    for sub in ("imagesTr", "labelsTr") + (("roiTr",) if spec.roi else ()) + \
               (("imagesTs",) if test else ()) + (("roiTs",) if spec.test_roi else ()):
        (tmp / sub).mkdir()
    jobs = [(c, "Tr") for c in train] + [(c, "Ts") for c in test]
    for c, tr in wrap(jobs, len(jobs), "convert", "case", progress):
        for ch, f in enumerate(c.images):
            dst = tmp / f"images{tr}" / f"{c.case_id}_{ch:04d}{out_ending}"
            if out_ending == ending:
                link_or_copy(f, dst)
            else:  # JPEG -> PNG, from the decoded pixels (lossless from here on)
                arr, _ = natural.read_natural(f)
                natural.write_natural(arr if arr.shape[0] == 3 else arr[0], dst)
        if tr == "Tr":
            mapped = _mapped(read_label(c.label)[0], spec.label_map, num_labels)
            _write_mask(mapped, c.label, is_2d, tmp / "labelsTr" / f"{c.case_id}{out_ending}")
        if c.roi is not None:
            roi = (read_label(c.roi)[0] != 0).astype(np.uint8)
            _write_mask(roi, c.roi, is_2d, tmp / f"roi{tr}" / f"{c.case_id}{out_ending}")


def _dataset_json(source: Path, out_dir: Path, spec: ConvertSpec, channels: list[str], names: tuple[str, ...],
                  num_training: int, out_ending: str) -> dict[str, Any]:
    """The converted dataset's ``dataset.json``: nnU-Net v2 keys, the source files' label values when the map
    changed them, and how it was converted."""
    meta: dict[str, Any] = {
        "name": spec.name or out_dir.name,
        "description": f"converted by autoseg convert from {source.resolve()}",
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": {n: i for i, n in enumerate(names)},
        "numTraining": num_training,
        "file_ending": out_ending,
    }
    inverse = {d: s for s, d in spec.label_map.items()}
    source_values = [inverse.get(i, i) for i in range(len(names))]
    if source_values != list(range(len(names))):
        meta["source_label_values"] = {n: v for n, v in zip(names, source_values)}
    meta["autoseg_convert"] = {
        "source": str(source.resolve()), "images": list(spec.images), "labels": spec.labels, "roi": spec.roi,
        "test_images": list(spec.test_images), "test_roi": spec.test_roi,
        "label_map": {str(k): v for k, v in spec.label_map.items()}}
    return meta


def _write_mask(arr: np.ndarray, src: Path, is_2d: bool, dst: Path) -> None:
    """A label map or mask in the dataset's format; a volume keeps the geometry of its source file."""
    if is_2d:
        natural.write_natural(arr[0] if arr.ndim == 3 else arr, dst)
    else:
        write_image(arr, read_header(src).geometry, dst)


def _channel_names(spec: ConvertSpec, files: Sequence[Path], problems: list[str]) -> tuple[str, ...]:
    """Declared names, checked against the files; else R, G, B for one colour file, ``image`` per channel."""
    try:
        headers = [read_header(f) for f in files]
    except AutosegError as e:
        problems.extend(e.problems)
        return ()
    count = sum(h.channels for h in headers)
    if spec.channel_names:
        if len(spec.channel_names) != count:
            problems.append(f"{files[0]}: {count} channel(s) in the image files, {len(spec.channel_names)} "
                            f"channel name(s) given")
        return tuple(spec.channel_names)
    if len(files) == 1 and natural.has_natural_ending(files[0]) and count == 3:
        return ("R", "G", "B")
    return tuple("image" if count == 1 else f"image_{i}" for i in range(count))
