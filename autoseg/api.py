"""The public face of autoseg: everything the CLI does, as plain functions with explicit arguments.

Each function takes a workspace and a dataset name, loads the dataset's context once
(:func:`autoseg.workflow.context.load_context`) and hands it to the workflow layer (:mod:`autoseg.workflow`), which
orchestrates the layers below. Problems with the user's input raise :class:`autoseg.errors.AutosegError`; nothing
is written before all checks of a step have passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autoseg.errors import AutosegError
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.plans import Plans
from autoseg.workflow.context import BEST, DEFAULT_CONFIGURATION, DatasetContext, load_context
from autoseg.workflow.plan import (PlanResult, cpu_budget_advice, cuda_memory_gb, device_throughput, memory_target,
                                   plan, preprocess_planned, verify)
from autoseg.workspace import Workspace

__all__ = ["verify", "plan", "cpu_budget_advice", "device_throughput", "preprocess", "load_plans", "load_context",
           "evaluate", "train", "train_all", "run_plan",
           "trained_folds", "find_best", "load_best", "default_configuration", "describe_configuration",
           "load_predictor", "predict", "demo", "export_model", "import_model", "report", "PlanResult",
           "DatasetContext", "Workspace", "cuda_memory_gb", "memory_target", "preprocess_planned", "BEST",
           "DEFAULT_CONFIGURATION"]

def load_plans(workspace: Path, dataset: str) -> Plans:
    """The plans of ``dataset`` in ``workspace`` (a clear error when it was never planned)."""
    return load_context(workspace, dataset).plans


def preprocess(workspace: Path, dataset: str, configs: list[str] | None = None, num_workers: int | None = None,
               progress: bool = True):
    """Preprocess a planned dataset's training cases (restartable); see :func:`autoseg.workflow.plan.preprocess`.
    Returns a :class:`autoseg.preprocessing.run.PreprocessResult`."""
    from autoseg.workflow.plan import preprocess as _preprocess

    return _preprocess(load_context(workspace, dataset), configs, num_workers, progress)


def evaluate(pred_dir: Path, gt_dir: Path, workspace: Path | None = None, dataset: str | None = None,
             num_workers: int | None = None, labels: list[int | str] | None = None, output: Path | None = None,
             nsd_tolerance_mm: float = 1.0, progress: bool = True, predicted_only: bool = False,
             roi_dir: Path | None = None, regions=None) -> EvaluationSummary:
    """Evaluate predicted label maps against references; writes ``summary.json`` (default in ``pred_dir``).

    Parameters
    ----------
    pred_dir, gt_dir
        Folders of ``<case><file_ending>`` label maps; every reference case needs a prediction unless
        ``predicted_only``, which scores the cases that have one.
    workspace, dataset
        A planned dataset: its labels (names and values, from ``plans.json``) and file ending are used.
    num_workers
        Parallel processes (default: one per core).
    labels
        Label values or names to evaluate (default: the dataset's foreground labels, else every nonzero value
        found in the references).
    output
        Summary file (default ``pred_dir/summary.json``).
    nsd_tolerance_mm
        Tolerance of the normalised surface Dice, mm.
    progress
        Show a progress bar.
    roi_dir
        Region-of-interest masks ``<case><ending>``: scores are computed inside them only.
    regions
        :class:`autoseg.schema.dataset.Region` s to score instead of labels (e.g. from
        :func:`autoseg.evaluation.folder.parse_regions`); default: the dataset's regions if it declares any.

    Without ``dataset`` the file ending is the one most reference files have; with it, the dataset's ignore label
    (if any) is left out of the scores.
    """
    from autoseg.evaluation.folder import evaluate_folder, reference_ending

    label_names, file_ending, ignore_label = None, reference_ending(Path(gt_dir)), None
    if dataset is not None:
        if workspace is None:
            raise AutosegError(f"dataset '{dataset}' given without a workspace to find it in")
        ctx = load_context(workspace, dataset)
        label_names, file_ending, ignore_label = ctx.plans.labels, ctx.spec.file_ending, ctx.spec.ignore_label
        regions = regions if regions is not None else ctx.spec.regions
        if labels is None and regions is None:
            labels = list(range(1, len(label_names)))
    return evaluate_folder(Path(pred_dir), Path(gt_dir), labels, num_workers, file_ending, label_names=label_names,
                           nsd_tolerance_mm=nsd_tolerance_mm, output=output, progress=progress,
                           predicted_only=predicted_only, roi=roi_dir, ignore_label=ignore_label,
                           regions=regions)


def train(workspace: Path, dataset: str, configuration: str, fold: str = "0", device: str = "auto",
          resume: bool = False, overwrite: bool = False, validate: bool = True, progress: bool = True,
          distributed=None, **overrides):
    """Train one fold of one configuration; returns a :class:`autoseg.workflow.fold.TrainResult`.

    ``overrides`` are :class:`autoseg.schema.training.TrainConfig` fields (``epochs``, ``iterations_per_epoch``,
    ``budget_minutes``, ``seed``, ``deterministic``, ``precision`` ...). See :func:`autoseg.workflow.fold.run_fold`
    for the resume / extend rules.
    """
    from autoseg.workflow.fold import run_fold

    ctx = load_context(workspace, dataset, create_splits=True)
    return run_fold(ctx, configuration, str(fold), overrides, device=device, resume=resume, overwrite=overwrite,
                    validate=validate, progress=progress, distributed=distributed)


def train_all(workspace: Path, dataset: str, configurations: list[str] | None = None, folds: list[str] | None = None,
              budget_minutes: float | None = None, device: str = "auto", progress: bool = True, validate: bool = True,
              select: bool = True, report=print, allocation: str = "plan", **overrides):
    """Train the dataset's run, then select: the run plan (``budget_minutes`` is the wall-clock time of the whole
    run; ``plan --budget`` stored one) or every planned configuration x every fold; see
    :func:`autoseg.workflow.automl.train_all`. ``allocation="uniform"``: split ``budget_minutes`` evenly over
    every configuration x fold instead (the behaviour before run plans). Returns ``(results, best)``."""
    from autoseg.workflow.automl import train_all as _train_all

    return _train_all(load_context(workspace, dataset, create_splits=True), configurations, folds, budget_minutes,
                      device, progress, validate, select, report, allocation, **overrides)


def run_plan(workspace: Path, dataset: str):
    """The dataset's run plan (:class:`autoseg.schema.run_plan.RunPlan`, written by ``plan --budget`` or
    ``train --budget``), ``None`` without one of its current plans."""
    from autoseg.workflow.automl import load_run_plan

    return load_run_plan(load_context(workspace, dataset))


def _job_graph(workspace: Path, dataset: str, configurations, folds, budget_minutes, train_flags, device, precision):
    """``(ctx, run plan, job graph)`` of ``autoseg train DATASET``; the workspace is made absolute because the jobs
    may run in other folders or on other machines."""
    from autoseg.workflow.automl import plan_run
    from autoseg.workflow.jobs import job_graph

    workspace = Path(workspace).resolve()
    ctx = load_context(workspace, dataset, create_splits=True)
    run = plan_run(ctx, configurations, folds, budget_minutes, device, precision)
    return ctx, run, job_graph(ctx, run, workspace, train_flags)


def job_script(workspace: Path, dataset: str, fmt: str = "shell", configurations: list[str] | None = None,
               folds: list[str] | None = None, budget_minutes: float | None = None, train_flags: list[str] = (),
               sbatch_options: list[str] = (), device: str = "auto", precision: str | None = None) -> str:
    """``autoseg train DATASET``'s jobs as a shell (``fmt="shell"``) or sbatch (``"slurm"``) script; see
    :mod:`autoseg.workflow.jobs`."""
    from autoseg.workflow.jobs import render

    ctx, run, graph = _job_graph(workspace, dataset, configurations, folds, budget_minutes, train_flags, device,
                                 precision)
    return render(graph, ctx.name, fmt, ctx.paths.root / "jobs", sbatch_options, run.skipped)


def train_on_cluster(workspace: Path, dataset: str, cluster: str, configurations: list[str] | None = None,
                     folds: list[str] | None = None, budget_minutes: float | None = None,
                     train_flags: list[str] = (), device: str = "auto", precision: str | None = None,
                     progress: bool = True, report=print, job_timeout_minutes: float | None = None):
    """``autoseg train DATASET --cluster SPEC``: the run's fold jobs and ``find-best`` on a Dask cluster (see
    :mod:`autoseg.workflow.cluster`; a job whose log does not grow for ``job_timeout_minutes``, default
    :data:`autoseg.workflow.cluster.JOB_TIMEOUT_MINUTES`, is killed and retried). Returns the
    :class:`autoseg.schema.selection.BestChoice` it wrote, or ``None`` when nothing was complete enough to
    select."""
    from autoseg.workflow.cluster import JOB_TIMEOUT_MINUTES, parse_cluster_spec, run_graph

    spec = parse_cluster_spec(cluster)  # a bad SPEC is refused before anything is measured or started
    ctx, run, graph = _job_graph(workspace, dataset, configurations, folds, budget_minutes, train_flags, device,
                                 precision)
    report(run.summary())
    run_graph(graph, spec, ctx.paths.root / "jobs", report, progress, job_timeout_minutes or JOB_TIMEOUT_MINUTES)
    if not any(j.name == "find-best" for j in graph):
        return None
    from autoseg.schema.base import load_json
    from autoseg.schema.selection import BestChoice

    return load_json(BestChoice, ctx.paths.best)


def trained_folds(workspace: Path, dataset: str, configuration: str) -> list[str]:
    """Folds of ``configuration`` with a final checkpoint."""
    return load_context(workspace, dataset).trained_folds(configuration)


def find_best(workspace: Path, dataset: str, configurations: list[str] | None = None,
              num_workers: int | None = None, progress: bool = True):
    """Rank the cross-validated configurations and their pairs, choose postprocessing; writes ``best.json`` and
    ``postprocessing.json``. Returns a :class:`autoseg.schema.selection.BestChoice`; see
    :func:`autoseg.workflow.selection.find_best`."""
    from autoseg.workflow.selection import find_best as _find_best

    return _find_best(load_context(workspace, dataset), configurations, num_workers=num_workers, progress=progress)


def load_best(workspace: Path, dataset: str):
    """``(BestChoice, Postprocessing | None)`` of a dataset on which ``autoseg find-best`` ran."""
    from autoseg.workflow.selection import load_best as _load_best

    return _load_best(load_context(workspace, dataset))


def default_configuration(workspace: Path, dataset: str) -> str:
    """``"best"`` once ``autoseg find-best`` wrote ``best.json``, else ``"3d_fullres"``."""
    from autoseg.workflow.predict import default_configuration as _default

    return _default(load_context(workspace, dataset))


def check_predict(workspace: Path, dataset: str, images_dir: Path, configuration=None, folds=None,
                  output_format: str = "nifti") -> None:
    """Raise what :func:`predict` would refuse before it loads anything (input folder, output format,
    configuration, folds); see :func:`autoseg.workflow.predict.check_predict`."""
    from autoseg.workflow.predict import check_predict as _check

    _check(load_context(workspace, dataset), Path(images_dir), configuration, folds, output_format)


def describe_configuration(workspace: Path, dataset: str, configuration: str | None) -> str:
    """One line saying what :func:`predict` uses for ``configuration`` (``None``: the default)."""
    from autoseg.workflow.predict import describe_configuration as _describe

    return _describe(load_context(workspace, dataset), configuration)


def load_predictor(workspace: Path, dataset: str, configuration: str = DEFAULT_CONFIGURATION,
                   folds: Sequence[str] | None = None, device: str = "auto", precision: str = "auto",
                   step: float = 0.5, mirror: bool = True, runtime: str = "torch"):
    """A :class:`autoseg.inference.predictor.Predictor` over trained folds (default: every finished fold);
    ``configuration="best"``: the choice of ``best.json``. See :func:`autoseg.workflow.predict.load_predictor`."""
    from autoseg.workflow.predict import load_predictor as _load

    return _load(load_context(workspace, dataset), configuration, folds, device, precision, step, mirror, runtime)


def predict_series(predictor, folder: Path, series_uid: str | None = None, probabilities: bool = False):
    """Segment one DICOM series with a predictor of :func:`load_predictor` (optional extra ``[dicom]``): returns
    ``(prediction, geometry, series)`` on the series' voxel grid (:func:`autoseg.inference.dicom_input.predict_series`).
    """
    from autoseg.inference.dicom_input import predict_series as _predict_series

    return _predict_series(predictor, folder, series_uid, probabilities)


def convert(source: Path, out_dir: Path, spec, progress: bool = True) -> Path:
    """Make an nnU-Net v2 raw dataset from any folder of images and masks (:func:`autoseg.io.convert.convert`;
    ``spec`` is a :class:`autoseg.io.convert.ConvertSpec`)."""
    from autoseg.io.convert import convert as _convert

    return _convert(Path(source), Path(out_dir), spec, progress)


def predict(workspace: Path, dataset: str, images_dir: Path, output_dir: Path, configuration: str | None = None,
            folds: list[str] | None = None, save_probabilities: bool = False, step: float = 0.5, tta: bool = True,
            overwrite: bool = False, continue_: bool = False, device: str = "auto", precision: str = "auto",
            progress: bool = True, skip_bad: bool = False, roi_dir: Path | None = None, runtime: str = "torch",
            output_format: str = "nifti"):
    """Segment every image in ``images_dir`` into ``output_dir`` with the averaged folds of a configuration.

    ``configuration="best"`` uses ``best.json``: one configuration, or two whose probabilities are averaged in the
    raw geometry, then the rules of ``postprocessing.json``. ``None`` (default): ``"best"`` when ``best.json``
    exists, else ``"3d_fullres"``. Returns an :class:`autoseg.inference.run.PredictSummary`. Existing outputs are
    never replaced unless ``overwrite``; ``continue_`` skips them. Every input is read and checked first: a bad
    one stops the run before anything is written, unless ``skip_bad`` (the good ones are predicted, the bad ones
    listed in ``failures.json`` and the summary's ``failed``). ``roi_dir``: region-of-interest masks
    ``<case><ending>``, background outside them. 2D images are written in their own format (JPEG as PNG), with
    the source label values of a converted dataset (``autoseg convert``). ``runtime="compiled"``: the networks
    compiled by ``torch.compile`` first; ``"onnxruntime"``: the folds' ONNX networks run by onnxruntime (optional
    extra ``[onnx]``; made from the checkpoints when missing).

    ``images_dir`` may hold DICOM instead (optional extra ``[dicom]``): every image series below it, at any depth,
    is one case, named by its folder's path relative to ``images_dir`` joined with ``_`` (plus
    ``_s<SeriesNumber>_<SeriesDescription>`` where series share a folder; see
    :mod:`autoseg.inference.dicom_input`); a series is one channel, so the model must have one. A folder mixing
    DICOM and image files is refused. ``output_format``: ``"nifti"`` (default) writes label maps as images
    (``<case>.nii.gz`` on the series' voxel grid for DICOM input); ``"dicom-seg"`` (DICOM input only) writes one
    DICOM-SEG ``<case>.dcm`` per series that references it, one segment per foreground label of the dataset
    (segment number = label index), the model identified by autoseg's version, dataset, configuration(s) and
    folds. ``save_probabilities`` writes ``<case>.npz`` in either format.
    """
    from autoseg.workflow.predict import predict as _predict

    return _predict(load_context(workspace, dataset), images_dir, output_dir, configuration, folds,
                    save_probabilities, step, tta, overwrite, continue_, device, precision, progress, skip_bad,
                    roi_dir, runtime, output_format)


def demo(workspace: Path, seed: int = 0, budget_minutes: float = 3.0, configuration: str = "3d_fullres",
         device: str = "auto", progress: bool = True) -> dict:
    """The whole pipeline on a small synthetic dataset: make data -> verify -> plan -> train fold 0 within
    ``budget_minutes`` -> predict the test images -> evaluate them against their held-out references.

    Returns
    -------
    dict
        ``validation_dice`` (fold 0 cross-validation) and ``test_dice`` (per class mean on the test images), and
        the paths involved.
    """
    from dataclasses import replace as _replace

    from autoseg import synthetic

    workspace = Path(workspace)
    spec = _replace(synthetic.PRESETS["demo"], seed=seed)
    raw = workspace / "raw" / spec.name
    if not (raw / "dataset.json").is_file():
        if raw.exists() and any(raw.iterdir()):
            raise AutosegError(f"{raw}: exists without a dataset.json; remove it or choose another workspace")
        synthetic.make_dataset(raw, spec)
    verify(raw, progress=progress)
    result = plan(raw, workspace, progress=progress)
    trained = train(workspace, spec.name, configuration, "0", device=device, progress=progress, resume=True,
                    budget_minutes=budget_minutes)
    out = workspace / "predictions" / spec.name
    predict(workspace, spec.name, raw / "imagesTs", out, configuration, ["0"], overwrite=True, device=device,
            progress=progress)
    summary = evaluate(out, raw / "labelsTs", workspace, spec.name, progress=progress)
    test_dice = {summary.label_names.get(k, k): m.dice for k, m in summary.mean.items()}
    return {"validation_dice": trained.validation_dice, "test_dice": test_dice, "plans": result.paths.plans,
            "model": trained.folder, "predictions": out}


def export_model(workspace: Path, dataset: str, out_zip: Path, configurations: list[str] | None = None,
                 checkpoint: str = "final", overwrite: bool = False, fmt: str = "checkpoint"):
    """Write a trained dataset's model(s) to one verifiable zip (``fmt="onnx"``: with ONNX networks and
    ``inference.json``); see :func:`autoseg.workflow.export.export_model`."""
    from autoseg.workflow.export import export_model as _export

    return _export(load_context(workspace, dataset), Path(out_zip), configurations, checkpoint, overwrite, fmt)


def import_model(zip_path: Path, workspace: Path, overwrite: bool = False):
    """Unpack an exported model into ``workspace/<dataset>/``; see :func:`autoseg.workflow.export.import_model`."""
    from autoseg.workflow.export import import_model as _import

    return _import(Path(zip_path), Path(workspace), overwrite)


def report(workspace: Path, dataset: str, configuration: str, fold: str = "0") -> Path:
    """Write a trained fold's ``report.md`` (with its figures); see :func:`autoseg.report.write_fold_report`."""
    from autoseg.workflow.validation import write_report

    return write_report(load_context(workspace, dataset), configuration, str(fold))
