"""``autoseg train DATASET --cluster SPEC``: the job graph of :mod:`autoseg.workflow.jobs` run by Dask distributed.

autoseg schedules nothing itself: each job is a Dask task whose dependencies are its graph dependencies, and Dask
places it on a worker (``retries=1``: a failed job runs once more, then it and its dependents are reported with
the job's log). A task runs the job's ``autoseg`` command in a subprocess on its worker, so a fold trains exactly as
``autoseg train DATASET -c C -f K --resume`` would there (finished folds skipped, killed ones resumed), and the
log of every attempt is appended to ``<dataset>/jobs/<job>.log``: the workspace must be on a file system the
workers share. ``SPEC``:

``local`` or ``local:N``
    a Dask ``LocalCluster`` of N worker processes on 127.0.0.1 (default N: 2), one fold at a time each, the cores
    shared out between them;
``tcp://HOST:PORT`` (or ``HOST:PORT``)
    a running Dask scheduler; every worker thread takes a fold (start workers with ``--nthreads 1``);
``FILE.yaml``
    a job-queue system through dask-jobqueue (SLURM, PBS, LSF, SGE, HTCondor) with the resources of the file
    (see :class:`JobQueueConfig`); each batch job is one Dask worker that trains one fold at a time.

The packages are the extra ``[cluster]`` (``dask[distributed]``, ``dask-jobqueue``), imported when a run asks.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from autoseg.errors import AutosegError, JobsFailed, require_extra
from autoseg.progress import bar as progress_bar
from autoseg.workflow.jobs import GraphJob

#: dask-jobqueue's cluster class of each system a config file may name.
SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster",
           "htcondor": "HTCondorCluster"}
#: Dask's resource name that makes a job-queue worker take one fold at a time.
FOLD_RESOURCE = "autoseg_fold"
_ATTEMPT = "=== autoseg job attempt "


@dataclass(frozen=True)
class JobQueueConfig:
    """The resources of a job-queue cluster, read from a YAML file (``train --cluster FILE.yaml``).

    Attributes
    ----------
    system
        ``slurm``, ``pbs``, ``lsf``, ``sge`` or ``htcondor``.
    jobs
        Batch jobs (Dask workers) at most; each trains one fold at a time.
    queue, account
        Where the jobs go (partition / queue, project or account); ``None``: the system's default.
    cores, memory
        Per job: CPU cores and memory (``"32GB"``).
    gpus
        GPUs per job (SLURM: ``--gres=gpu:N``; other systems: put their directive in ``job_extra_directives``).
    walltime
        Per job, ``"HH:MM:SS"``; long enough for a fold (a job killed at its walltime is resumed by the retry).
    job_extra_directives, prologue
        Extra scheduler directives (``["--constraint=a100"]``) and shell lines run before the worker starts
        (``["module load cuda", "source /path/to/.venv/bin/activate"]``).
    """

    system: str
    jobs: int = 4
    queue: str | None = None
    account: str | None = None
    cores: int = 4
    memory: str = "16GB"
    gpus: int = 0
    walltime: str = "24:00:00"
    job_extra_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()

    def cluster_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of dask-jobqueue's cluster class."""
        extra = list(self.job_extra_directives)
        if self.gpus and self.system == "slurm":
            extra.append(f"--gres=gpu:{self.gpus}")
        kwargs: dict[str, Any] = dict(cores=self.cores, memory=self.memory, processes=1, walltime=self.walltime,
                                      job_extra_directives=extra, job_script_prologue=list(self.prologue),
                                      worker_extra_args=["--resources", f"{FOLD_RESOURCE}=1"])
        if self.queue:
            kwargs["queue"] = self.queue
        if self.account:
            kwargs["account" if self.system == "slurm" else "project"] = self.account
        return kwargs


