"""Background batch loading: sampled, augmented training batches from worker processes.

``BatchLoader`` is an iterator of batches ``{"data": (B, C, *patch) float32, "target": [int8 arrays, one per
deep-supervision scale, full resolution first], "keys": case ids, "index": batch index}``. Axis order is numpy
``(Z, Y, X)`` (2D: ``(Y, X)``) after the plans' ``transpose_forward``. Batches are numpy arrays; the trainer converts
them to torch.

Design. A :class:`torch.utils.data.DataLoader` with ``batch_size=None`` over a dataset whose item ``k`` is batch ``k``
(:func:`produce_batch`), indexed by a sampler that counts ``first_batch, first_batch + 1, ...`` (endless, or
``num_batches`` of them): a resumed training run continues its stream where it stopped. ``num_workers=0`` makes the
batches in the calling thread. Workers are forked by default (no pickling of the source; fast start); pass
``start_method="spawn"`` or ``"forkserver"`` where forking the consumer is unwelcome (then source and transforms must
be picklable). Each worker runs one BLAS/OpenMP thread, ignores Ctrl-C (the consumer's to handle; it then closes the
loader) and keeps its own cache of open cases.

Determinism. Batch ``k`` is a pure function of ``(source, case ids, config, transforms, seed, k)``: its generator is
``PCG64(SeedSequence(seed, spawn_key=(k,)))``, which draws the cases, the patch positions and every augmentation
parameter (batchgenerators' draws through :func:`autoseg.data.augmentation.legacy_rng_seeded`), so which process
makes a batch never changes its content. With ``deterministic=True`` batches are delivered in index order, so the
stream is bitwise identical for 0, 1 or any number of workers. With ``deterministic=False`` they are delivered as
they complete (the DataLoader's ``in_order=False``: a slow batch does not hold up the others); each batch is still
the same function of its ``"index"``. The loader draws nothing from the global numpy, ``random`` or torch generators.

Failure. A worker whose batch raises sends the failure (batch index, case id, cause, traceback) as that batch; it
raises :class:`LoaderWorkerError` in the consumer when the batch is due. A worker that dies (killed, segfault) is
noticed by a liveness check every ``poll_interval`` seconds while the consumer waits (the DataLoader's
asynchronous SIGCHLD check is switched off for these workers, so the error comes out of ``next()``, never out of
unrelated code) and raises :class:`LoaderWorkerError` too. No batch within ``timeout`` seconds from live workers
raises :class:`LoaderTimeoutError`. These errors close the loader (with ``num_workers=0`` the next ``next()``
tries the failed batch again). ``close()`` (also on ``with`` exit, on garbage
collection and at interpreter exit) stops and joins every worker; a worker that does not stop in time (a timed-out
one at once) is terminated.

Transport. A worker copies the arrays of its batch into one ``uint8`` tensor made in shared memory; the DataLoader
passes its file descriptor to the consumer, which gets the arrays back as numpy views of that block (no copy).
Pickled numpy arrays would instead be copied several times through a pipe. The block is anonymous shared memory,
freed with the last reference to it, whatever happened to the worker. With ``pin_memory`` (training on CUDA) the
DataLoader's pinning thread copies each block into page-locked memory while the consumer works, and the arrays
arrive as CPU tensors viewing that block (numeric arrays only): a copy from them to the GPU with
``non_blocking=True`` is asynchronous, and the block is not reused before that copy has finished (torch's pinned
memory allocator records the copy). Batches made in the calling thread (``num_workers=0``) are not pinned.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
import time
import traceback
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from autoseg.data.augmentation import (TrainingAugmentation, ValidationTransforms, deep_supervision_scales,
                                       training_params_from_plan)
from autoseg.data.sampling import CaseSource, SampleError, SamplingConfig, sample_batch
from autoseg.data.torch_workers import WorkerPool

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
        Batches each worker may have ready ahead of the consumer (the DataLoader's ``prefetch_factor``).
    timeout
        Seconds to wait for the next batch from live workers before raising ``LoaderTimeoutError``.
    poll_interval
        Seconds between worker liveness checks while waiting.
    cache_cases
        Cases each process keeps open (memory maps and voxel locations), least recently used dropped first.
    start_method
        multiprocessing start method; ``None``: ``"fork"`` where available (no pickling, instant start), else
        ``"spawn"`` (then source and transforms must be picklable).
    regions
        Region-based training: label values of each region, for foreground oversampling per region
        (:class:`~autoseg.data.sampling.SamplingConfig`).
    pin_memory
        Deliver the workers' arrays as CPU tensors in pinned memory (see Transport in the module docstring); for
        training on CUDA, where only pinned memory is copied asynchronously.
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
    regions: tuple[tuple[int, ...], ...] | None = None
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")
        if self.num_batches is not None and self.num_batches < 0:
            raise ValueError(f"num_batches must be >= 0 or None, got {self.num_batches}")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {self.poll_interval}")
        self.sampling  # validates the patch geometry early

    @property
    def dims(self) -> int:
        return len(self.patch_size)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(tuple(self.patch_size), None if self.sample_patch_size is None
                              else tuple(self.sample_patch_size), self.batch_size, self.oversample_foreground,
                              self.num_extra_classes, self.regions)


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


class _Failure(NamedTuple):
    """What a worker sends instead of a batch that raised (exceptions themselves may not survive pickling)."""

    worker: int
    index: int
    message: str
    case_id: str | None
    traceback: str


class _Slot(NamedTuple):
    """Where an array lies in a packed batch's block."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


