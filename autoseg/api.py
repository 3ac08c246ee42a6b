"""Everything the CLI does, as plain functions with explicit arguments.

Problems with the user's input raise :class:`autoseg.errors.AutosegError`; nothing is written before all
checks of a step have passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from autoseg.errors import AutosegError
from autoseg.fingerprint.dataset import check_and_fingerprint, default_num_workers, source_hash
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.planning.planner import make_plans
from autoseg.planning.presets import PlannerPreset, load_preset
from autoseg.preprocessing.run import PreprocessResult, preprocess_dataset
from autoseg.schema.base import load_json, save_json, sha256_of
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import Plans
from autoseg.workspace import DatasetPaths, Workspace


@dataclass(frozen=True)
class PlanResult:
    """What :func:`plan` produced.

    Attributes
    ----------
    plans
        The plans written to ``paths.plans``.
    paths
        The dataset's workspace paths.
    fingerprint_reused
        The dataset was unchanged since the last run, so its fingerprint (and verification) was reused.
    preprocessing
        What :func:`preprocess` did, ``None`` when planning ran with ``preprocess=False``.
    """

    plans: Plans
    paths: DatasetPaths
    fingerprint_reused: bool
    preprocessing: PreprocessResult | None = None


def verify(raw_dir: Path, num_workers: int | None = None, progress: bool = True) -> DatasetSpec:
    """Check a raw dataset completely (every listed file, training and test); writes nothing.

    Raises
    ------
    DatasetError
        Every problem found, one line each naming the file.
    """
    raw_dir = Path(raw_dir)
    spec = read_dataset_spec(raw_dir)
    workers = num_workers or default_num_workers(raw_dir, spec)
    check_and_fingerprint(raw_dir, spec, workers, progress=progress, source_sha256="")
    return spec


def cuda_memory_gb() -> float | None:
    """Memory of CUDA device 0 in GB, or ``None`` without a usable CUDA device.

    torch is imported only when an NVIDIA driver is present: importing it costs seconds on a CPU machine.
    """
    if not os.path.exists("/proc/driver/nvidia/version"):
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
    except Exception:  # a broken CUDA install must not stop planning; the reference target is used instead
        return None
    return None


def memory_target(preset: PlannerPreset, memory_gb: float | None) -> float:
    """The memory target: explicit value, else the preset's own, else the CUDA device's, else the reference."""
    if memory_gb is not None:
        if memory_gb <= 0:
            raise AutosegError(f"--gpu-memory {memory_gb}: must be a positive number of GB")
        return float(memory_gb)
    if preset.memory_target_gb is not None:
        return float(preset.memory_target_gb)
    return cuda_memory_gb() or preset.reference_memory_gb


def plan(raw_dir: Path, workspace: Path, preset: str = "default", memory_gb: float | None = None,
         num_workers: int | None = None, progress: bool = True, preprocess: bool = True) -> PlanResult:
    """Verify a raw dataset, fingerprint it and plan every configuration (then preprocess them).

    Writes ``dataset_spec.json``, ``fingerprint.json`` and ``plans.json`` under ``workspace/<dataset name>/``,
    each atomically, and only after every check passed. An unchanged dataset reuses its fingerprint. A changed
    ``plans.json`` keeps the previous one as ``plans.<hash>.json``.

    Parameters
    ----------
    raw_dir
        MSD or nnU-Net v2 raw folder.
    workspace
        Workspace root.
    preset
        Planner preset name (``plans/presets``).
    memory_gb
        Accelerator memory target, GB (default: see :func:`memory_target`).
    num_workers
        Parallel processes for verification and fingerprinting (default from cores and free memory).
    progress
        Show progress bars.
    preprocess
        Also preprocess every planned configuration.
    """
    raw_dir = Path(raw_dir)
    planner_preset = load_preset(preset)
    target_gb = memory_target(planner_preset, memory_gb)
    spec = read_dataset_spec(raw_dir)
    paths = Workspace(Path(workspace)).dataset(spec.name)
    src = source_hash(raw_dir, spec)

    fingerprint = _reusable_fingerprint(paths, src)
    reused = fingerprint is not None
    if fingerprint is None:
        workers = num_workers or default_num_workers(raw_dir, spec)
        fingerprint = check_and_fingerprint(raw_dir, spec, workers, progress=progress, source_sha256=src)
    plans = make_plans(fingerprint, planner_preset, target_gb)

    save_json(spec, paths.dataset_spec)
    if not reused:
        save_json(fingerprint, paths.fingerprint)
    _replace_plans(paths, plans)
    pre = (preprocess_planned(raw_dir, spec, plans, paths, None, num_workers, progress, fingerprint)
           if preprocess else None)
    return PlanResult(plans, paths, reused, pre)


def _reusable_fingerprint(paths: DatasetPaths, src: str) -> Fingerprint | None:
    if not paths.fingerprint.is_file():
        return None
    try:
        fp = load_json(Fingerprint, paths.fingerprint)
    except AutosegError:
        return None  # unreadable or from another version: measure again
    return fp if fp.source_sha256 == src else None


def _replace_plans(paths: DatasetPaths, plans: Plans) -> None:
    if paths.plans.is_file():
        try:
            old = load_json(Plans, paths.plans)
        except AutosegError:
            old = None
        if old is not None and sha256_of(old) != sha256_of(plans):
            os.replace(paths.plans, paths.superseded_plans(sha256_of(old)))
    save_json(plans, paths.plans)


def load_plans(workspace: Path, dataset: str) -> Plans:
    """The plans of ``dataset`` in ``workspace`` (a clear error when it was never planned)."""
    ws = Workspace(Path(workspace))
    paths = ws.dataset(dataset)
    if not paths.plans.is_file():
        known = ws.datasets()
        raise AutosegError(f"{paths.plans}: no plans for dataset '{dataset}' ("
                           + (f"planned in {ws.root}: {', '.join(known)}" if known else f"nothing planned in {ws.root}")
                           + "); run `autoseg plan RAW_DIR` first")
    return load_json(Plans, paths.plans)


def preprocess(workspace: Path, dataset: str, configs: list[str] | None = None, num_workers: int | None = None,
               progress: bool = True) -> PreprocessResult:
    """Preprocess a planned dataset's training cases into ``workspace/<dataset>/preprocessed/<config>/``.

    Complete cases of unchanged plans are reused, so a killed run continues where it stopped; data of changed plans
    are replaced. Also creates (or validates) the cross-validation ``splits.json``.

    Parameters
    ----------
    workspace
        Workspace root.
    dataset
        Dataset name (its workspace folder).
    configs
        Configurations to preprocess (default: every planned one).
    num_workers
        Parallel processes (default from cores, free memory and the largest case).
    progress
        Show a progress bar.
    """
    paths = Workspace(Path(workspace)).dataset(dataset)
    plans = load_plans(workspace, dataset)
    spec = load_json(DatasetSpec, paths.dataset_spec)
    fingerprint = load_json(Fingerprint, paths.fingerprint) if paths.fingerprint.is_file() else None
    return preprocess_planned(Path(spec.raw_dir), spec, plans, paths, configs, num_workers, progress, fingerprint)


def preprocess_planned(raw_dir: Path, spec: DatasetSpec, plans: Plans, paths: DatasetPaths,
                       configs: list[str] | None, num_workers: int | None, progress: bool,
                       fingerprint: Fingerprint | None) -> PreprocessResult:
    """:func:`preprocess` with everything already loaded (:func:`plan` calls it right after planning)."""
    from autoseg.data.splits import load_or_create_splits

    if not (Path(raw_dir) / "dataset.json").is_file():
        raise AutosegError(f"{Path(raw_dir) / 'dataset.json'}: raw dataset not found (moved?); run "
                           f"`autoseg plan RAW_DIR` from its new place")
    names = list(configs) if configs else list(plans.configurations)
    result = preprocess_dataset(raw_dir, spec, plans, paths, names, num_workers=num_workers, progress=progress,
                                fingerprint=fingerprint)
    load_or_create_splits(paths, [c.case_id for c in spec.training], raw_dir)
    return result


def evaluate(pred_dir: Path, gt_dir: Path, workspace: Path | None = None, dataset: str | None = None,
             num_workers: int | None = None, labels: list[int | str] | None = None, output: Path | None = None,
             nsd_tolerance_mm: float = 1.0, progress: bool = True, predicted_only: bool = False
             ) -> EvaluationSummary:
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
    """
    from autoseg.evaluation.folder import evaluate_folder

    label_names, file_ending = None, ".nii.gz"
    if dataset is not None:
        if workspace is None:
            raise AutosegError(f"dataset '{dataset}' given without a workspace to find it in")
        label_names = load_plans(workspace, dataset).labels
        paths = Workspace(Path(workspace)).dataset(dataset)
        if paths.dataset_spec.is_file():
            file_ending = load_json(DatasetSpec, paths.dataset_spec).file_ending
        if labels is None:
            labels = list(range(1, len(label_names)))
    return evaluate_folder(Path(pred_dir), Path(gt_dir), labels, num_workers, file_ending, label_names=label_names,
                           nsd_tolerance_mm=nsd_tolerance_mm, output=output, progress=progress,
                           predicted_only=predicted_only)


