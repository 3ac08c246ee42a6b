"""``autoseg train DATASET --cluster SPEC``: the job graph of :mod:`autoseg.workflow.jobs` run by Dask distributed.

autoseg schedules nothing itself: each job is a Dask task whose dependencies are its graph dependencies, and Dask
places it on a worker (``retries=1``: a failed job runs once more, then it and its dependents are reported with
the job's log). A task runs the job's ``autoseg`` command in a subprocess on its worker, so a fold trains exactly as
``autoseg train DATASET -c C -f K --resume`` would there (finished folds skipped, killed ones resumed), and the
log of every attempt is appended to ``<dataset>/jobs/<job>.log``: the workspace must be on a file system the
workers share.

The task watches its subprocess: a job whose log has not grown for ``job_timeout`` (it prints a line per epoch and
per tenth of a validation) is hung; it is killed and the attempt fails, so the retry runs it again. A cancelled task
(Ctrl-C in ``train --cluster``, or its client gone) interrupts its subprocess (a fold saves its latest checkpoint),
then kills what is left of it. On a local cluster of a host with several GPUs, each worker's jobs see one GPU
(``CUDA_VISIBLE_DEVICES``, round-robin). ``SPEC``:

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
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from autoseg.errors import AutosegError, JobsFailed, require_extra
from autoseg.parallel import usable_cpus
from autoseg.progress import bar as progress_bar
from autoseg.workflow.jobs import GraphJob

#: dask-jobqueue's cluster class of each system a config file may name.
SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster",
           "htcondor": "HTCondorCluster"}
#: Dask's resource name that makes a job-queue worker take one fold at a time.
FOLD_RESOURCE = "autoseg_fold"
#: ``train --cluster --job-timeout`` by default, minutes: longer than any silent stretch of a healthy fold job (an
#: epoch, a tenth of its validation, a previous-stage prediction), short enough that a hung job is retried the same
#: day.
JOB_TIMEOUT_MINUTES = 60.0
#: Seconds a cancelled job has between its interrupt (it saves its latest checkpoint) and being killed.
CANCEL_GRACE_SECONDS = 20.0
#: Seconds between two looks of a task at its subprocess, its log and its cancellation.
POLL_SECONDS = 1.0
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

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def assigned_gpu(worker_index: int, device: str, gpus: Sequence[str]) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` of a local worker's jobs: one of ``gpus`` by worker, round-robin, when the job
    runs on ``auto`` or ``cuda`` and more than one GPU is visible; ``None``: leave the job's environment alone (no
    or one GPU, ``cpu``, or a ``cuda:N`` the job chose itself).

    Examples
    --------
    >>> [assigned_gpu(w, "auto", ["GPU-a", "GPU-b"]) for w in range(3)]
    ['GPU-a', 'GPU-b', 'GPU-a']
    >>> assigned_gpu(1, "cuda:0", ["GPU-a", "GPU-b"]), assigned_gpu(1, "auto", ["GPU-a"])
    (None, None)
    """
    if device not in ("auto", "cuda") or len(gpus) < 2:
        return None
    return gpus[worker_index % len(gpus)]


