"""The AutoML run as a job graph: one job per fold still to train, then model selection, with their dependencies.

The same graph is run by a cluster engine (:mod:`autoseg.workflow.cluster`, ``train --cluster``) or printed as
commands for hand submission (``autoseg jobs --format shell|slurm``). Every job is an ``autoseg`` command line, so a
job runs the same code as ``autoseg train DATASET -c C -f K`` typed by hand: a finished fold is skipped, a killed
one resumed (``--resume``), wherever it runs.

Dependencies: a cascade stage trains on its previous stage's cross-validation predictions, so each of its folds
waits for every fold of that stage; ``find-best`` waits for every training job.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.errors import AutosegError
from autoseg.workflow.automl import RunPlan
from autoseg.workflow.context import DatasetContext

#: ``autoseg jobs --format``.
FORMATS = ("shell", "slurm")


@dataclass(frozen=True)
class GraphJob:
    """One node of the job graph.

    Attributes
    ----------
    name
        Unique, file-name safe: ``train-3d_fullres-fold0``, ``find-best``.
    argv
        The command, starting with ``autoseg``.
    depends
        Names of the jobs that must succeed first.
    configuration, fold
        The fold a training job trains (``None`` for ``find-best``).
    """

    name: str
    argv: tuple[str, ...]
    depends: tuple[str, ...] = ()
    configuration: str | None = None
    fold: str | None = None

    @property
    def command(self) -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.argv)


def _minutes_flag(minutes: float) -> str:
    """``12.75`` -> ``'12.75'`` (what ``--budget`` reads as minutes)."""
    return f"{minutes:.6g}"


def job_graph(ctx: DatasetContext, run: RunPlan, workspace: Path, train_flags: Sequence[str] = (),
              select: bool = True) -> list[GraphJob]:
    """The jobs of ``autoseg train DATASET`` (every fold job of ``run``, then ``find-best``) in a running order.

    Parameters
    ----------
    ctx
        The dataset (its plans and trained folds).
    run
        What to train (:func:`autoseg.workflow.automl.plan_run`); each job gets its share of a budget as
        ``--budget``, split as on one machine.
    workspace
        Written into every command (``-w``), as given: absolute for jobs that run elsewhere.
    train_flags
        Further ``autoseg train`` options every training job gets (``--epochs 1``, ``--deterministic`` ...).
    select
        End with ``find-best`` when at least one configuration will have all folds (and folds are validated).
    """
    base = ("autoseg", "train", ctx.name, "-w", str(workspace))
    by_config: dict[str, list[str]] = {}
    graph: list[GraphJob] = []
    for job in run.jobs:
        previous = ctx.plans.configurations[job.configuration].previous_stage
        depends = tuple(by_config.get(previous, ())) if previous else ()
        name = f"train-{job.configuration}-fold{job.fold}"
        budget = ("--budget", _minutes_flag(job.minutes)) if job.minutes else ()
        argv = (*base, "-c", job.configuration, "-f", job.fold, "--resume", *budget, *train_flags)
        graph.append(GraphJob(name, argv, depends, job.configuration, job.fold))
        by_config.setdefault(job.configuration, []).append(name)
    todo = {(j.configuration, j.fold) for j in run.jobs}
    completes = any(all((c, f) in todo or ctx.fold(c, f).is_trained for f in ctx.folds) for c in run.names)
    if select and completes and "--no-validation" not in train_flags:
        graph.append(GraphJob("find-best", ("autoseg", "find-best", ctx.name, "-w", str(workspace)),
                              tuple(j.name for j in graph)))
    return graph


def stages(graph: Sequence[GraphJob]) -> list[list[GraphJob]]:
    """The graph in waves: each wave's jobs depend only on earlier waves (they can run at the same time).

    Examples
    --------
    >>> a, b = GraphJob("a", ("autoseg",)), GraphJob("b", ("autoseg",), ("a",))
    >>> [[j.name for j in w] for w in stages([a, b, GraphJob("c", ("autoseg",))])]
    [['a', 'c'], ['b']]
    """
    level: dict[str, int] = {}
    for job in graph:  # the graph lists every job after its dependencies
        level[job.name] = 1 + max((level[d] for d in job.depends), default=-1)
    waves: list[list[GraphJob]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for job in graph:
        waves[level[job.name]].append(job)
    return waves


def _skipped(skipped: Sequence[str]) -> list[str]:
    return [f"# skipped: {s}" for s in skipped]


def render_shell(graph: Sequence[GraphJob], dataset: str, skipped: Sequence[str] = ()) -> str:
    """The graph as a shell script: waves in order; the jobs of one wave may run at the same time."""
    waves = stages(graph)
    lines = ["#!/usr/bin/env bash", f"# autoseg jobs for {dataset}: {len(graph)} job(s) in {len(waves)} wave(s).",
             "# Jobs of one wave are independent (run them on different machines at once); a wave needs every",
             "# job of the waves before it. Run as is, it trains everything in order on this machine.",
             *_skipped(skipped), "set -euo pipefail"]
    for i, wave in enumerate(waves, 1):
        after = f", after wave {i - 1}" if i > 1 else ""
        lines.append(f"\n# wave {i}: {len(wave)} job(s){after}")
        lines += [job.command for job in wave]
    return "\n".join(lines) + "\n"


def render_slurm(graph: Sequence[GraphJob], dataset: str, log_dir: Path, sbatch_options: Sequence[str] = (),
                 skipped: Sequence[str] = ()) -> str:
    """The graph as a bash script of ``sbatch`` submissions chained by ``--dependency=afterok``.

    ``sbatch_options`` (``--partition=gpu``, ``--gres=gpu:1``, ``--time=24:00:00`` ...) go to every job. The jobs
    call ``autoseg`` from the ``PATH``: run the script with autoseg's environment active (sbatch passes it on).
    """
    variables = {job.name: "job_" + "".join(ch if ch.isalnum() else "_" for ch in job.name) for job in graph}
    opts = " ".join(shlex.quote(o) for o in sbatch_options)
    lines = ["#!/usr/bin/env bash", f"# autoseg jobs for {dataset} as SLURM jobs: run this script on the login node.",
             "# Each job waits for its dependencies (afterok: a failed job holds its dependents). The jobs run",
             "# `autoseg` from PATH: activate autoseg's environment first (sbatch exports it to the jobs).",
             *_skipped(skipped), "set -euo pipefail", f"mkdir -p {shlex.quote(str(log_dir))}"]
    for job in graph:
        dep = ":".join(f"${variables[d]}" for d in job.depends)
        dependency = f" --dependency=afterok:{dep}" if dep else ""
        log = shlex.quote(str(Path(log_dir) / f"{job.name}-%j.log"))
        lines.append(f"{variables[job.name]}=$(sbatch --parsable --job-name={shlex.quote(f'{dataset}-{job.name}')}"
                     f"{' ' + opts if opts else ''}{dependency} --output={log} --wrap={shlex.quote(job.command)})")
        lines.append(f'echo "submitted {job.name}: ${variables[job.name]}"')
    return "\n".join(lines) + "\n"


def render(graph: Sequence[GraphJob], dataset: str, fmt: str, log_dir: Path, sbatch_options: Sequence[str] = (),
           skipped: Sequence[str] = ()) -> str:
    """:func:`render_shell` or :func:`render_slurm` by ``fmt``; ``skipped`` are noted as comments."""
    if fmt == "shell":
        return render_shell(graph, dataset, skipped)
    if fmt == "slurm":
        return render_slurm(graph, dataset, log_dir, sbatch_options, skipped)
    raise AutosegError(f"job format '{fmt}': expected one of {', '.join(FORMATS)}")