def train(workspace: Path, dataset: str, configuration: str, fold: str = "0", device: str = "auto",
          resume: bool = False, overwrite: bool = False, validate: bool = True, progress: bool = True,
          distributed=None, **overrides):
    """Train one fold of one configuration; returns a :class:`autoseg.training.run.TrainResult`.

    ``overrides`` are :class:`autoseg.schema.training.TrainConfig` fields (``epochs``, ``iterations_per_epoch``,
    ``budget_minutes``, ``seed``, ``deterministic``, ``precision`` ...). See :func:`autoseg.training.run.train_fold`
    for the resume / extend rules.
    """
    from autoseg.training.run import train_fold

    return train_fold(Path(workspace), dataset, configuration, str(fold), overrides, device=device, resume=resume,
                      overwrite=overwrite, validate=validate, progress=progress, distributed=distributed)


def trained_folds(workspace: Path, dataset: str, configuration: str) -> list[str]:
    """Folds of ``configuration`` with a final checkpoint."""
    return Workspace(Path(workspace)).dataset(dataset).trained_folds(configuration)


BEST = "best"
#: Configuration used for prediction when no ``best.json`` exists yet.
DEFAULT_CONFIGURATION = "3d_fullres"


def find_best(workspace: Path, dataset: str, configurations: list[str] | None = None,
              num_workers: int | None = None, progress: bool = True):
    """Rank the cross-validated configurations and their pairs, choose postprocessing; writes ``best.json`` and
    ``postprocessing.json``. Returns a :class:`autoseg.schema.selection.BestChoice`; see
    :func:`autoseg.evaluation.selection.find_best`."""
    from autoseg.evaluation.selection import find_best as _find_best

    return _find_best(Path(workspace), dataset, configurations, num_workers=num_workers, progress=progress)


