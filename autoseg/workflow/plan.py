"""Planning a raw dataset: verify -> fingerprint -> plans -> preprocessed data and splits.

Problems with the user's input raise :class:`autoseg.errors.AutosegError`; nothing is written before all checks of
a step have passed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.data.splits import duplicate_groups, load_or_create_splits
from autoseg.errors import AutosegError, option
from autoseg.fingerprint.dataset import check_and_fingerprint, default_num_workers, source_hash
from autoseg.fingerprint.report import dataset_report
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.planning.budget import MIN_ITERATIONS, budget_advice, plan_seconds_per_iteration
from autoseg.planning.planner import make_plans
from autoseg.planning.allocation import RunRule
from autoseg.planning.run_plan import fit_run_plan, trained_configurations
from autoseg.planning.presets import PlannerPreset, load_preset
from autoseg.preprocessing.run import PreprocessResult, preprocess_dataset
from autoseg.schema.base import load_json, save_json, sha256_of
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import Plans
from autoseg.schema.report import DatasetReport
from autoseg.schema.run_plan import RunPlan
from autoseg.workflow.context import DEFAULT_CONFIGURATION, DatasetContext
from autoseg.workspace import DatasetPaths, Workspace

if TYPE_CHECKING:
    from autoseg.training.calibration import Throughput


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
    dataset_report
        The dataset report written to ``paths.dataset_report`` (``autoseg.fingerprint.report.format_report``
        gives its text).
    run_plan
        With a budget: the run plan written to ``paths.run_plan`` (``autoseg.planning.run_plan.run_plan_table``
        gives its text).
    unlabelled
        Unlabelled training images of the dataset (``imagesTrUnlabelled/``), verified and preprocessed.
    """

    plans: Plans
    paths: DatasetPaths
    fingerprint_reused: bool
    preprocessing: PreprocessResult | None = None
    dataset_report: DatasetReport | None = None
    run_plan: RunPlan | None = None
    unlabelled: int = 0


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
    """The memory target, GB: the explicit value, else the preset's own, else its reference memory (nnU-Net's 8 GB
    for the default preset) or the CUDA device's memory when that is less.

    Not the whole device's memory: nnU-Net plans for 8 GB on any GPU. A 139 GB H200 as the target makes the patch
    the whole median image and the batch many times larger, and every one of nnU-Net's 1000 x 250 iterations that
    much slower, for no measured gain; ``memory_gb`` (``--gpu-memory``) asks for more where that is wanted
    (``benchmarks/gpu_check.py`` measures the plans and step times of both).
    """
    if memory_gb is not None:
        if memory_gb <= 0:
            raise AutosegError(f"{option('memory_gb')} {memory_gb}: must be a positive number of GB")
        return float(memory_gb)
    if preset.memory_target_gb is not None:
        return float(preset.memory_target_gb)
    device = cuda_memory_gb()
    return min(float(preset.reference_memory_gb), device) if device else float(preset.reference_memory_gb)


def plan(raw_dir: Path, workspace: Path, preset: str = "default", memory_gb: float | None = None,
         num_workers: int | None = None, progress: bool = True, preprocess: bool = True,
         budget_minutes: float | None = None, device: str = "auto",
         min_iterations: int = MIN_ITERATIONS) -> PlanResult:
    """Verify a raw dataset, fingerprint it and plan every configuration (then preprocess them).

    Writes ``dataset_spec.json``, ``fingerprint.json``, ``dataset_report.json`` and ``plans.json`` under
    ``workspace/<dataset name>/``, each atomically, and only after every check passed. An unchanged dataset reuses its fingerprint. A changed
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
    budget_minutes
        Wall-clock time of the whole training run: a run plan (``run_plan.json``,
        :func:`autoseg.planning.run_plan.fit_run_plan`) says which configurations and folds to train for how
        long, and every configuration is fitted to reach ``min_iterations`` in one fold's time
        (:mod:`autoseg.planning.budget`); ``device``'s throughput is measured once and cached in the workspace's
        ``calibration.json``. Only the configurations the run plan trains are preprocessed. ``None``: nnU-Net's
        plans, from memory alone, and no run plan (a stale one is removed).
    device
        Device the budget is for (``auto``: CUDA when present, else the CPU).
    min_iterations
        Iterations per fold the budget rule aims for.
    """
    raw_dir = Path(raw_dir)
    planner_preset = load_preset(preset)
    target_gb = memory_target(planner_preset, memory_gb)
    spec = read_dataset_spec(raw_dir)
    speed = None
    if budget_minutes is not None:
        if budget_minutes <= 0:
            raise AutosegError(f"{option('budget_minutes')} {budget_minutes:g}: must be a positive number of minutes")
        if min_iterations < 1:
            raise AutosegError(f"{option('min_iterations')} {min_iterations}: must be at least 1")
        speed = device_throughput(workspace, device)
    paths = Workspace(Path(workspace)).dataset(spec.name)
    src = source_hash(raw_dir, spec)

    fingerprint = _reusable_fingerprint(paths, src)
    reused = fingerprint is not None
    if fingerprint is None:
        workers = num_workers or default_num_workers(raw_dir, spec)
        fingerprint = check_and_fingerprint(raw_dir, spec, workers, progress=progress, source_sha256=src)
    report = dataset_report(fingerprint)
    run = None
    if speed is None:
        plans = make_plans(fingerprint, planner_preset, target_gb)
    else:
        plans, run = fit_run_plan(fingerprint, planner_preset, target_gb, budget_minutes, speed.device,
                                  speed.seconds_per_mac, RunRule(target_iterations=min_iterations))
        run = with_busy_note(run, speed)

    save_json(spec, paths.dataset_spec)
    if not reused:
        save_json(fingerprint, paths.fingerprint)
    save_json(report, paths.dataset_report)  # also for a reused fingerprint: this autoseg's report of it
    _replace_plans(paths, plans)
    if run is not None:
        save_json(run, paths.run_plan)
    elif paths.run_plan.is_file():
        paths.run_plan.unlink()  # planned without a budget: nnU-Net's AutoML, no run plan of other plans
    configs = None if run is None else trained_configurations(run, plans)
    pre = (preprocess_planned(raw_dir, spec, plans, paths, configs, num_workers, progress, fingerprint)
           if preprocess else None)
    return PlanResult(plans, paths, reused, pre, report, run, len(spec.unlabelled_cases))


