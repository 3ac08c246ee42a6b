"""Predict a folder of raw images: discovery, checks, and a pipeline that overlaps I/O with network work."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm import tqdm

from autoseg.errors import AutosegError, option
from autoseg.inference.predictor import Predictor
from autoseg.io.image import Geometry, read_header, read_image, write_image
from autoseg.io import probabilities as probability_files
from autoseg.workspace import probabilities_file, segmentation_file


@dataclass(frozen=True)
class InputCase:
    """One image to segment: its id (output name) and channel files."""

    case_id: str
    files: tuple[Path, ...]


def find_cases(images_dir: Path, num_channels: int, file_ending: str = ".nii.gz") -> list[InputCase]:
    """Group the images of a folder into cases.

    nnU-Net v2 naming (``<case>_0000<ending>``, one file per channel) when every file carries a 4-digit channel
    suffix and the groups hold exactly ``num_channels`` files; otherwise MSD naming: one file per case (a 4D file
    for several channels).

    Raises
    ------
    AutosegError
        Missing or empty folder, or a case with missing channel files.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise AutosegError(f"{images_dir}: input folder not found")
    files = sorted(p for p in images_dir.iterdir() if p.name.endswith(file_ending) and not p.name.startswith("."))
    if not files:
        raise AutosegError(f"{images_dir}: no {file_ending} images in the folder")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    matches = [pattern.match(p.name) for p in files]
    if all(matches):
        groups: dict[str, dict[int, Path]] = {}
        for m, p in zip(matches, files):
            groups.setdefault(m.group(1), {})[int(m.group(2))] = p
        expected = set(range(num_channels))
        if any(set(g) == expected for g in groups.values()):
            problems = [f"{images_dir / (cid + '_0000' + file_ending)}: case {cid} has channel files "
                        f"{sorted(g)}, the model expects {sorted(expected)}"
                        for cid, g in groups.items() if set(g) != expected]
            if problems:
                raise AutosegError(*problems)
            return [InputCase(cid, tuple(g[c] for c in sorted(g))) for cid, g in sorted(groups.items())]
    return [InputCase(p.name[:-len(file_ending)], (p,)) for p in files]


def check_inputs(cases: Sequence[InputCase], num_channels: int) -> None:
    """Read every header (no pixel data): readable, 3D, and the right number of channels. All problems at once."""
    problems = []
    for case in cases:
        channels = 0
        for f in case.files:
            try:
                header = read_header(f)
            except AutosegError as e:
                problems.extend(e.problems)
                channels = None
                break
            if header.dimension not in (3, 4):
                problems.append(f"{f}: {header.dimension}D image, expected 3D (or 4D with channels)")
                channels = None
                break
            channels += header.channels
        if channels is not None and channels != num_channels:
            problems.append(f"{case.files[0]}: {channels} channel(s), the model expects {num_channels}")
    if problems:
        raise AutosegError(*problems)


def iter_logits(predictor, cases: Sequence[InputCase], desc: str = "predict", progress: bool = True
                ) -> Iterator[tuple[InputCase, Geometry, Any, torch.Tensor]]:
    """``(case, geometry, properties, logits)`` of every case, in order: read -> prepare -> network.

    The next case is read and preprocessed in a background thread while the network predicts the current one, so
    at most one case waits in memory besides the one being predicted. ``properties`` and ``logits`` are what the
    predictor's ``finish`` takes (``logits`` ``(K, Z, Y, X)`` on its preprocessed grid for a single
    configuration).

    Parameters
    ----------
    predictor
        A :class:`~autoseg.inference.predictor.Predictor` or anything with its ``prepare`` / ``logits``.
    cases
        The images to segment.
    desc
        Progress-bar label.
    """
    def load(case: InputCase):
        image, geometry = read_image(case.files)
        data, props = predictor.prepare(image, geometry, case.case_id)
        return case, geometry, data, props

    with ThreadPoolExecutor(1, thread_name_prefix="autoseg-read") as reader:
        nxt = reader.submit(load, cases[0]) if cases else None
        for i in tqdm(range(len(cases)), desc=desc, unit="case", disable=not progress, dynamic_ncols=True):
            case, geometry, data, props = nxt.result()
            nxt = reader.submit(load, cases[i + 1]) if i + 1 < len(cases) else None
            logits = predictor.logits(data)
            del data
            yield case, geometry, props, logits


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_folder` did: cases written and cases skipped (already present with ``continue``)."""

    written: tuple[str, ...]
    skipped: tuple[str, ...]
    output_dir: Path


def predict_folder(predictor: Predictor, images_dir: Path, output_dir: Path, file_ending: str = ".nii.gz",
                   save_probabilities: bool = False, overwrite: bool = False, continue_: bool = False,
                   progress: bool = True, postprocess=None) -> PredictSummary:
    """Segment every image of ``images_dir`` into ``output_dir/<case><file_ending>`` (same geometry as the input).

    Reading and preprocessing of the next case and writing of the previous one run in background threads while
    the network predicts the current case; at most two cases are in memory besides the one being predicted.

    Parameters
    ----------
    predictor
        Model(s) to use.
    images_dir, output_dir
        Input images (MSD or nnU-Net v2 naming) and where to write label maps.
    save_probabilities
        Also write ``<case>.npz`` with ``probabilities`` ``(K, z, y, x)`` float16 in the raw geometry.
    overwrite, continue_
        Existing outputs are an error unless ``overwrite`` (replace them) or ``continue_`` (keep them and skip
        those cases, e.g. after an interruption).
    postprocess
        Optional ``(segmentation) -> segmentation`` applied before writing.
    """
    output_dir = Path(output_dir)
    n_channels = len(predictor.plans.channel_names)
    cases = find_cases(images_dir, n_channels, file_ending)
    check_inputs(cases, n_channels)
    outputs = {c.case_id: segmentation_file(output_dir, c.case_id, file_ending) for c in cases}
    existing = [cid for cid, p in outputs.items() if p.exists()]
    if existing and not (overwrite or continue_):
        raise AutosegError(f"{outputs[existing[0]]}: {len(existing)} output file(s) already exist in {output_dir}; "
                           f"pass {option('continue_=True')} to skip them or {option('overwrite=True')} to replace "
                           f"them")
    todo = [c for c in cases if overwrite or c.case_id not in existing]
    skipped = tuple(c.case_id for c in cases if c not in todo)
    output_dir.mkdir(parents=True, exist_ok=True)

    def write(case_id: str, geometry, prediction) -> None:
        seg = prediction.segmentation if postprocess is None else postprocess(prediction.segmentation)
        write_image(seg, geometry, outputs[case_id])
        if prediction.probabilities is not None:
            probability_files.save_probabilities(probabilities_file(output_dir, case_id), prediction.probabilities)

    written = []
    with ThreadPoolExecutor(1, thread_name_prefix="autoseg-write") as writer:
        pending_write = None
        for case, geometry, props, logits in iter_logits(predictor, todo, "predict", progress):
            prediction = predictor.finish(logits, props, save_probabilities)
            del logits
            if pending_write is not None:
                pending_write.result()  # surfaces write errors, bounds memory to one case being written
            pending_write = writer.submit(write, case.case_id, geometry, prediction)
            written.append(case.case_id)
        if pending_write is not None:
            pending_write.result()
    return PredictSummary(tuple(written), skipped, output_dir)