def load_best(workspace: Path, dataset: str):
    """``(BestChoice, Postprocessing | None)`` of a dataset on which ``autoseg find-best`` ran."""
    from autoseg.schema.selection import BestChoice, Postprocessing

    paths = Workspace(Path(workspace)).dataset(dataset)
    if not paths.best.is_file():
        raise AutosegError(f"{paths.best}: no model selection for dataset '{dataset}'; run "
                           f"`autoseg find-best {dataset}` first")
    best = load_json(BestChoice, paths.best)
    pp = (load_json(Postprocessing, paths.root / best.postprocessing_file)
          if best.postprocessing_file is not None else None)
    return best, pp


def default_configuration(workspace: Path, dataset: str) -> str:
    """``"best"`` once ``autoseg find-best`` wrote ``best.json``, else ``"3d_fullres"``."""
    return BEST if Workspace(Path(workspace)).dataset(dataset).best.is_file() else DEFAULT_CONFIGURATION


def describe_configuration(workspace: Path, dataset: str, configuration: str | None) -> str:
    """One line saying what :func:`predict` uses for ``configuration`` (``None``: the default)."""
    if configuration is None:
        configuration = default_configuration(workspace, dataset)
        if configuration != BEST:
            return (f"using {configuration} (no best.json yet: run `autoseg find-best {dataset}` once every fold "
                    f"is trained to choose)")
    if configuration != BEST:
        return f"using {configuration}"
    best, pp = load_best(workspace, dataset)
    rules = "none" if pp is None or pp.is_identity else ", ".join(
        (["keep the largest foreground component"] if pp.keep_largest_foreground else [])
        + [f"keep the largest component of label {v}" for v in pp.keep_largest_per_class])
    return f"using best.json: {' + '.join(best.chosen)}; postprocessing: {rules}"