class _Packed(NamedTuple):
    """A batch in transit: its numeric arrays in one tensor (sent through shared memory), ``_Slot`` in their place."""

    block: torch.Tensor
    batch: dict


_ALIGN = 64  # bytes; every array starts on a cache line


def _map(batch: dict, f: Callable) -> dict:
    """``f`` applied to every value of ``batch`` and to every element of its list and tuple values."""
    return {k: type(v)(map(f, v)) if type(v) in (list, tuple) else f(v) for k, v in batch.items()}


def _pack(batch: dict) -> _Packed:
    arrays: list[tuple[np.ndarray, _Slot]] = []
    size = 0

    def slot(v):
        nonlocal size
        if not (isinstance(v, np.ndarray) and v.dtype.kind in "biufc"):
            return v
        arrays.append((v, _Slot(size, v.nbytes, v.dtype.str, v.shape)))
        size += -(-v.nbytes // _ALIGN) * _ALIGN
        return arrays[-1][1]

    skeleton = _map(batch, slot)
    # moved to shared memory while still empty (a copy of uninitialised bytes), so the filled block is never copied:
    # the DataLoader hands its file descriptor to the consumer
    block = torch.empty(max(size, 1), dtype=torch.uint8).share_memory_()
    raw = block.numpy()
    for a, s in arrays:
        np.copyto(raw[s.offset:s.offset + s.nbytes].view(a.dtype).reshape(a.shape), a)
    return _Packed(block, skeleton)


def _unpack(packed: _Packed) -> dict:
    """The batch's arrays as views of its block: numpy arrays, or CPU tensors when the block is pinned (views of
    the same torch storage, so that the pinned memory allocator sees their copies to the GPU)."""
    block = packed.block
    if block.is_pinned():
        return _map(packed.batch, lambda v: block[v.offset:v.offset + v.nbytes].view(_torch_dtype(v.dtype))
                    .view(v.shape) if isinstance(v, _Slot) else v)
    raw = block.numpy()
    return _map(packed.batch, lambda v: raw[v.offset:v.offset + v.nbytes].view(v.dtype).reshape(v.shape)
                if isinstance(v, _Slot) else v)


def _torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a numpy dtype string (``"<f4"`` -> ``torch.float32``)."""
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


class _Batches(Dataset):
    """Item ``k`` is batch ``k``. In a worker, a batch comes packed (``_Packed``) and a failure as ``_Failure``;
    in the calling thread, the batch dict itself and failures raise."""

    def __init__(self, source: CaseSource, case_ids: Sequence[str], config: LoaderConfig,
                 transforms: BatchTransform | None):
        self.source, self.case_ids, self.config, self.transforms = source, case_ids, config, transforms
        self._cache: _CachedSource | None = None  # made in the process that uses it: one per worker

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __getitem__(self, index: int):
        if self._cache is None:
            self._cache = _CachedSource(self.source, self.config.cache_cases)
        worker = get_worker_info()
        if worker is None:
            return produce_batch(self._cache, self.case_ids, self.config, self.transforms, index)
        try:
            return _pack(produce_batch(self._cache, self.case_ids, self.config, self.transforms, index))
        except Exception as e:  # noqa: BLE001 -- every failure goes to the consumer
            message, case = _describe_failure(e, index)
            return _Failure(worker.id, index, message, case, traceback.format_exc())


class _BatchIndices(Sampler[int]):
    """``start, start + 1, ...``: endless, or ``count`` of them."""

    def __init__(self, start: int, count: int | None):
        self.start, self.count = start, count

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start) if self.count is None else iter(range(self.start,
                                                                                  self.start + self.count))


def _init_worker(worker_id: int) -> None:
    try:  # one thread per worker: the workers are the parallelism, nested BLAS/OpenMP pools only contend
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the consumer's to handle; it then closes us


def _identity(item):
    return item


# --------------------------------------------------------------------------- consumer side


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
        self._dataset = _Batches(source, self.case_ids, config, transforms)
        self._delivered = 0
        self._iter = None  # the DataLoader's iterator
        self._pool: WorkerPool | None = None  # its workers (num_workers > 0)
        self._start = config.first_batch  # the batch index it started at
        self._pids: list[int] = []
        self._closed = False
        self._finalizer: weakref.finalize | None = None

    # -- lifecycle

    def start(self) -> "BatchLoader":
        """Start the workers (the first ``next()`` does it otherwise). Returns ``self``."""
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if self._iter is not None:
            return self
        cfg = self.config
        self._start = cfg.first_batch + self._delivered
        indices = _BatchIndices(self._start, None if cfg.num_batches is None else cfg.num_batches - self._delivered)
        workers = {}
        if cfg.num_workers > 0:
            method = cfg.start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            workers = dict(multiprocessing_context=mp.get_context(method), prefetch_factor=cfg.prefetch,
                           timeout=cfg.poll_interval, worker_init_fn=_init_worker, in_order=cfg.deterministic,
                           pin_memory=cfg.pin_memory)
        loader = DataLoader(self._dataset, batch_size=None, sampler=indices, num_workers=cfg.num_workers,
                            collate_fn=_identity, generator=torch.Generator(), **workers)
        self._iter = iter(loader)  # starts the workers; draws its (unused) base seed from the private generator
        if cfg.num_workers > 0:
            self._pool = WorkerPool(self._iter)
            self._pids = [w.pid for w in self._pool.processes]
            # stops, joins, and terminates the workers that do not exit in time
            self._finalizer = weakref.finalize(self, self._pool.shutdown)
            self._pool.release_sigchld()
        return self

    def close(self) -> None:
        """Stop and join every worker. Idempotent; a closed loader cannot be restarted."""
        self._closed = True
        self._iter = self._pool = None
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
        self.start()
        index = cfg.first_batch + self._delivered  # the batch due (in deterministic mode)
        if cfg.num_workers == 0:
            try:
                batch = next(self._iter)
            except StopIteration:
                raise
            except Exception as e:
                self._iter = None  # the next call makes a new stream from this batch on
                message, case = _describe_failure(e, index)
                raise LoaderWorkerError(f"loader failed on {message}", None, index, case) from e
        else:
            batch = self._receive(index)
        self._delivered += 1
        if cfg.num_batches is not None and self._delivered >= cfg.num_batches and self._finalizer is not None:
            self._finalizer()  # all delivered: let the (idle) workers go
        return batch

    def _receive(self, index: int) -> dict:
        cfg, it, pool = self.config, self._iter, self._pool
        deadline = time.monotonic() + cfg.timeout
        died = self._died(pool)  # also when the others keep the batches coming
        if died is not None:
            self._fail(False)
            raise died
        while True:
            try:
                item = next(it)  # waits poll_interval at most, checking that the workers live
                break
            except StopIteration:
                raise
            except Exception as e:  # RuntimeError: a worker died, or poll_interval passed without a batch
                timed_out = isinstance(e, RuntimeError) and "timed out" in str(e)
                # else give a dying worker a moment to be seen dead (e.g. it was gone before its batch's
                # shared memory could be handed over: ConnectionResetError)
                died = self._died(pool, 0.0 if timed_out else 1.0)
                if died is None and timed_out:
                    if time.monotonic() < deadline:
                        continue
                    which = f"batch {index}" if cfg.deterministic else "batch"
                    worker = (index - self._start) % cfg.num_workers if cfg.deterministic else None
                    self._fail(True)
                    raise LoaderTimeoutError(f"no {which} from the loader's {cfg.num_workers} live workers within "
                                             f"{cfg.timeout:g} s", worker, index) from None
                self._fail(False)
                if died is None:
                    raise LoaderWorkerError(f"loader failed: {type(e).__name__}: {e}") from e
                raise died from e
        if isinstance(item, _Failure):
            self._fail(False)
            raise LoaderWorkerError(f"loader worker {item.worker} failed on {item.message}\n"
                                    f"--- worker traceback ---\n{item.traceback}", item.worker, item.index,
                                    item.case_id, item.traceback)
        return _unpack(item)

    def _died(self, pool: WorkerPool, wait: float = 0.0) -> LoaderWorkerError | None:
        """The error to raise for a worker that has died without reporting, if one has (within ``wait`` s)."""
        deadline = time.monotonic() + wait
        while all(p.is_alive() for p in pool.processes):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        for w, p in enumerate(pool.processes):
            if p.is_alive():
                continue
            code = p.exitcode
            how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            pending = pool.owed_by(w)  # its batches not yet received
            index = self._start + pending[0] if pending else None
            during = f" while producing batch {index}" if index is not None else ""
            return LoaderWorkerError(f"loader worker {w} (pid {p.pid}) {how}{during}, without reporting an error "
                                     f"(out of memory? a crash in native code?)", w, index)
        return None

    def _fail(self, terminate: bool) -> None:
        """Close the loader after an error; ``terminate``: kill the workers first (they hang)."""
        if terminate and self._pool is not None:
            for w in self._pool.processes:
                if w.is_alive():
                    w.terminate()
        self.close()


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
