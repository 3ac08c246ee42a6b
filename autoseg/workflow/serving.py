"""Models loaded once for a long-running server: one trained (or imported) dataset each, segmenting single files.

The HTTP layer (:mod:`autoseg.server`) knows requests and responses; this module knows which configuration and
folds a dataset is served with, how an uploaded file is checked, predicted, postprocessed and written back in the
input's format and geometry, and how a DICOM series (a folder of its files) becomes a label map and a DICOM-SEG.
Nothing here imports a web framework.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg import __version__
from autoseg.errors import AutosegError
from autoseg.inference.outputs import label_value_table
from autoseg.io import natural
from autoseg.io.image import Geometry, write_image
from autoseg.io.verify import load_and_check_images
from autoseg.workflow.context import BEST, DEFAULT_CONFIGURATION, DatasetContext, load_context
from autoseg.workflow.predict import describe_configuration, load_predictor, model_identification
from autoseg.workflow.selection import load_best
from autoseg.workspace import Workspace

#: Endings an upload may have (one file per image: no ``.mhd``/``.nhdr`` with a separate data file).
UPLOAD_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", *natural.ENDINGS)


def upload_ending(filename: str | None, head: bytes) -> str | None:
    """The ending of an uploaded file: from the last component of its name (clients send full local paths,
    Windows ones too), else sniffed from its first bytes; ``None`` when neither tells.

    Examples
    --------
    >>> upload_ending("C:\\\\scans\\\\MR Head.nii.gz", b""), upload_ending("/tmp/x.NRRD", b"")
    ('.nii.gz', '.nrrd')
    >>> upload_ending("blob", b"\\x1f\\x8b\\x08"), upload_ending(None, b"NRRD0004"), upload_ending("x", b"??")
    ('.nii.gz', '.nrrd', None)
    """
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].lower()
    for ending in UPLOAD_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return ending
    if head[:2] == b"\x1f\x8b":
        return ".nii.gz"
    if head[:4] == b"NRRD":
        return ".nrrd"
    if head[:10] == b"ObjectType" or head[:5] == b"NDims":
        return ".mha"
    if head[344:348] in (b"n+1\x00", b"n+2\x00"):
        return ".nii"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return None


@dataclass
class ServedModel:
    """One dataset's predictor, loaded once.

    Attributes
    ----------
    name
        The dataset name: the model's name in URLs.
    configuration
        What it predicts with (``best``: best.json's choice).
    description
        One line for clients (configuration, folds, postprocessing).
    label_names
        Foreground label names; label value ``k`` of a result is ``label_names[k - 1]`` (consecutive values, as
        3D Slicer maps them).
    dims
        3, or 2 for a model of 2D images.
    last_seconds
        Duration of the last prediction, seconds (reported in ``/infer``'s latencies; the server's Retry-After
        estimates time whole requests itself).
    algorithm
        How a DICOM-SEG identifies the model (:func:`autoseg.workflow.predict.model_identification`: autoseg's
        version, the dataset, configuration and folds).
    """

    name: str
    configuration: str
    description: str
    label_names: tuple[str, ...]
    dims: int
    _predictor: object
    _postprocess: Callable[[np.ndarray], np.ndarray] | None
    _source_values: np.ndarray | None
    _channels: tuple[str, ...]
    last_seconds: float = 0.0
    algorithm: dict | None = None

    def segment(self, image_file: Path, out_file: Path, source_values: bool = True) -> None:
        """Segment one uploaded image file, or a folder holding one DICOM series, into ``out_file`` (its ending
        picks the format), with the input's geometry.

        Parameters
        ----------
        source_values
            Write the dataset's source label values (``autoseg convert``'s mapping undone, as ``autoseg predict``
            does); ``False``: the consecutive label indices.

        Raises
        ------
        AutosegError
            The file is not an image this model takes (unreadable, truncated, wrong channel count, NaN ...), or
            the folder's series fails the DICOM checks of :func:`autoseg.io.dicom.read_series_layout`.
        """
        image_file = Path(image_file)
        if image_file.is_dir():
            image, geometry = self._read_series(image_file)[:2]
        else:
            loaded = load_and_check_images([image_file], len(self._channels), self._channels)
            if loaded.problems:
                raise AutosegError(loaded.problems[0])
            image, geometry = loaded.image, loaded.geometry
        seg = self._predict(image, geometry, image_file.name)
        if source_values and self._source_values is not None:
            seg = self._source_values[seg]
        write_image(seg, geometry, Path(out_file))

    def segment_series(self, folder: Path, seg_file: Path, out_file: Path) -> None:
        """Segment the one DICOM series in ``folder``: the label map into ``out_file`` (its ending picks the
        format; consecutive label values, the series' geometry) and a DICOM-SEG referencing the series into
        ``seg_file`` (segment number = label value, named by the dataset's labels, identified by
        :attr:`algorithm`).

        Raises
        ------
        AutosegError
            The series fails the DICOM checks, or the model takes more than one channel.
        """
        from autoseg.io.dicom_seg import write_dicom_seg

        image, geometry, series = self._read_series(Path(folder))
        seg = self._predict(image, geometry, series.uid)
        names = {k: name for k, name in enumerate(self.label_names, 1)}
        algorithm = self.algorithm or {"version": __version__, "dataset": self.name}
        write_dicom_seg(seg, series, names, algorithm, seg_file)
        write_image(seg, geometry, Path(out_file))

    def _read_series(self, folder: Path):
        """``(image, geometry, series)`` of the one DICOM series in ``folder``: one channel, so refused for a
        model of several."""
        from autoseg.io.dicom import read_series, select_series

        series = select_series(folder)
        if len(self._channels) != 1:
            raise AutosegError(f"{series.name()}: one DICOM series is one channel, the model expects "
                               f"{len(self._channels)} ({', '.join(self._channels)})")
        image, geometry = read_series(series)
        return image, geometry, series

    def _predict(self, image: np.ndarray, geometry: Geometry, name: str) -> np.ndarray:
        """The postprocessed label map (consecutive values) of a checked ``(C, z, y, x)`` image, timed."""
        start = time.perf_counter()
        seg = self._predictor.predict(image, geometry, name).segmentation
        if self._postprocess is not None:
            seg = self._postprocess(seg)
        self.last_seconds = time.perf_counter() - start
        return seg


def _served_configuration(ctx: DatasetContext, configuration: str | None) -> str:
    """The configuration a dataset is served with: the given one, else best.json's choice, else 3d_fullres, else
    the first planned configuration with a trained fold."""
    if configuration is not None:
        return configuration
    if ctx.paths.best.is_file():
        return BEST
    trained = [c for c in ctx.configurations if ctx.trained_folds(c)]
    if not trained:
        raise AutosegError(f"{ctx.paths.root / 'models'}: dataset '{ctx.name}' has no trained fold to serve")
    return DEFAULT_CONFIGURATION if DEFAULT_CONFIGURATION in trained else trained[0]


def load_served_model(ctx: DatasetContext, configuration: str | None = None, device: str = "auto",
                      precision: str = "auto", step: float = 0.5, mirror: bool = True,
                      runtime: str = "torch") -> ServedModel:
    """Load one dataset's model for serving (:func:`autoseg.workflow.predict.load_predictor` options)."""
    configuration = _served_configuration(ctx, configuration)
    predictor = load_predictor(ctx, configuration, None, device, precision, step, mirror, runtime)
    postprocess = None
    if configuration == BEST:
        from functools import partial

        from autoseg.postprocessing.components import apply_postprocessing

        _, pp = load_best(ctx)
        if pp is not None and not pp.is_identity:
            postprocess = partial(apply_postprocessing, pp=pp)
    values = ctx.spec.source_label_values
    plans = ctx.plans
    dims = min(c.dims for c in plans.configurations.values()) if configuration == BEST else \
        plans.configurations[configuration].dims
    lut = label_value_table(values)
    return ServedModel(name=ctx.name, configuration=configuration,
                       description=f"autoseg {ctx.name}: {describe_configuration(ctx, configuration)}",
                       label_names=tuple(plans.labels[1:]), dims=dims, _predictor=predictor,
                       _postprocess=postprocess, _source_values=lut, _channels=tuple(plans.channel_names),
                       algorithm=model_identification(ctx, configuration))


def servable_datasets(workspace: Path, names: Sequence[str] = ()) -> list[DatasetContext]:
    """The contexts of ``names`` (default: every dataset of the workspace with a trained or imported fold)."""
    ws = Workspace(Path(workspace))
    if names:
        return [load_context(ws.root, n) for n in dict.fromkeys(names)]
    contexts = []
    for name in ws.datasets():
        ctx = load_context(ws.root, name)
        if any(ctx.trained_folds(c) for c in ctx.configurations):
            contexts.append(ctx)
    if not contexts:
        raise AutosegError(f"{ws.root}: no dataset with a trained or imported model to serve")
    return contexts