def load_predictor(workspace: Path, dataset: str, configuration: str = "3d_fullres",
                   folds: list[str] | None = None, device: str = "auto", precision: str = "auto", step: float = 0.5,
                   mirror: bool = True):
    """A :class:`autoseg.inference.predictor.Predictor` over trained folds (default: every finished fold).

    ``configuration="best"``: the choice of ``best.json`` (its folds unless ``folds`` is given); two configurations
    give an :class:`autoseg.inference.ensemble.EnsemblePredictor`. Postprocessing is not part of the predictor
    (see :func:`load_best`). A cascade stage comes with its previous stage (see
    :func:`autoseg.inference.cascade.load_folds`).
    """
    if configuration == BEST:
        from autoseg.inference.ensemble import EnsemblePredictor

        best, _ = load_best(workspace, dataset)
        members = [load_predictor(workspace, dataset, c, folds or list(best.folds.get(c, ())) or None, device,
                                  precision, step, mirror) for c in best.chosen]
        return members[0] if len(members) == 1 else EnsemblePredictor(members)
    from autoseg.inference.cascade import load_folds

    plans = load_plans(workspace, dataset)
    paths = Workspace(Path(workspace)).dataset(dataset)
    if configuration not in plans.configurations:
        raise AutosegError(f"{paths.plans}: no configuration '{configuration}' (planned: "
                           f"{', '.join(plans.configurations)})")
    folds = [str(f) for f in folds] if folds else paths.trained_folds(configuration)
    if not folds:
        raise AutosegError(f"{paths.model(configuration, 0).parent}: no trained fold of {configuration}; run "
                           f"`autoseg train {dataset} -c {configuration}` first")
    return load_folds(paths, plans, configuration, folds, device=device, precision=precision, step=step,
                      mirror=mirror)


def predict(workspace: Path, dataset: str, images_dir: Path, output_dir: Path, configuration: str | None = None,
            folds: list[str] | None = None, save_probabilities: bool = False, step: float = 0.5, tta: bool = True,
            overwrite: bool = False, continue_: bool = False, device: str = "auto", precision: str = "auto",
            progress: bool = True):
    """Segment every image in ``images_dir`` into ``output_dir`` with the averaged folds of a configuration.

    ``configuration="best"`` uses ``best.json``: one configuration, or two whose probabilities are averaged in the
    raw geometry, then the rules of ``postprocessing.json``. ``None`` (default): ``"best"`` when ``best.json``
    exists, else ``"3d_fullres"`` (:func:`default_configuration`). Returns an
    :class:`autoseg.inference.run.PredictSummary`. Existing outputs are never replaced unless ``overwrite``;
    ``continue_`` skips them.
    """
    from autoseg.inference.run import predict_folder

    configuration = configuration or default_configuration(workspace, dataset)
    postprocess = None
    if configuration == BEST:
        from autoseg.postprocessing.components import apply_postprocessing

        _, pp = load_best(workspace, dataset)
        if pp is not None and not pp.is_identity:
            postprocess = partial(apply_postprocessing, pp=pp)
    predictor = load_predictor(workspace, dataset, configuration, folds, device, precision, step, tta)
    spec = load_json(DatasetSpec, Workspace(Path(workspace)).dataset(dataset).dataset_spec)
    return predict_folder(predictor, Path(images_dir), Path(output_dir), spec.file_ending, save_probabilities,
                          overwrite, continue_, progress, postprocess=postprocess)


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
                 checkpoint: str = "final", overwrite: bool = False):
    """Write a trained dataset's model(s) to one verifiable zip; see :func:`autoseg.export.export_model`."""
    from autoseg.export import export_model as _export

    return _export(Path(workspace), dataset, Path(out_zip), configurations, checkpoint, overwrite)


