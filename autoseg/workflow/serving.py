"""Models loaded once for a long-running server: one trained (or imported) dataset each, segmenting single files.

The HTTP layer (:mod:`autoseg.server`) knows requests and responses; this module knows which configuration and
folds a dataset is served with, how an uploaded file is checked, predicted, postprocessed and written back in the
input's format and geometry. Nothing here imports a web framework.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.inference.outputs import label_value_table
from autoseg.io import natural
from autoseg.io.image import write_image
from autoseg.io.verify import load_and_check_images
from autoseg.workflow.context import BEST, DEFAULT_CONFIGURATION, DatasetContext, load_context
from autoseg.workflow.predict import describe_configuration, load_predictor
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

    def segment(self, image_file: Path, out_file: Path, source_values: bool = True) -> None:
        """Segment one uploaded image file into ``out_file`` (its ending picks the format), with the input's
        geometry.

        Parameters
        ----------
        source_values
            Write the dataset's source label values (``autoseg convert``'s mapping undone, as ``autoseg predict``
            does); ``False``: the consecutive label indices.

        Raises
        ------
        AutosegError
            The file is not an image this model takes (unreadable, truncated, wrong channel count, NaN ...).
        """
        loaded = load_and_check_images([Path(image_file)], len(self._channels), self._channels)
        if loaded.problems:
            raise AutosegError(loaded.problems[0])
        start = time.perf_counter()
        seg = self._predictor.predict(loaded.image, loaded.geometry, Path(image_file).name).segmentation
        if self._postprocess is not None:
            seg = self._postprocess(seg)
        self.last_seconds = time.perf_counter() - start
        if source_values and self._source_values is not None:
            seg = self._source_values[seg]
        write_image(seg, loaded.geometry, Path(out_file))


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
                       _postprocess=postprocess, _source_values=lut, _channels=tuple(plans.channel_names))


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
