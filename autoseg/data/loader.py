"""Background batch loading: sampled, augmented training batches from worker processes.

``BatchLoader`` is an iterator of batches ``{"data": (B, C, *patch) float32, "target": [int8 arrays, one per
deep-supervision scale, full resolution first], "keys": case ids, "index": batch index}``. Axis order is numpy
``(Z, Y, X)`` (2D: ``(Y, X)``) after the plans' ``transpose_forward``. Batches are numpy arrays; the trainer converts
them to torch.

Determinism. Batch ``k`` is a pure function of ``(source, case ids, config, transforms, seed, k)``: its generator is
``PCG64(SeedSequence(seed, spawn_key=(k,)))``, which draws the cases, the patch positions and every augmentation
parameter (batchgenerators' draws through :func:`autoseg.data.augmentation.legacy_rng_seeded`). Worker ``w`` of ``n`` produces
batches ``w, w + n, w + 2n, ...``, so which process makes a batch never changes its content. With
``deterministic=True`` batches are delivered in index order (each worker has its own queue and the consumer reads
them in turn), so the stream is bitwise identical for 0, 1 or any number of workers. With ``deterministic=False``
they are delivered as they complete (one shared queue; a slow batch does not hold up the others); each batch is
still the same function of its ``"index"``.

Failure. A worker that raises sends the error (batch index, case id, cause, traceback) and stops; a worker that
dies (killed, segfault) is noticed by a liveness check every ``poll_interval`` seconds while the consumer waits.
Both raise :class:`LoaderWorkerError` in the consumer and shut the loader down. No batch within ``timeout`` seconds
from live workers raises :class:`LoaderTimeoutError`. ``close()`` (also on ``with`` exit, on garbage collection
and at interpreter exit) stops and joins every worker, terminating those that do not stop in time.

Transport. Workers write each batch to a file in a private temporary folder (``/dev/shm`` when writable) and send
only its name through a bounded queue (``prefetch`` batches per worker): a large queue message cut short by a worker
killed mid-write would block the consumer's read forever, beyond any timeout. The folder is removed on close.
Workers are forked by default (no pickling of the source; fast start); pass ``start_method="spawn"`` or
``"forkserver"`` where forking the consumer is unwelcome (then source and transforms must be picklable).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import shutil
import signal
import tempfile
import time
import traceback
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from autoseg.data.augmentation import (TrainingAugmentation, ValidationTransforms, deep_supervision_scales,
                                       training_params_from_plan)
from autoseg.data.sampling import CaseSource, SampleError, SamplingConfig, sample_batch

BatchTransform = Callable[[dict, np.random.Generator], dict]


class LoaderWorkerError(RuntimeError):
    """A loader worker failed: raised an exception (message names batch, case and cause) or died."""

    def __init__(self, message: str, worker: int | None = None, batch_index: int | None = None,
                 case_id: str | None = None, remote_traceback: str | None = None):
        super().__init__(message)
        self.worker = worker
        self.batch_index = batch_index
        self.case_id = case_id
        self.remote_traceback = remote_traceback


class LoaderTimeoutError(LoaderWorkerError):
    """Workers are alive but no batch arrived within the configured timeout."""


@dataclass(frozen=True)
class LoaderConfig:
    """How to load.

    Attributes
    ----------
    patch_size
        Final network patch, voxels: ``(Z, Y, X)`` for 3D, ``(Y, X)`` for 2D (``dims`` follows from it).
    batch_size
        Samples per batch.
    oversample_foreground
        Fraction of every batch forced to contain foreground (nnU-Net's "last samples" rule).
    sample_patch_size
        Pre-augmentation box, voxels (see ``TrainingAugmentation.pre_patch_size``); ``None``: ``patch_size``.
    num_extra_classes
        Cascade: label values of the previous stage (background included); 0 disables.
    num_workers
        Background processes; 0 produces batches in the calling thread.
    seed
        Root of every random draw.
    deterministic
        Deliver batches in index order (bitwise reproducible whatever ``num_workers``); otherwise as completed.
    num_batches
        Stop after this many batches; ``None``: endless.
    first_batch
        Index of the first batch delivered: a resumed training run continues its batch stream where it stopped.
    prefetch
        Batches each worker may have ready ahead of the consumer.
    timeout
        Seconds to wait for the next batch from live workers before raising ``LoaderTimeoutError``.
    poll_interval
        Seconds between worker liveness checks while waiting.
    cache_cases
        Cases each process keeps open (memory maps and voxel locations), least recently used dropped first.
    start_method
        multiprocessing start method; ``None``: ``"fork"`` where available (no pickling, instant start), else
        ``"spawn"`` (then source and transforms must be picklable).
    """

    patch_size: tuple[int, ...]
    batch_size: int
    oversample_foreground: float = 0.33
    sample_patch_size: tuple[int, ...] | None = None
    num_extra_classes: int = 0
    num_workers: int = 2
    seed: int = 0
    deterministic: bool = True
    num_batches: int | None = None
    first_batch: int = 0
    prefetch: int = 2
    timeout: float = 300.0
    poll_interval: float = 0.2
    cache_cases: int = 256
    start_method: str | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")
        if self.num_batches is not None and self.num_batches < 0:
            raise ValueError(f"num_batches must be >= 0 or None, got {self.num_batches}")
        self.sampling  # validates the patch geometry early

    @property
    def dims(self) -> int:
        return len(self.patch_size)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(tuple(self.patch_size), None if self.sample_patch_size is None
                              else tuple(self.sample_patch_size), self.batch_size, self.oversample_foreground,
                              self.num_extra_classes)


def batch_generator(seed: int, index: int) -> np.random.Generator:
    """The generator of batch ``index``: independent streams for every ``(seed, index)``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


class _CachedSource:
    """LRU cache in front of a source: reopening a memory-mapped case per sample costs more than sampling it."""

    def __init__(self, source: CaseSource, size: int):
        self.source, self.size = source, size
        self._cases: OrderedDict[str, tuple] = OrderedDict()

    def case_ids(self) -> list[str]:
        return self.source.case_ids()

    def load(self, case_id: str):
        if case_id in self._cases:
            self._cases.move_to_end(case_id)
            return self._cases[case_id]
        case = self.source.load(case_id)
        if self.size > 0:
            self._cases[case_id] = case
            if len(self._cases) > self.size:
                self._cases.popitem(last=False)
        return case

    def load_extra_seg(self, case_id: str):
        return self.source.load_extra_seg(case_id)


def produce_batch(source: CaseSource, case_ids: Sequence[str], config: LoaderConfig,
                  transforms: BatchTransform | None, index: int) -> dict:
    """Batch ``index``, exactly as a worker makes it (see the module docstring)."""
    rng = batch_generator(config.seed, index)
    batch = sample_batch(source, case_ids, config.sampling, rng)
    if transforms is None:
        transforms = ValidationTransforms(num_extra_classes=config.num_extra_classes)
    out = transforms(batch, rng)
    if tuple(out["data"].shape[2:]) != tuple(config.patch_size):
        raise ValueError(f"transforms returned patches of {tuple(out['data'].shape[2:])}, expected "
                         f"{tuple(config.patch_size)} (sample_patch_size without a cropping transform?)")
    out.setdefault("keys", batch["keys"])
    out["index"] = index
    return out


def _describe_failure(e: BaseException, index: int) -> tuple[str, str | None]:
    case = e.case_id if isinstance(e, SampleError) else None
    cause = e.__cause__ if isinstance(e, SampleError) and e.__cause__ is not None else e
    where = f"batch {index}" + (f", case {case!r}" if case is not None else "")
    return f"{where}: {type(cause).__name__}: {cause}", case


# --------------------------------------------------------------------------- worker side
#
# Batches travel as files in a private temporary folder (memory-backed /dev/shm where available); the queues carry
# only short messages. A queue message larger than the pipe's atomic write size could be cut in half by a worker
# killed mid-write, and the consumer's read would then block forever, beyond any timeout.


def _put(q, item, stop, parent: int) -> bool:
    """Put with backpressure, giving up when asked to stop or when the consumer's process is gone."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if stop.is_set() or os.getppid() != parent:
                return False


def _write_batch(folder: str, worker: int, index: int, batch: dict) -> str:
    path = os.path.join(folder, f"batch_{index}.pkl")
    tmp = os.path.join(folder, f".w{worker}_{index}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(batch, f, protocol=pickle.HIGHEST_PROTOCOL)  # transient, same program: never a stored file
    os.replace(tmp, path)
    return path


def _read_batch(path: str) -> dict:
    with open(path, "rb") as f:
        batch = pickle.load(f)
    os.unlink(path)
    return batch


def _worker_main(worker: int, source: CaseSource, case_ids: Sequence[str], config: LoaderConfig,
                 transforms: BatchTransform | None, out, stop, parent: int, folder: str) -> None:
    try:  # one thread per worker: the workers are the parallelism, nested BLAS/OpenMP pools only contend
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle; it then closes us
    cached = _CachedSource(source, config.cache_cases)
    index = config.first_batch + worker
    n = max(config.num_workers, 1)
    end = None if config.num_batches is None else config.first_batch + config.num_batches
    try:
        while not stop.is_set() and (end is None or index < end):
            try:
                path = _write_batch(folder, worker, index,
                                    produce_batch(cached, case_ids, config, transforms, index))
            except BaseException as e:  # noqa: BLE001 -- every failure goes to the consumer
                message, case = _describe_failure(e, index)
                _put(out, ("error", worker, index, message, case, traceback.format_exc()), stop, parent)
                return
            if not _put(out, ("batch", worker, index, path), stop, parent):
                return
            index += n
    finally:
        if stop.is_set():  # at shutdown, do not block process exit on messages nobody will read
            out.cancel_join_thread()


# --------------------------------------------------------------------------- consumer side


def _shutdown(procs: list, queues: list, stop, folder: str | None) -> None:
    """Stop, drain and join workers; terminate (then kill) the ones that do not exit; remove the batch folder."""
    if stop is not None:
        stop.set()
    deadline = time.monotonic() + 1.0  # a worker mid-batch is terminated rather than awaited
    for p in procs:
        while p.is_alive() and time.monotonic() < deadline:
            for q in queues:  # make room so a worker blocked in put() sees the stop flag
                try:
                    while True:
                        q.get_nowait()
                except (queue.Empty, OSError, ValueError, EOFError):
                    pass
            p.join(timeout=0.05)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=1.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=1.0)
    for q in queues:
        q.cancel_join_thread()
        q.close()
    for p in procs:
        try:
            p.close()
        except ValueError:
            pass  # still running after kill: nothing more we can do
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _batch_folder() -> str:
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="autoseg-loader-", dir=base)


class BatchLoader:
    """Iterator of training batches from ``source`` (see the module docstring).

    Parameters
    ----------
    source
        Cases (:class:`autoseg.data.sampling.CaseSource`; a ``CascadeSource`` when ``num_extra_classes > 0``).
    config
        Geometry, workers, seed.
    transforms
        ``(batch, rng) -> batch``, e.g. :class:`autoseg.data.augmentation.TrainingAugmentation`; ``None``: no
        augmentation (``ValidationTransforms`` without deep supervision).
    case_ids
        Cases to draw from (a fold's training cases); default all of ``source.case_ids()``.

    Examples
    --------
    >>> with BatchLoader(source, LoaderConfig((40, 56, 40), 7, num_workers=2), aug) as loader:  # doctest: +SKIP
    ...     for step, batch in zip(range(250), loader):
    ...         train_step(batch["data"], batch["target"])
    """

    def __init__(self, source: CaseSource, config: LoaderConfig, transforms: BatchTransform | None = None,
                 case_ids: Sequence[str] | None = None):
        self.source = source
        self.config = config
        self.transforms = transforms
        self.case_ids = list(case_ids) if case_ids is not None else list(source.case_ids())
        if not self.case_ids:
            raise ValueError("BatchLoader: no cases to sample from")
        self._next_index = config.first_batch  # deterministic: index of the next batch due
        self._delivered = 0
        self._received: list[int] = []  # per worker: messages received from it
        self._procs: list = []
        self._pids: list[int] = []
        self._queues: list = []
        self._started = False
        self._closed = False
        self._finalizer: weakref.finalize | None = None
        self._local_source = _CachedSource(source, config.cache_cases) if config.num_workers == 0 else None

    # -- lifecycle

    def start(self) -> "BatchLoader":
        """Start the workers (the first ``next()`` does it otherwise). Returns ``self``."""
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if self._started or self.config.num_workers == 0:
            self._started = True
            return self
        cfg = self.config
        method = cfg.start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        ctx = mp.get_context(method)
        stop = ctx.Event()
        n = cfg.num_workers
        if cfg.deterministic:
            self._queues = [ctx.Queue(maxsize=cfg.prefetch) for _ in range(n)]
        else:
            self._queues = [ctx.Queue(maxsize=cfg.prefetch * n)]
        self._received = [0] * n
        folder = _batch_folder()
        # registered before the first process starts, so a failing start still cleans up what exists
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._queues, stop, folder)
        parent = os.getpid()
        for w in range(n):
            q = self._queues[w] if cfg.deterministic else self._queues[0]
            p = ctx.Process(target=_worker_main, name=f"autoseg-loader-{w}", daemon=True,
                            args=(w, self.source, self.case_ids, cfg, self.transforms, q, stop, parent, folder))
            p.start()
            self._procs.append(p)
            self._pids.append(p.pid)
        self._started = True
        return self

    def close(self) -> None:
        """Stop and join every worker. Idempotent; a closed loader cannot be restarted."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "BatchLoader":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict]:
        return self

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty before ``start`` and with ``num_workers=0``)."""
        return list(self._pids)

    # -- batches

    def __next__(self) -> dict:
        cfg = self.config
        if cfg.num_batches is not None and self._delivered >= cfg.num_batches:
            raise StopIteration
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if not self._started:
            self.start()
        if cfg.num_workers == 0:
            index = self._next_index
            try:
                batch = produce_batch(self._local_source, self.case_ids, cfg, self.transforms, index)
            except Exception as e:
                message, case = _describe_failure(e, index)
                raise LoaderWorkerError(f"loader failed on {message}", None, index, case) from e
            self._next_index += 1
        else:
            batch = self._receive()
        self._delivered += 1
        return batch

    def _receive(self) -> dict:
        cfg = self.config
        expected = (self._next_index - cfg.first_batch) % cfg.num_workers if cfg.deterministic else None
        q = self._queues[expected] if cfg.deterministic else self._queues[0]
        deadline = time.monotonic() + cfg.timeout
        while True:
            try:
                item = q.get(timeout=cfg.poll_interval)
            except queue.Empty:
                item = self._check_workers(q, expected)
            if item is not None:
                return self._accept(item)
            if time.monotonic() > deadline:
                self.close()
                which = f"batch {self._next_index}" if cfg.deterministic else "a batch"
                raise LoaderTimeoutError(f"no {which} from the loader's {cfg.num_workers} live workers within "
                                         f"{cfg.timeout:g} s", expected, self._next_index)

    def _accept(self, item: tuple) -> dict:
        kind, worker, index = item[:3]
        if kind == "error":
            _, _, _, message, case, tb = item
            self.close()
            raise LoaderWorkerError(f"loader worker {worker} failed on {message}\n--- worker traceback ---\n{tb}",
                                    worker, index, case, tb)
        if self.config.deterministic and index != self._next_index:
            self.close()
            raise LoaderWorkerError(f"loader received batch {index} where batch {self._next_index} was due "
                                    f"(worker {worker})", worker, index)
        self._received[worker] += 1
        self._next_index += 1
        return _read_batch(item[3])

    def _check_workers(self, q, expected: int | None) -> tuple | None:
        """Raise if a worker has died without reporting; return a message it sent just before exiting."""
        cfg = self.config
        n = cfg.num_workers
        for w, p in enumerate(self._procs):
            if p.is_alive():
                continue
            due = w + n * self._received[w]
            if cfg.num_batches is not None and due >= cfg.num_batches:
                continue  # finished its share
            if p.exitcode == 0 and expected is not None and w != expected:
                continue  # it reported an error; the message waits in its own queue, read in turn
            if expected is None or w == expected:
                try:  # a batch or an error sent just before exiting may still be in flight
                    return q.get(timeout=0.5)
                except queue.Empty:
                    pass
            code = p.exitcode
            how = (f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited with code {code}")
            message = (f"loader worker {w} (pid {self._pids[w]}) {how} while producing batch {due}, "
                       f"without reporting an error (out of memory? a crash in native code?)")
            self.close()
            raise LoaderWorkerError(message, w, due)
        return None


# --------------------------------------------------------------------------- convenience


class StoreSource:
    """A :class:`~autoseg.data.sampling.CaseSource` over a preprocessed case store.

    Parameters
    ----------
    store
        An :class:`autoseg.preprocessing.store.CaseStore` (or anything with ``case_ids()`` and
        ``load(case_id, mmap=True) -> (data, seg, locs, ...)``).
    extra_seg
        Cascade: case id -> the previous stage's segmentation ``(1, Z, Y, X)`` at this configuration's geometry.
    """

    def __init__(self, store, extra_seg: Callable[[str], np.ndarray] | None = None):
        self.store = store
        self.extra_seg = extra_seg

    @classmethod
    def from_folder(cls, folder) -> "StoreSource":
        """Source over ``DatasetPaths.preprocessed(config)``."""
        from autoseg.preprocessing.store import CaseStore

        return cls(CaseStore(folder))

    def case_ids(self) -> list[str]:
        return list(self.store.case_ids())

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        data, seg, locs = self.store.load(case_id, mmap=True)[:3]
        return data, seg, {int(k): v for k, v in locs.items()}

    def load_extra_seg(self, case_id: str) -> np.ndarray:
        if self.extra_seg is None:
            raise KeyError(f"case {case_id!r}: this source has no previous-stage segmentations")
        return self.extra_seg(case_id)


def training_loader(source: CaseSource, plan, *, case_ids: Sequence[str] | None = None, seed: int = 0,
                    num_workers: int = 2, deterministic: bool = True, num_batches: int | None = None,
                    num_extra_classes: int = 0, batch_size: int | None = None, **config: Any) -> BatchLoader:
    """The training loader of a :class:`~autoseg.schema.plans.ConfigurationPlan`: DESIGN.md augmentation,
    deep-supervision targets from the architecture's strides, 33% foreground oversampling.

    ``batch_size`` overrides the plan's; further keyword arguments go to :class:`LoaderConfig`.
    """
    aug = TrainingAugmentation(training_params_from_plan(plan, num_extra_classes))
    cfg = LoaderConfig(tuple(plan.patch_size), int(batch_size or plan.batch_size),
                       sample_patch_size=aug.pre_patch_size, num_extra_classes=num_extra_classes,
                       num_workers=num_workers, seed=seed, deterministic=deterministic, num_batches=num_batches,
                       **config)
    return BatchLoader(source, cfg, aug, case_ids)


def validation_loader(source: CaseSource, plan, *, case_ids: Sequence[str] | None = None, seed: int = 0,
                      num_workers: int = 1, num_batches: int | None = None, num_extra_classes: int = 0,
                      batch_size: int | None = None, **config: Any) -> BatchLoader:
    """Patches at the final size without augmentation (same oversampling), with deep-supervision targets: the
    per-epoch pseudo-validation batches of nnU-Net's trainer."""
    mask = [i for i, n in enumerate(plan.normalization) if n.use_nonzero_mask]
    tf = ValidationTransforms(deep_supervision_scales(plan.architecture.strides), num_extra_classes, mask)
    cfg = LoaderConfig(tuple(plan.patch_size), int(batch_size or plan.batch_size),
                       num_extra_classes=num_extra_classes, num_workers=num_workers, seed=seed,
                       num_batches=num_batches, **config)
    return BatchLoader(source, cfg, tf, case_ids)