def import_model(zip_path: Path, workspace: Path, overwrite: bool = False):
    """Unpack an exported model into ``workspace/<dataset>/``; see :func:`autoseg.export.import_model`."""
    from autoseg.export import import_model as _import

    return _import(Path(zip_path), Path(workspace), overwrite)


def report(workspace: Path, dataset: str, configuration: str, fold: str = "0") -> Path:
    """Write a trained fold's ``report.md`` (with its figures); see :func:`autoseg.report.write_report`."""
    from autoseg.report import write_report

    return write_report(Path(workspace), dataset, configuration, str(fold))


def train_all(workspace: Path, dataset: str, configurations: list[str] | None = None, folds: list[str] | None = None,
              budget_minutes: float | None = None, device: str = "auto", progress: bool = True, validate: bool = True,
              select: bool = True, report=print, **overrides):
    """Train every planned configuration (or ``configurations``) x 5 folds (or ``folds``), then select.

    Finished folds are skipped and killed ones resumed. With ``budget_minutes`` the training time is split over
    the folds still to run (the measured speed of each configuration is shown in the printed plan). Model
    selection (:func:`find_best`) runs when at least one configuration has all five folds.

    Returns
    -------
    tuple
        ``(results, best)``: the :class:`autoseg.training.run.TrainResult` of every fold run, and the
        :class:`autoseg.schema.selection.BestChoice` (``None`` when nothing was complete enough to select).
    """
    from autoseg.training.automl import (finished_folds, jobs_table, measure_step_seconds, plan_jobs,
                                         trainable_configurations)

    plans = load_plans(workspace, dataset)
    paths = Workspace(Path(workspace)).dataset(dataset)
    if configurations:
        unknown = [c for c in configurations if c not in plans.configurations]
        if unknown:
            raise AutosegError(f"{paths.plans}: no configuration {', '.join(unknown)} (planned: "
                               f"{', '.join(plans.configurations)})")
    folds = [str(f) for f in (folds or ["0", "1", "2", "3", "4"])]
    finished = finished_folds(paths, list(plans.configurations), sorted(set(folds) | set("01234")))
    names, skipped = trainable_configurations(plans, folds, finished, configurations or None)
    todo_configs = sorted({c for c in names for f in folds if (c, f) not in finished}, key=names.index)
    steps = {c: measure_step_seconds(plans, c, device, overrides.get("precision") or "auto")
             for c in todo_configs} if budget_minutes is not None else {}
    jobs = plan_jobs(names, folds, budget_minutes, steps, finished)
    done = sum((c, f) in finished for c in names for f in folds)
    report(f"training plan for {dataset} ({done} fold(s) already finished):\n" + jobs_table(jobs, skipped))
    results = []
    for job in jobs:
        report(f"\n== {job.configuration} fold {job.fold}")
        results.append(train(workspace, dataset, job.configuration, job.fold, device=device, resume=True,
                             validate=validate, progress=progress, budget_minutes=job.minutes, **overrides))
    best = None
    if validate and select and any(len(finished_folds(paths, [c], list("01234"))) == 5 for c in names):
        best = find_best(workspace, dataset, progress=progress)
    return results, best