def job_device(argv: Sequence[str]) -> str:
    """The ``--device`` of a job's command line (``auto`` without one)."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--device" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--device="):
            return a.split("=", 1)[1]
    return "auto"


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries that name them whatever the jobs' own
    visibility (``GPU-<uuid>``); empty without CUDA or without readable UUIDs."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError, AttributeError):
        return []
    named = [u if u.startswith(("GPU-", "MIG-")) else f"GPU-{u}" for u in uuids]
    ok = all(re.fullmatch(r"(GPU|MIG)-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", n) for n in named)
    return named if ok else []


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the job and every process it started (its own session: see :func:`supervise`)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def supervise(proc: subprocess.Popen, log: Path, timeout_s: float | None, cancelled: Callable[[], bool],
              poll_s: float = POLL_SECONDS, grace_s: float = CANCEL_GRACE_SECONDS) -> tuple[int, str | None]:
    """Wait for a job's subprocess (started in a session of its own) while watching its progress.

    Parameters
    ----------
    proc
        The job; the leader of its process group.
    log
        Its log file: growing is its sign of progress.
    timeout_s
        Seconds without the log growing after which the job is hung and killed (``None``: never).
    cancelled
        Polled every ``poll_s`` seconds: when true, the job is interrupted (SIGINT: a fold saves its latest
        checkpoint) and killed after ``grace_s`` seconds (:func:`_interrupt`).

    Returns
    -------
    (returncode, why)
        ``why``: ``None`` (the job ended by itself), ``"hung"`` or ``"cancelled"``. Whatever the job left running
        in its process group (data-loader workers ...) is killed before this returns.
    """
    last_size, last_change, why = _size(log), time.monotonic(), None
    try:
        while True:
            try:
                return proc.wait(timeout=poll_s), why
            except subprocess.TimeoutExpired:
                pass
            if cancelled():
                return _interrupt(proc, log, poll_s, grace_s), "cancelled"
            size, now = _size(log), time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
            elif timeout_s is not None and now - last_change > timeout_s:
                why = "hung"
                _signal_group(proc, signal.SIGKILL)
                return proc.wait(), why
    finally:
        _signal_group(proc, signal.SIGKILL)  # the leader is gone (or going); nothing of the job outlives it


#: What Python prints when it drops a KeyboardInterrupt raised inside a finaliser or weakref callback.
_LOST_INTERRUPT = b"Exception ignored in"


def _interrupt(proc: subprocess.Popen, log: Path, poll_s: float, grace_s: float) -> int:
    """Interrupt the job and wait for it to end; its exit code.

    SIGINT goes to the job alone (it stops its own workers). Python drops a KeyboardInterrupt that lands in a
    finaliser (it prints ``Exception ignored in ...`` and the training carries on): then the job is interrupted
    again. After ``grace_s`` seconds, the job's process group is killed.
    """
    deadline = time.monotonic() + grace_s
    seen = max(0, _size(log))  # before the signal: a job quick to say it lost the interrupt must not say it unread
    proc.send_signal(signal.SIGINT)
    while True:
        try:
            return proc.wait(timeout=max(0.01, min(poll_s, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            _signal_group(proc, signal.SIGKILL)
            return proc.wait()
        try:
            with open(log, "rb") as f:
                f.seek(max(0, seen))
                new = f.read()
        except OSError:
            new = b""
        seen += len(new)
        if _LOST_INTERRUPT in new:
            proc.send_signal(signal.SIGINT)


def _task_cancelled(worker, key) -> bool:
    """Whether the scheduler dropped this running task (cancelled by its client, or the client went away)."""
    try:
        ts = worker.state.tasks.get(key)
    except AttributeError:  # a distributed without WorkerState: no cancellation seen
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def run_job(name: str, argv: Sequence[str], log: str, threads: int | None, topic: str,
            timeout_s: float | None = None, gpus: Sequence[str] = (), *dependencies: Any) -> str:
    """Run one job's command on this worker (a Dask task; ``dependencies`` are the results it waits for).

    The command's output is appended to ``log`` after a line naming the attempt, host and time; a non-zero exit
    raises, so that Dask retries the job, and so does a job whose log has not grown for ``timeout_s`` seconds (it
    is killed first). A cancelled task stops its job (:func:`supervise`). ``gpus``: the GPUs of a local cluster's
    host, shared out between its workers (:func:`assigned_gpu`). A command starting with ``autoseg`` runs this
    Python's autoseg; any other runs as given.
    """
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    log_path = Path(log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    attempt = attempts(log_path) + 1
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # every line in the log as it is printed: the log's growth is the job's progress
    if threads:  # a local cluster shares this machine's cores between its workers
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        index = int(worker.name)
    except (TypeError, ValueError):
        index = 0
    gpu = assigned_gpu(index, job_device(argv), gpus)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    env.pop("LOCAL_RANK", None)  # a fold job is never part of the worker's own torchrun
    cmd = [sys.executable, "-m", "autoseg", *argv[1:]] if argv[0] == "autoseg" else list(argv)
    worker.log_event(topic, {"job": name, "state": "running", "attempt": attempt, "host": worker.address})
    with open(log_path, "a") as f:
        f.write(f"{_ATTEMPT}{attempt} on {worker.address} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                f"{f' (GPU {gpu})' if gpu else ''}: {' '.join(argv)}\n")
        f.flush()
        # a session of its own: the job and its workers are signalled as one group, and a Ctrl-C meant for the
        # command that submitted the jobs reaches them only through their task's cancellation
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        rc, why = supervise(proc, log_path, timeout_s, lambda: _task_cancelled(worker, key))
        if why is not None:
            note = (f"no progress (the log did not grow) for {_minutes(timeout_s)}: killed" if why == "hung"
                    else "cancelled: interrupted and stopped")
            f.write(f"=== autoseg job {name}: {note} (exit code {rc})\n")
    if why == "cancelled":
        worker.log_event(topic, {"job": name, "state": "cancelled", "attempt": attempt})
        return name
    if rc != 0:
        worker.log_event(topic, {"job": name, "state": "failed", "attempt": attempt, "code": rc, "log": log,
                                 "hung": why == "hung", "timeout_s": timeout_s})
        raise RuntimeError(f"{name}: exit code {rc} (attempt {attempt}); log {log}")
    worker.log_event(topic, {"job": name, "state": "finished", "attempt": attempt})
    return name


def _connect(spec: ClusterSpec, stack):
    """A Dask client for ``spec`` (closed by ``stack``), the threads each local job may use, and the resources a job
    asks for."""
    require_extra("distributed", "cluster", "train --cluster")
    from distributed import Client, LocalCluster

    if spec.kind == "local":
        cluster = stack.enter_context(LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=None,
                                                   silence_logs=logging.ERROR))
        return stack.enter_context(Client(cluster)), max(1, usable_cpus() // spec.workers), None
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


def _last_error(log: str) -> str:
    """The job's last ``error:`` line (what the CLI said when it refused), or ``""``."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith("error: ")), "")