def load_jobqueue_config(path: Path) -> JobQueueConfig:
    """Read and check a cluster file (YAML mapping of :class:`JobQueueConfig`'s fields)."""
    yaml = require_extra("yaml", "cluster", "train --cluster FILE")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise AutosegError(f"{path}: not a readable YAML cluster file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AutosegError(f"{path}: expected a mapping of cluster settings (system: slurm, jobs: 4, ...)")
    known = {f.name: f for f in fields(JobQueueConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise AutosegError(f"{path}: unknown setting '{unknown[0]}' (known: {', '.join(known)})")
    if data.get("system") not in SYSTEMS:
        raise AutosegError(f"{path}: 'system' must be one of {', '.join(SYSTEMS)}, not {data.get('system')!r}")
    for name in ("jobs", "cores", "gpus"):
        if name in data and (not isinstance(data[name], int) or isinstance(data[name], bool) or data[name] < 0
                             or (name != "gpus" and data[name] < 1)):
            raise AutosegError(f"{path}: '{name}' must be a {'non-negative' if name == 'gpus' else 'positive'} "
                               f"integer, not {data[name]!r}")
    for name in ("queue", "account", "memory", "walltime"):
        if name in data and data[name] is not None and not isinstance(data[name], (str, int)):
            raise AutosegError(f"{path}: '{name}' must be text, not {data[name]!r}")
        if name in data and data[name] is not None:
            data[name] = str(data[name])
    for name in ("job_extra_directives", "prologue"):
        if name in data:
            if not isinstance(data[name], list) or not all(isinstance(x, str) for x in data[name]):
                raise AutosegError(f"{path}: '{name}' must be a list of text lines")
            data[name] = tuple(data[name])
    return JobQueueConfig(**data)


@dataclass(frozen=True)
class ClusterSpec:
    """What ``--cluster`` names: ``kind`` is ``local`` (``workers`` processes), ``address`` or ``jobqueue``."""

    kind: str
    workers: int = 2
    address: str | None = None
    config: JobQueueConfig | None = field(default=None)


def parse_cluster_spec(text: str) -> ClusterSpec:
    """Parse ``--cluster``.

    Examples
    --------
    >>> parse_cluster_spec("local:3")
    ClusterSpec(kind='local', workers=3, address=None, config=None)
    >>> parse_cluster_spec("10.0.0.5:8786").address
    'tcp://10.0.0.5:8786'
    """
    text = text.strip()
    m = re.fullmatch(r"local(?::(\d+))?", text)
    if m:
        workers = int(m.group(1) or 2)
        if workers < 1:
            raise AutosegError(f"--cluster {text}: the number of local workers must be at least 1")
        return ClusterSpec("local", workers=workers)
    if re.fullmatch(r"(tcp|tls)://[^\s/]+:\d+", text):
        return ClusterSpec("address", address=text)
    if re.fullmatch(r"[A-Za-z0-9_.\-]+:\d+", text):
        return ClusterSpec("address", address=f"tcp://{text}")
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise AutosegError(f"--cluster {text}: no such cluster file")
        return ClusterSpec("jobqueue", config=load_jobqueue_config(path))
    raise AutosegError(f"--cluster {text!r}: expected local, local:N, a scheduler address (tcp://HOST:PORT) or a "
                       f"cluster file (.yaml)")


def attempts(log: Path) -> int:
    """How many attempts of a job its log records."""
    try:
        return sum(line.startswith(_ATTEMPT) for line in Path(log).read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return 0


def _die_with_parent() -> None:
    """In the job's child process (Linux): be killed when the worker dies, so a lost worker leaves no orphan
    writing into the fold folder while the retry trains there."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_job(name: str, argv: Sequence[str], log: str, threads: int | None, topic: str, *dependencies: Any) -> str:
    """Run one job's command on this worker (a Dask task; ``dependencies`` are the results it waits for).

    The command's output is appended to ``log`` after a line naming the attempt, host and time; a non-zero exit
    raises, so that Dask retries the job.
    """
    from distributed import get_worker

    worker = get_worker()
    log_path = Path(log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    attempt = attempts(log_path) + 1
    env = dict(os.environ)
    if threads:  # a local cluster shares this machine's cores between its workers
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("LOCAL_RANK", None)  # a fold job is never part of the worker's own torchrun
    cmd = [sys.executable, "-m", "autoseg", *argv[1:]]
    worker.log_event(topic, {"job": name, "state": "running", "attempt": attempt, "host": worker.address})
    with open(log_path, "a") as f:
        f.write(f"{_ATTEMPT}{attempt} on {worker.address} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(argv)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None).returncode
    if rc != 0:
        worker.log_event(topic, {"job": name, "state": "failed", "attempt": attempt, "code": rc, "log": log})
        raise RuntimeError(f"{name}: exit code {rc} (attempt {attempt}); log {log}")
    worker.log_event(topic, {"job": name, "state": "finished", "attempt": attempt})
    return name


def _connect(spec: ClusterSpec, stack):
    """A Dask client for ``spec`` (closed by ``stack``) and the threads each local job may use."""
    require_extra("distributed", "cluster", "train --cluster")
    from distributed import Client, LocalCluster

    if spec.kind == "local":
        cluster = stack.enter_context(LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=None,
                                                   silence_logs=logging.ERROR))
        return stack.enter_context(Client(cluster)), max(1, (os.cpu_count() or 1) // spec.workers), None
    if spec.kind == "address":
        try:
            client = Client(spec.address, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise AutosegError(f"--cluster {spec.address}: no Dask scheduler answers there ({e})") from None
        return stack.enter_context(client), None, None
    jobqueue = require_extra("dask_jobqueue", "cluster", "train --cluster FILE")
    config = spec.config
    cluster = stack.enter_context(getattr(jobqueue, SYSTEMS[config.system])(**config.cluster_kwargs()))
    cluster.adapt(minimum=0, maximum=config.jobs)
    return stack.enter_context(Client(cluster)), None, {FOLD_RESOURCE: 1}


def run_graph(graph: Sequence[GraphJob], spec: ClusterSpec, log_dir: Path, report: Callable[[str], Any] = print,
              progress: bool = True) -> None:
    """Run ``graph`` on the cluster ``spec``; returns when every job succeeded.

    One line is reported per job state change (submitted, running on a worker, finished, failed with its log,
    retried), besides a bar over the jobs. Raises :class:`AutosegError` naming every job that failed twice (with
    its log) and those left undone because of it as :class:`autoseg.errors.JobsFailed`.
    """
    from contextlib import ExitStack

    if not graph:
        return
    with ExitStack() as stack:
        client, threads, resources = _connect(spec, stack)
        topic = f"autoseg-jobs-{uuid.uuid4().hex[:12]}"
        start = time.monotonic()

        def on_event(event) -> None:
            msg = event[1] if isinstance(event, tuple) else event
            clock = time.strftime("%H:%M:%S")
            if msg["state"] == "running":
                again = f" (attempt {msg['attempt']})" if msg["attempt"] > 1 else ""
                report(f"[{clock}] {msg['job']}: running on {msg['host']}{again}")
            elif msg["state"] == "finished":
                report(f"[{clock}] {msg['job']}: finished")
            else:
                report(f"[{clock}] {msg['job']}: failed with exit code {msg['code']}, log {msg['log']}")

        client.subscribe_topic(topic, on_event)
        futures: dict[str, Any] = {}
        logs = {job.name: str(Path(log_dir) / f"{job.name}.log") for job in graph}
        for job in graph:
            futures[job.name] = client.submit(run_job, job.name, job.argv, logs[job.name], threads, topic,
                                              *(futures[d] for d in job.depends), key=f"{job.name}-{uuid.uuid4().hex}",
                                              retries=1, pure=False, resources=resources)
        report(f"submitted {len(graph)} job(s) to {client.scheduler.address}; logs in {log_dir}")
        from distributed import as_completed

        failed: list[str] = []
        undone: list[str] = []
        name_of = {f.key: n for n, f in futures.items()}
        bar = progress_bar(len(graph), "cluster jobs", "job", progress)
        try:
            for future in as_completed(list(futures.values())):
                name = name_of[future.key]
                if future.status == "error":
                    job = next(j for j in graph if j.name == name)
                    if any(d in failed or d in undone for d in job.depends):
                        undone.append(name)
                    else:
                        failed.append(name)
                bar.update()
        finally:
            bar.close()
        time.sleep(0.2)  # the last state-change events arrive after their task's result
    minutes = (time.monotonic() - start) / 60
    if failed:
        lines = [f"{len(failed)} job(s) failed twice; {len(undone)} not run because of them ({minutes:.1f} min):"]
        lines += [f"  {name}: log {logs[name]}" for name in failed]
        if undone:
            lines.append(f"  not run: {', '.join(undone)}")
        lines.append("run the same command again to retry: finished folds are kept, killed ones resumed")
        raise JobsFailed(*lines)
    report(f"all {len(graph)} job(s) finished in {minutes:.1f} min")
