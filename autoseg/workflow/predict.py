"""Prediction with a dataset's trained models: which models (``best.json``'s choice, a configuration, folds, the
stage before a cascade), loaded once as a predictor, run over a folder of images with the chosen postprocessing."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

from autoseg import __version__
from autoseg.errors import AutosegError
from autoseg.inference.cascade import CascadePredictor
from autoseg.inference.ensemble import EnsemblePredictor
from autoseg.inference.predictor import Predictor
from autoseg.inference.run import PredictSummary, predict_folder
from autoseg.workflow.context import ALL, BEST, DEFAULT_CONFIGURATION, DatasetContext
from autoseg.workflow.selection import load_best

def default_configuration(ctx: DatasetContext) -> str:
    """``"best"`` once ``autoseg find-best`` wrote ``best.json``, else ``"3d_fullres"``."""
    return BEST if ctx.paths.best.is_file() else DEFAULT_CONFIGURATION


def describe_configuration(ctx: DatasetContext, configuration: str | Sequence[str] | None) -> str:
    """One line saying what :func:`predict` uses for ``configuration`` (``None``: the default; several: their
    probabilities averaged)."""
    if configuration is not None and not isinstance(configuration, str):
        return f"using {' + '.join(configuration)} (probabilities averaged, no postprocessing)"
    if configuration is None:
        configuration = default_configuration(ctx)
        if configuration != BEST:
            return (f"using {configuration} (no best.json yet: run `autoseg find-best {ctx.name}` once every fold "
                    f"is trained to choose)")
    if configuration != BEST:
        return f"using {configuration}"
    best, pp = load_best(ctx)
    from autoseg.postprocessing.components import describe_postprocessing

    rules = describe_postprocessing(pp, best.labels, best.region_names)
    return f"using best.json: {' + '.join(best.chosen)}; postprocessing: {rules}"


RUNTIMES = ("torch", "compiled", "onnxruntime")


def load_folds(ctx: DatasetContext, configuration: str, folds: Sequence[str], runtime: str = "torch", **kwargs):
    """A predictor over trained ``folds`` of ``configuration``; a cascade stage gets its previous stage in front.

    The previous stage uses the same folds when it has them all (fold ``k`` of both stages never saw fold ``k``'s
    validation cases), else every fold it has.

    Parameters
    ----------
    ctx
        The dataset.
    configuration, folds
        What to load (each fold needs a final checkpoint).
    runtime
        ``"torch"``; ``"compiled"``: torch with every network compiled first
        (:func:`autoseg.nn.speed.compile_for_inference`); or ``"onnxruntime"``: each fold's ``network.onnx`` (made
        from its checkpoint when missing or stale, :func:`autoseg.workflow.export.fold_onnx`), run by onnxruntime
        on the CPU in fp32.
    **kwargs
        :class:`~autoseg.inference.predictor.Predictor` options (device, precision, step, mirror).

    Returns
    -------
    Predictor or CascadePredictor
    """
    if runtime not in RUNTIMES:
        raise AutosegError(f"runtime '{runtime}': must be one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        from autoseg.workflow.export import fold_onnx

        files = [fold_onnx(ctx, configuration, f) for f in folds]
        onnx_kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "precision")}
        predictor = Predictor.from_onnx(ctx.plans, configuration, files, **onnx_kwargs)
    else:
        predictor = Predictor.from_checkpoints(ctx.plans, configuration,
                                               [ctx.fold(configuration, f).final_checkpoint for f in folds],
                                               compile=runtime == "compiled", **kwargs)
    previous = ctx.plans.configurations[configuration].previous_stage
    if previous is None:
        return predictor
    trained = ctx.trained_folds(previous)
    previous_folds = list(folds) if set(folds) <= set(trained) else [f for f in trained if f != ALL] or trained
    if not previous_folds:
        raise AutosegError(f"{ctx.paths.models(previous)}: {configuration} needs {previous}, which has no "
                           f"trained fold")
    return CascadePredictor(load_folds(ctx, previous, previous_folds, runtime, **kwargs), predictor)


def load_predictor(ctx: DatasetContext, configuration: str = DEFAULT_CONFIGURATION,
                   folds: Sequence[str] | None = None, device: str = "auto", precision: str = "auto",
                   step: float = 0.5, mirror: bool = True, runtime: str = "torch"):
    """A :class:`autoseg.inference.predictor.Predictor` over trained folds (default: every finished fold).

    ``configuration="best"``: the choice of ``best.json`` (its folds unless ``folds`` is given); two configurations
    give an :class:`autoseg.inference.ensemble.EnsemblePredictor`. Postprocessing is not part of the predictor
    (see :func:`autoseg.workflow.selection.load_best`). A cascade stage comes with its previous stage
    (:func:`load_folds`).
    """
    if not isinstance(configuration, str):  # several: an ensemble, each with the given (or its trained) folds
        members = [load_predictor(ctx, c, folds, device, precision, step, mirror, runtime) for c in configuration]
        return members[0] if len(members) == 1 else EnsemblePredictor(members)
    if configuration == BEST:
        best, _ = load_best(ctx)
        members = [load_predictor(ctx, c, folds or list(best.folds.get(c, ())) or None, device, precision, step,
                                  mirror, runtime) for c in best.chosen]
        return members[0] if len(members) == 1 else EnsemblePredictor(members)
    ctx.configuration(configuration)
    folds = [str(f) for f in folds] if folds else ctx.trained_folds(configuration)
    if not folds:
        raise AutosegError(f"{ctx.paths.models(configuration)}: no trained fold of {configuration}; run "
                           f"`autoseg train {ctx.name} -c {configuration}` first")
    return load_folds(ctx, configuration, folds, runtime, device=device, precision=precision, step=step,
                      mirror=mirror)


def check_predict(ctx: DatasetContext, images_dir: Path, configuration: str | Sequence[str] | None = None,
                  folds: Sequence[str] | None = None, output_format: str = "nifti") -> None:
    """What :func:`predict` would refuse, checked before anything is loaded or printed: the input folder (and
    that it holds images, or DICOM series the model and ``output_format`` fit), the configuration(s) planned
    (``best``: best.json present), the folds trained."""
    from autoseg.inference.run import find_input_cases, input_ending

    images_dir = Path(images_dir)
    find_input_cases(images_dir, len(ctx.plans.channel_names), input_ending(images_dir, ctx.spec.file_ending),
                     output_format)
    configuration = configuration or default_configuration(ctx)
    names = [configuration] if isinstance(configuration, str) else list(configuration)
    if BEST in names:
        best, _ = load_best(ctx)
        names = [n for n in names if n != BEST] + list(best.chosen)
    for name in names:
        ctx.configuration(name)
        trained = ctx.trained_folds(name)
        missing = [str(f) for f in folds or () if str(f) not in trained]
        if missing:
            raise AutosegError(f"{ctx.fold(name, missing[0]).root}: fold {missing[0]} of {name} is not trained "
                               f"(trained: {', '.join(trained) or 'none'})")
        if not trained:
            raise AutosegError(f"{ctx.paths.models(name)}: no trained fold of {name}; run "
                               f"`autoseg train {ctx.name} -c {name}` first")


def predict(ctx: DatasetContext, images_dir: Path, output_dir: Path, configuration: str | None = None,
            folds: Sequence[str] | None = None, save_probabilities: bool = False, step: float = 0.5,
            tta: bool = True, overwrite: bool = False, continue_: bool = False, device: str = "auto",
            precision: str = "auto", progress: bool = True, skip_bad: bool = False,
            roi_dir: Path | None = None, runtime: str = "torch", output_format: str = "nifti") -> PredictSummary:
    """Segment every image in ``images_dir`` into ``output_dir`` (see :func:`autoseg.api.predict`); label maps are
    written with the dataset's source label values (``autoseg convert``'s mapping undone), DICOM-SEGs with the
    label indices as segment numbers and the model identified (:func:`model_identification`)."""
    configuration = configuration or default_configuration(ctx)
    postprocess = None
    if configuration == BEST:
        from autoseg.postprocessing.components import apply_postprocessing

        _, pp = load_best(ctx)
        if pp is not None and not pp.is_identity:
            postprocess = partial(apply_postprocessing, pp=pp)
    predictor = load_predictor(ctx, configuration, folds, device, precision, step, tta, runtime)
    return predict_folder(predictor, Path(images_dir), Path(output_dir), ctx.spec.file_ending, save_probabilities,
                          overwrite, continue_, progress, postprocess=postprocess, skip_bad=skip_bad,
                          roi_dir=roi_dir, label_values=ctx.spec.source_label_values, output_format=output_format,
                          algorithm=model_identification(ctx, configuration, folds))


def model_identification(ctx: DatasetContext, configuration: str | Sequence[str],
                         folds: Sequence[str] | None = None) -> dict[str, object]:
    """How a DICOM-SEG names the model that made it: autoseg's version, the dataset, the configuration(s) and
    folds used (``best``: best.json's choice; folds as one list when every configuration uses the same, else
    ``"<configuration>: <folds>; ..."``)."""
    names = [configuration] if isinstance(configuration, str) else list(configuration)
    best_folds: dict[str, tuple[str, ...]] = {}
    if BEST in names:
        best, _ = load_best(ctx)
        best_folds = {c: tuple(str(f) for f in best.folds.get(c, ())) for c in best.chosen}
        names = [n for n in names if n != BEST] + list(best.chosen)
    used = {n: tuple(str(f) for f in folds) if folds else best_folds.get(n) or tuple(ctx.trained_folds(n))
            for n in dict.fromkeys(names)}
    sets = set(used.values())
    fold_text = list(sets.pop()) if len(sets) == 1 else "; ".join(f"{n}: {','.join(f)}" for n, f in used.items())
    return {"version": __version__, "dataset": ctx.name, "configuration": " + ".join(used), "folds": fold_text}