def run_graph(graph: Sequence[GraphJob], spec: ClusterSpec, log_dir: Path, report: Callable[[str], Any] = print,
              progress: bool = True, job_timeout_minutes: float | None = JOB_TIMEOUT_MINUTES) -> None:
    """Run ``graph`` on the cluster ``spec``; returns when every job succeeded.

    One line is reported per job state change (submitted, running on a worker, finished, failed with its log, hung
    and killed, retried), besides a bar over the jobs. Raises :class:`AutosegError` naming every job that failed
    twice (with its log) and those left undone because of it as :class:`autoseg.errors.JobsFailed`.

    Parameters
    ----------
    job_timeout_minutes
        A job whose log has not grown for this long is killed and its attempt fails (``None``: never).

    Raises
    ------
    KeyboardInterrupt
        After cancelling every job: queued ones are dropped, running ones interrupted (a fold saves its latest
        checkpoint) and killed after :data:`CANCEL_GRACE_SECONDS`; this waits until they have stopped.
    """
    from contextlib import ExitStack

    if not graph:
        return
    timeout_s = None if job_timeout_minutes is None else 60.0 * job_timeout_minutes
    with ExitStack() as stack:
        client, threads, resources = _connect(spec, stack)
        # a local cluster's workers share this host's GPUs; the workers of other clusters have their own
        on_gpus = any(job_device(j.argv) in ("auto", "cuda") for j in graph)
        gpus = visible_gpus() if spec.kind == "local" and on_gpus else []
        topic = f"autoseg-jobs-{uuid.uuid4().hex[:12]}"
        start = time.monotonic()
        running: set[str] = set()
        client.subscribe_topic(topic, _state_reporter(report, running))
        futures: dict[str, Any] = {}
        logs = {job.name: str(Path(log_dir) / f"{job.name}.log") for job in graph}
        try:
            _submit(client, graph, futures, logs, threads, topic, timeout_s, gpus, resources)
            report(f"submitted {len(graph)} job(s) to {client.scheduler.address}; logs in {log_dir}")
            failed, undone = _wait_for_jobs(graph, futures, progress)
        except KeyboardInterrupt:
            _cancel(client, futures, running, report)
            raise
        time.sleep(0.2)  # the last state-change events arrive after their task's result
    minutes = (time.monotonic() - start) / 60
    if failed:
        raise JobsFailed(*_failure_lines(failed, undone, logs, minutes))
    report(f"all {len(graph)} job(s) finished in {minutes:.1f} min")