def device_throughput(workspace: Path, device: str = "auto") -> "Throughput":
    """The device's training throughput, measured once per machine and device and cached in the workspace."""
    from autoseg.training.calibration import cached_throughput  # torch: only when a budget needs it

    return cached_throughput(Workspace(Path(workspace)).calibration, device)[0]


def with_busy_note(run: RunPlan, speed: "Throughput") -> RunPlan:
    """``run`` with a note when its device's speed was measured while other processes kept the CPU busy (the plans
    are then fitted to a slower machine than a quiet one; the measurement was not cached, a new plan measures
    again)."""
    if not speed.busy:
        return run
    return dataclasses.replace(run, notes=run.notes + (
        f"other processes kept {speed.others_cores:.1f} CPU cores busy while this machine's speed was measured "
        f"({speed.seconds_per_tmac:g} s per 10^12 multiply-accumulates): the plans are fitted to a slower machine "
        f"than this one is when quiet; plan again when it is (the measurement was not kept)",))


def cpu_budget_advice(plans: Plans, workspace: Path, device: str = "auto",
                      min_iterations: int = MIN_ITERATIONS) -> str | None:
    """On a CPU, what one fold of the default configuration's memory-only plan would cost, and the ``--budget``
    that keeps it (:func:`autoseg.planning.budget.budget_advice`); ``None`` on a GPU or without a 3D/2D plan.

    Priced from the workspace's cached throughput only: the probe takes seconds, too long for advice nobody asked
    for, so without an earlier ``--budget`` on this device the advice names no price."""
    from autoseg.nn.device import resolve_device
    from autoseg.training.calibration import known_throughput

    if resolve_device(device).type != "cpu":
        return None
    name = next((c for c in (DEFAULT_CONFIGURATION, "2d") if c in plans.configurations), None)
    if name is None:
        return None
    c = plans.configurations[name]
    speed = known_throughput(Workspace(Path(workspace)).calibration, device)
    seconds = None if speed is None else plan_seconds_per_iteration(
        c.architecture, c.patch_size, c.batch_size, plans.input_channels(name), plans.num_outputs,
        speed.seconds_per_mac)
    return budget_advice(name, seconds, min_iterations)


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


def preprocess(ctx: DatasetContext, configs: list[str] | None = None, num_workers: int | None = None,
               progress: bool = True) -> PreprocessResult:
    """Preprocess a planned dataset's training cases into ``workspace/<dataset>/preprocessed/<config>/``.

    Complete cases of unchanged plans are reused, so a killed run continues where it stopped; data of changed plans
    are replaced. Also creates (or validates) the cross-validation ``splits.json``.

    Parameters
    ----------
    ctx
        The planned dataset.
    configs
        Configurations to preprocess (default: every planned one).
    num_workers
        Parallel processes (default from cores, free memory and the largest case).
    progress
        Show a progress bar.
    """
    paths = ctx.paths
    if configs:
        ctx.check_configurations(configs)
    fingerprint = load_json(Fingerprint, paths.fingerprint) if paths.fingerprint.is_file() else None
    return preprocess_planned(ctx.raw_dir, ctx.spec, ctx.plans, paths, configs, num_workers, progress, fingerprint)


def preprocess_planned(raw_dir: Path, spec: DatasetSpec, plans: Plans, paths: DatasetPaths,
                       configs: list[str] | None, num_workers: int | None, progress: bool,
                       fingerprint: Fingerprint | None) -> PreprocessResult:
    """:func:`preprocess` with everything already loaded (:func:`plan` calls it right after planning)."""
    if not (Path(raw_dir) / "dataset.json").is_file():
        raise AutosegError(f"{Path(raw_dir) / 'dataset.json'}: raw dataset not found (moved?); run "
                           f"`autoseg plan RAW_DIR` from its new place")
    names = list(configs) if configs else list(plans.configurations)
    result = preprocess_dataset(raw_dir, spec, plans, paths, names, num_workers=num_workers, progress=progress,
                                fingerprint=fingerprint)
    # duplicates of the dataset report in one fold: a copy validated in one and trained on in another leaks
    load_or_create_splits(paths, [c.case_id for c in spec.training], raw_dir,
                          groups=duplicate_groups(fingerprint))
    return result
