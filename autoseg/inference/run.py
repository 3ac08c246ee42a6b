"""Predict a folder of raw images: discovery, checks, and a pipeline that overlaps I/O with network work."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from autoseg import __version__
from autoseg import progress as progress_bars
from autoseg.errors import AutosegError, option, require_extra
from autoseg.inference import dicom_input
from autoseg.inference.outputs import label_value_table
from autoseg.inference.predictor import Predictor
from autoseg.io.image import Geometry, write_image
from autoseg.io import natural
from autoseg.io.dicom import read_series
from autoseg.io.dicom_series import SeriesInfo
from autoseg.io.roi import apply_roi, apply_roi_to_probabilities, find_rois, read_roi
from autoseg.io.verify import LoadedCase, load_and_check_images, load_and_check_roi
from autoseg.schema.base import atomic_write_text
from autoseg.io import probabilities as probability_files
from autoseg.workspace import probabilities_file, segmentation_file


@dataclass(frozen=True)
class InputCase:
    """One image to segment: its id (output name) and channel files, or the DICOM series it is.

    Attributes
    ----------
    case_id
        Output name.
    files
        One file per channel (or one 4D file); a DICOM series' files, in the order they were found.
    series
        The DICOM series, ``None`` for image files.
    """

    case_id: str
    files: tuple[Path, ...]
    series: SeriesInfo | None = None


def find_input_cases(images_dir: Path, num_channels: int, file_ending: str = ".nii.gz",
                     output_format: str = dicom_input.NIFTI) -> list[InputCase]:
    """The cases of an input folder: its DICOM image series (any nesting) or its image files (:func:`find_cases`).

    The one place that tells the two apart (:func:`autoseg.inference.dicom_input.is_dicom_input`); DICOM case ids
    are described in :mod:`autoseg.inference.dicom_input`.

    Raises
    ------
    AutosegError
        The folder is missing, holds no images, mixes DICOM and image files; DICOM input for a model of several
        channels (or of 2D photographs); DICOM-SEG output for input that is not DICOM, or without its optional
        packages; an unknown ``output_format``.
    """
    dicom_input.check_output_format(output_format)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise AutosegError(f"{images_dir}: input folder not found")
    dicom = dicom_input.is_dicom_input(images_dir, file_ending)
    dicom_input.check_dicom_output(images_dir, output_format, dicom)
    if output_format == dicom_input.DICOM_SEG:
        require_extra("highdicom", "dicom", "writing DICOM-SEG")  # before any prediction, not after the first
    if not dicom:
        return find_cases(images_dir, num_channels, file_ending)
    dicom_input.check_dicom_model(images_dir, num_channels, file_ending)
    return [InputCase(cid, s.files, s) for cid, s in dicom_input.find_dicom_series(images_dir)]


def load_case(case: InputCase, num_channels: int, channel_names: Sequence[str] = ()) -> LoadedCase:
    """Read and check one case completely (never raises for bad input: the problems are in the result).

    Image files as :func:`autoseg.io.verify.load_and_check_images`; a DICOM series with
    :func:`autoseg.io.dicom.read_series` (``(1, z, y, x)`` float32, its refusals as the problems).
    """
    if case.series is None:
        return load_and_check_images(case.files, num_channels, channel_names)
    try:
        image, geometry = read_series(case.series)
    except AutosegError as e:
        return LoadedCase(None, None, None, e.problems)
    return LoadedCase(image, None, geometry, ())


def find_cases(images_dir: Path, num_channels: int, file_ending: str = ".nii.gz") -> list[InputCase]:
    """Group the images of a folder into cases.

    nnU-Net v2 naming (``<case>_0000<ending>``, one file per channel) when every file carries a 4-digit channel
    suffix and the groups hold exactly ``num_channels`` files (or, for 2D images, one ``_0000`` file each: an RGB
    file holds three channels); otherwise MSD naming: one file per case (a 4D file for several channels).

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
        if natural.has_natural_ending(file_ending) and all(set(g) == {0} for g in groups.values()):
            expected = {0}  # one RGB file holds every channel (nnU-Net's <case>_0000.png)
        if any(set(g) == expected for g in groups.values()):
            problems = [f"{images_dir / (cid + '_0000' + file_ending)}: case {cid} has channel files "
                        f"{sorted(g)}, the model expects {sorted(expected)}"
                        for cid, g in groups.items() if set(g) != expected]
            if problems:
                raise AutosegError(*problems)
            return [InputCase(cid, tuple(g[c] for c in sorted(g))) for cid, g in sorted(groups.items())]
    return [InputCase(p.name[:-len(file_ending)], (p,)) for p in files]