def _state_reporter(report: Callable[[str], Any], running: set[str]) -> Callable[[Any], None]:
    """The handler of the jobs' state-change events (:func:`run_job` logs them): it reports one line per change
    (running on a worker, finished, cancelled, failed with its log, hung and killed) and keeps ``running``, the
    names of the jobs running now, current."""
    def on_event(event) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        clock = time.strftime("%H:%M:%S")
        job = msg["job"]
        if msg["state"] == "running":
            running.add(job)
            again = f" (attempt {msg['attempt']})" if msg["attempt"] > 1 else ""
            report(f"[{clock}] {job}: running on {msg['host']}{again}")
            return
        running.discard(job)
        if msg["state"] == "finished":
            report(f"[{clock}] {job}: finished")
        elif msg["state"] == "cancelled":
            report(f"[{clock}] {job}: cancelled, its process stopped")
        elif msg.get("hung"):
            report(f"[{clock}] {job}: no progress for {_minutes(msg['timeout_s'])} (its log did not grow): "
                   f"killed (attempt {msg['attempt']}), log {msg['log']}")
        else:
            report(f"[{clock}] {job}: failed with exit code {msg['code']}, log {msg['log']}")

    return on_event


def _submit(client, graph: Sequence[GraphJob], futures: dict[str, Any], logs: dict[str, str], threads: int | None,
            topic: str, timeout_s: float | None, gpus: Sequence[str], resources: dict[str, int] | None) -> None:
    """Submit every job of ``graph`` (in order: a job after those it depends on) as a :func:`run_job` task that
    waits for its dependencies' tasks and is retried once.

    ``futures`` (job name -> its future) is filled as the jobs are submitted, so that an interruption cancels those
    submitted already.
    """
    for job in graph:
        futures[job.name] = client.submit(run_job, job.name, job.argv, logs[job.name], threads, topic,
                                          timeout_s, gpus, *(futures[d] for d in job.depends),
                                          key=f"{job.name}-{uuid.uuid4().hex}", retries=1, pure=False,
                                          resources=resources)


def _wait_for_jobs(graph: Sequence[GraphJob], futures: dict[str, Any], progress: bool
                   ) -> tuple[list[str], list[str]]:
    """Wait until every job has ended, with a bar over the jobs.

    Returns
    -------
    failed, undone
        The jobs that failed (their retry too), and those not run because a job they depend on failed or was not
        run, in the order they ended.
    """
    from distributed import as_completed

    name_of = {f.key: n for n, f in futures.items()}
    failed: list[str] = []
    undone: list[str] = []
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
        bar.close()  # before an interruption's report of the jobs it cancels
    return failed, undone


def _failure_lines(failed: Sequence[str], undone: Sequence[str], logs: dict[str, str], minutes: float) -> list[str]:
    """The lines of :class:`autoseg.errors.JobsFailed`: how many jobs failed and were not run, each failed job with
    its log (and the last ``error:`` line it printed), the jobs not run, and how to retry."""
    lines = [f"{len(failed)} job(s) failed twice; {len(undone)} not run because of them ({minutes:.1f} min):"]
    for name in failed:
        said = _last_error(logs[name])
        lines.append(f"  {name}: log {logs[name]}{f' ({said})' if said else ''}")
    if undone:
        lines.append(f"  not run: {', '.join(undone)}")
    lines.append("run the same command again to retry: finished folds are kept, killed ones resumed")
    return lines


def _cancel(client, futures: dict[str, Any], running: set[str], report: Callable[[str], Any]) -> None:
    """Cancel every job of the run and wait until the running ones have stopped (their tasks see the
    cancellation, see :func:`supervise`)."""
    left = [f for f in futures.values() if not f.done()]
    report(f"interrupted: cancelling {len(left)} job(s); {len(running)} running stop after saving their latest "
           f"checkpoint (rerun the same command to continue)")
    client.cancel(list(futures.values()), force=True)
    deadline = time.monotonic() + CANCEL_GRACE_SECONDS + 10 * POLL_SECONDS
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