def input_ending(images_dir: Path, file_ending: str) -> str:
    """The ending of the images to segment: the dataset's, or for a 2D model the 2D format the folder holds when it
    has none of the dataset's (a model trained on TIFF photographs segments a folder of PNG files)."""
    if not natural.has_natural_ending(file_ending) or not images_dir.is_dir():
        return file_ending
    names = [p.name.lower() for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(n.endswith(file_ending.lower()) for n in names):
        return file_ending
    counts = {e: sum(n.endswith(e) for n in names) for e in natural.ENDINGS}
    best = max(counts, key=counts.get)
    return best if counts[best] else file_ending


def check_inputs(cases: Sequence[InputCase], num_channels: int, channel_names: Sequence[str] = (),
                 progress: bool = False, workers: int = 2) -> dict[str, tuple[str, ...]]:
    """Read and check every case completely (:func:`load_case`: for image files as ``verify`` does, every file
    decoded, channels, their grids, finite intensities; a DICOM series read as :func:`autoseg.io.dicom.read_series`
    reads it, its grid checked).

    Returns
    -------
    dict
        Case id -> its problems, one line each naming the file; only cases with problems.
    """
    def check(case: InputCase) -> tuple[str, tuple[str, ...]]:
        return case.case_id, load_case(case, num_channels, channel_names).problems

    # decoding is zlib and numpy work, which releases the GIL: threads overlap it without copying arrays around
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="autoseg-check") as pool:
        results = list(progress_bars.wrap(pool.map(check, cases), len(cases), "check inputs", "case", progress))
    return {cid: problems for cid, problems in results if problems}


def check_rois(cases: Sequence[InputCase], roi_dir: Path, file_ending: str
               ) -> tuple[dict[str, Path], dict[str, tuple[str, ...]]]:
    """Find and check every case's region-of-interest mask in ``roi_dir``.

    Returns
    -------
    rois, problems
        Case id -> mask file (the usable ones), and case id -> its problems (a missing mask, another grid ...).
    """
    if not roi_dir.is_dir():
        raise AutosegError(f"{roi_dir}: region-of-interest folder not found")
    rois, problems = {}, {}
    for case in cases:
        try:
            path = find_rois(roi_dir, [case.case_id], file_ending)[case.case_id]
        except AutosegError as e:
            problems[case.case_id] = tuple(e.problems)
            continue
        _, found = load_and_check_roi(path, case.files[0])
        if found:
            problems[case.case_id] = tuple(found)
        else:
            rois[case.case_id] = path
    return rois, problems


def check_output_dir(output_dir: Path, images_dir: Path) -> None:
    """Refuse an output location before any work: a file, inside the input folder, or not writable."""
    out, images = Path(output_dir), Path(images_dir)
    if out.exists() and not out.is_dir():
        raise AutosegError(f"{out}: output path is an existing file, not a folder")
    resolved, inputs = out.resolve(), images.resolve()
    if resolved == inputs or inputs in resolved.parents:
        raise AutosegError(f"{out}: output folder is inside the input folder {images}; outputs would be mixed "
                           f"into the inputs (choose a folder outside it)")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir():
        raise AutosegError(f"{existing}: is a file, so the output folder {out} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AutosegError(f"{existing}: not writable (permission denied), so {out} cannot be written")


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
        loaded = load_case(case, len(predictor.plans.channel_names), predictor.plans.channel_names)
        if loaded.problems:  # the check before prediction passed; the file changed since
            raise AutosegError(*loaded.problems)
        data, props = predictor.prepare(loaded.image, loaded.geometry, case.case_id)
        return case, loaded.geometry, data, props

    with ThreadPoolExecutor(1, thread_name_prefix="autoseg-read") as reader:
        nxt = reader.submit(load, cases[0]) if cases else None
        for i in progress_bars.wrap(range(len(cases)), len(cases), desc, "case", progress):
            case, geometry, data, props = nxt.result()
            nxt = reader.submit(load, cases[i + 1]) if i + 1 < len(cases) else None
            logits = predictor.logits(data)
            del data
            yield case, geometry, props, logits


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_folder` did: cases written, cases skipped (already present with ``continue``), and
    cases refused as bad input (with ``skip_bad``: id -> problems, also in ``failures.json``)."""

    written: tuple[str, ...]
    skipped: tuple[str, ...]
    output_dir: Path
    failed: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def failures_file(self) -> Path:
        return Path(self.output_dir) / FAILURES_FILE


#: Written by ``predict --skip-bad`` next to the predictions when some inputs were refused.
FAILURES_FILE = "failures.json"


def predict_folder(predictor: Predictor, images_dir: Path, output_dir: Path, file_ending: str = ".nii.gz",
                   save_probabilities: bool = False, overwrite: bool = False, continue_: bool = False,
                   progress: bool = True, postprocess=None, skip_bad: bool = False, roi_dir: Path | None = None,
                   label_values: Sequence[int] | None = None, output_format: str = dicom_input.NIFTI,
                   algorithm: Mapping[str, object] | None = None) -> PredictSummary:
    """Segment every image of ``images_dir`` into ``output_dir/<case><file_ending>`` (same geometry as the input;
    2D images as files of the same format, JPEG as PNG; DICOM series as ``<case>.nii.gz`` or ``<case>.dcm``).

    Reading and preprocessing of the next case and writing of the previous one run in background threads while
    the network predicts the current case; at most two cases are in memory besides the one being predicted.

    Parameters
    ----------
    predictor
        Model(s) to use.
    images_dir, output_dir
        Input images (MSD or nnU-Net v2 naming, or DICOM image series at any depth: one case each, see
        :mod:`autoseg.inference.dicom_input`) and where to write label maps.
    save_probabilities
        Also write ``<case>.npz`` with ``probabilities`` ``(K, z, y, x)`` float16 in the raw geometry.
    overwrite, continue_
        Existing outputs are an error unless ``overwrite`` (replace them) or ``continue_`` (keep them and skip
        those cases, e.g. after an interruption).
    postprocess
        Optional ``(segmentation) -> segmentation`` applied before writing.
    skip_bad
        Inputs are all read and checked first (:func:`check_inputs`). By default any bad input stops the run
        before anything is written, with one line per problem; with ``skip_bad`` the good cases are predicted and
        the bad ones listed in ``failures.json`` (and :attr:`PredictSummary.failed`).
    roi_dir
        Region-of-interest masks ``<case><ending>`` (nonzero inside, on the image's grid), one per case: outside
        them the segmentation is background. A missing or unfit mask is a bad input like a bad image.
    label_values
        The value written for each label index (the dataset's ``source_label_values``, e.g. ``(0, 255)``);
        ``None`` writes the indices.
    output_format
        ``"nifti"``: label maps as images (the input's format; ``.nii.gz`` for DICOM input); ``"dicom-seg"``
        (DICOM input only): one DICOM-SEG ``<case>.dcm`` per series (:func:`autoseg.io.dicom_seg.write_dicom_seg`),
        one segment per foreground label of the plans, segment number = label index (not ``label_values``).
    algorithm
        The model as the DICOM-SEGs identify it: ``version``, ``dataset``, ``configuration``, ``folds`` (default:
        autoseg's version and the plans' dataset name).
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, images_dir)
    file_ending = input_ending(Path(images_dir), file_ending)
    cases, bad, rois = _good_cases(predictor, Path(images_dir), file_ending, roi_dir, skip_bad, progress,
                                   output_format)
    lut = label_value_table(label_values)
    outputs = {c.case_id: segmentation_file(output_dir, c.case_id, _output_ending(c, file_ending, output_format))
               for c in cases}
    todo, skipped = _cases_to_predict(cases, outputs, output_dir, overwrite, continue_)
    output_dir.mkdir(parents=True, exist_ok=True)
    seg = _seg_writer(predictor.plans, algorithm) if output_format == dicom_input.DICOM_SEG else None
    write = _case_writer(output_dir, outputs, {c.case_id: c for c in cases}, rois, postprocess, lut, seg)
    written = _predict_and_write(predictor, todo, write, save_probabilities, progress)
    _update_failures_file(output_dir, bad)
    return PredictSummary(tuple(written), skipped, output_dir, bad)


def _output_ending(case: InputCase, file_ending: str, output_format: str) -> str:
    if case.series is None:
        return natural.output_ending(file_ending)
    return dicom_input.SEG_ENDING if output_format == dicom_input.DICOM_SEG else dicom_input.NIFTI_ENDING


def _seg_writer(plans, algorithm: Mapping[str, object] | None) -> Callable[[Any, InputCase, Path], None]:
    """``write(labels, case, path)``: a label map of indices as the DICOM-SEG of the case's series."""
    from autoseg.io.dicom_seg import write_dicom_seg

    names = dict(enumerate(plans.labels))
    model = {"version": __version__, "dataset": plans.dataset_name, **(algorithm or {})}

    def write(labels, case: InputCase, path: Path) -> None:
        write_dicom_seg(labels, case.series, names, model, path)

    return write


def _good_cases(predictor: Predictor, images_dir: Path, file_ending: str, roi_dir: Path | None, skip_bad: bool,
                progress: bool, output_format: str = dicom_input.NIFTI
                ) -> tuple[list[InputCase], dict[str, tuple[str, ...]], dict[str, Path]]:
    """Find the cases of ``images_dir`` and check each one's images and region-of-interest mask completely.

    Returns
    -------
    cases, bad, rois
        The good cases, in order; case id -> problems of every bad one; case id -> mask file of the good ones.

    Raises
    ------
    AutosegError
        Any bad case without ``skip_bad``: one line per problem, in case order, before anything is written.
    """
    n_channels = len(predictor.plans.channel_names)
    cases = find_input_cases(images_dir, n_channels, file_ending, output_format)
    if roi_dir is not None and any(c.series is not None for c in cases):
        raise AutosegError(f"{roi_dir}: region-of-interest masks are not supported for DICOM input "
                           f"({images_dir}); predict without {option('roi_dir')}")
    bad = check_inputs(cases, n_channels, predictor.plans.channel_names, progress)
    if output_format == dicom_input.DICOM_SEG:
        bad.update(_seg_source_problems([c for c in cases if c.case_id not in bad]))
    rois = {}
    if roi_dir is not None:
        rois, roi_bad = check_rois(cases, Path(roi_dir), file_ending)
        for cid, problems in roi_bad.items():
            bad[cid] = bad.get(cid, ()) + problems
    if bad and not skip_bad:
        raise AutosegError(*[line for c in cases for line in bad.get(c.case_id, ())])
    return [c for c in cases if c.case_id not in bad], bad, rois


def _seg_source_problems(cases: Sequence[InputCase]) -> dict[str, tuple[str, ...]]:
    """Case id -> why its series cannot be the source of a DICOM-SEG (no frame of reference ...), found before
    any case is predicted rather than when its SEG is written."""
    from autoseg.io.dicom_seg import check_seg_source

    problems = {}
    for case in cases:
        try:
            check_seg_source(case.series)
        except AutosegError as e:
            problems[case.case_id] = e.problems
    return problems


def _cases_to_predict(cases: Sequence[InputCase], outputs: dict[str, Path], output_dir: Path, overwrite: bool,
                      continue_: bool) -> tuple[list[InputCase], tuple[str, ...]]:
    """The cases to predict and the ids of those skipped because their output exists (``continue_``).

    Raises
    ------
    AutosegError
        Some outputs exist already and neither ``overwrite`` nor ``continue_`` says what to do with them.
    """
    existing = [cid for cid, p in outputs.items() if p.exists()]
    if existing and not (overwrite or continue_):
        raise AutosegError(f"{outputs[existing[0]]}: {len(existing)} output file(s) already exist in {output_dir}; "
                           f"pass {option('continue_=True')} to skip them or {option('overwrite=True')} to replace "
                           f"them")
    todo = [c for c in cases if overwrite or c.case_id not in existing]
    return todo, tuple(c.case_id for c in cases if c not in todo)


def _case_writer(output_dir: Path, outputs: dict[str, Path], cases: dict[str, InputCase], rois: dict[str, Path],
                 postprocess, lut, seg_writer: Callable[[Any, InputCase, Path], None] | None = None
                 ) -> Callable[[str, Geometry, Any], None]:
    """The function that writes one case's prediction: ``write(case_id, geometry, prediction)``.

    It postprocesses the segmentation, sets it to background outside the case's region of interest (``rois``,
    read against the case's first image file), writes it to ``outputs[case_id]`` in the label values of ``lut``
    (``None``: the indices) or, with ``seg_writer``, as the DICOM-SEG of the case's series (label indices), and
    its probabilities, when predicted, beside it.
    """
    def write(case_id: str, geometry, prediction) -> None:
        seg = prediction.segmentation if postprocess is None else postprocess(prediction.segmentation)
        roi = read_roi(rois[case_id], cases[case_id].files[0]) if case_id in rois else None
        seg = apply_roi(seg, roi)
        if seg_writer is not None:
            seg_writer(seg, cases[case_id], outputs[case_id])
        else:
            write_image(seg if lut is None else lut[seg], geometry, outputs[case_id])
        if prediction.probabilities is not None:
            probability_files.save_probabilities(probabilities_file(output_dir, case_id),
                                                 apply_roi_to_probabilities(prediction.probabilities, roi))

    return write


def _predict_and_write(predictor: Predictor, cases: Sequence[InputCase], write: Callable[[str, Geometry, Any], None],
                       save_probabilities: bool, progress: bool) -> list[str]:
    """Predict ``cases`` in order and ``write`` each one in a background thread; the ids written.

    The previous case is written while the network predicts the current one (and :func:`iter_logits` reads the
    next), so at most two cases are in memory besides the one being predicted.
    """
    written = []
    with ThreadPoolExecutor(1, thread_name_prefix="autoseg-write") as writer:
        pending_write = None
        for case, geometry, props, logits in iter_logits(predictor, cases, "predict", progress):
            prediction = predictor.finish(logits, props, save_probabilities)
            del logits
            if pending_write is not None:
                pending_write.result()  # surfaces write errors, bounds memory to one case being written
            pending_write = writer.submit(write, case.case_id, geometry, prediction)
            written.append(case.case_id)
        if pending_write is not None:
            pending_write.result()
    return written


def _update_failures_file(output_dir: Path, bad: dict[str, tuple[str, ...]]) -> None:
    """List the refused cases in :data:`FAILURES_FILE` (``skip_bad``), or remove the list when none was refused."""
    failures = output_dir / FAILURES_FILE
    if bad:
        atomic_write_text(failures, json.dumps({"failures": [
            {"case": cid, "problems": list(problems)} for cid, problems in sorted(bad.items())]}, indent=1) + "\n")
    elif failures.is_file():
        failures.unlink()  # from an earlier run of this folder: every input is good now
