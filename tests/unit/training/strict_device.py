"""Device strictness on a CPU: a simulated accelerator and an NCCL-like process group, for tests.

On a GPU, a tensor left on the CPU breaks training in two ways that a CPU-only run never shows: an op that mixes
it with CUDA tensors raises "Expected all tensors to be on the same device", and an NCCL process group (which has
no CPU backend) refuses it in a collective. These two helpers make both happen on a CPU.

:class:`SimulatedAccelerator` (a ``TorchDispatchMode``) puts tensors "on the accelerator": a tensor there reports
device ``meta`` but keeps real values in a CPU tensor inside (:class:`OnDevice`), so a whole training step computes
real numbers. Every aten op is checked: one that mixes accelerator tensors with CPU tensors of one or more
dimensions raises, as CUDA does (0-dim CPU tensors are allowed, as CUDA allows them); only the explicit transfers
(``.to()``, ``.cpu()``, ``copy_``) and reading a value (``.item()``, ``float()``) cross between the two, as they
would on a GPU. The plain ``meta`` device is no substitute: an in-place op with a CPU ``self`` and a meta argument
(``cpu_counts += meta_counts``) silently does nothing there.

:class:`StrictGroup`, registered as the process-group backend ``"strict"`` (:func:`strict_group`), is a one-rank
group whose only device type is the accelerator's: a collective on a tensor of another device type raises, as NCCL
refuses CPU tensors. Its object collectives (``all_gather_object``) use the accelerator too, as NCCL's use the GPU.

What they cannot show: anything specific to CUDA (streams, pinned memory, cuDNN, autocast to fp16, GradScaler,
out-of-memory), code that branches on ``device.type == "cuda"`` (it takes the non-CUDA branch here), speed, and
ops run in a thread the mode is not active in (only ops with an accelerator tensor argument are seen there).
``benchmarks/gpu_check.py`` runs the same paths on a real GPU and a one-rank NCCL group.
"""

from __future__ import annotations

import contextlib
import datetime

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future
from torch.futures import Future
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

#: What the simulated accelerator's tensors report as their device.
ACCELERATOR = torch.device("meta")

_aten = torch.ops.aten
#: Ops that legitimately take tensors of both sides: the explicit transfers.
_TRANSFERS = {_aten._to_copy.default, _aten.copy_.default}


class DeviceMismatch(RuntimeError):
    """An op mixed accelerator tensors with CPU tensors (what CUDA raises as a RuntimeError)."""


class OnDevice(torch.Tensor):
    """A tensor on the simulated accelerator: reports :data:`ACCELERATOR`, holds its values in ``self.elem``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        t = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                layout=elem.layout, device=ACCELERATOR,
                                                requires_grad=elem.requires_grad)
        t.elem = elem
        return t

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"OnDevice({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _dispatch(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    on = [t for t in tensors if isinstance(t, OnDevice)]
    # a plain meta tensor here was made outside the mode and holds no values: as wrong as a CPU one
    off = [t for t in tensors if not isinstance(t, OnDevice) and (t.dim() > 0 or t.device.type != "cpu")]
    if on and off and func not in _TRANSFERS:
        raise DeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                             f"{ACCELERATOR} (the simulated accelerator) and {off[0].device}! ({func}, CPU "
                             f"argument of shape {tuple(off[0].shape)})")
    if func is _aten.copy_.default and not isinstance(args[0], OnDevice) and isinstance(args[1], OnDevice):
        args[0].copy_(args[1].elem)  # accelerator -> CPU
        return args[0]
    device = kwargs.get("device")
    if device is not None:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if func is _aten._local_scalar_dense.default:  # .item(): the value goes to the host, as from a GPU
        return out
    there = torch.device(device).type == ACCELERATOR.type if device is not None else bool(on)
    inputs = {id(t.elem): t for t in on}

    def wrap(o):
        if not isinstance(o, torch.Tensor) or isinstance(o, OnDevice):
            return o
        if id(o) in inputs:  # an in-place op returns its own (accelerator) argument
            return inputs[id(o)]
        return OnDevice(o) if there else o

    return tree_map(wrap, out)


def _unwrap(t):
    return t.elem if isinstance(t, OnDevice) else t


class _Autocast(torch.autocast):
    """``torch.autocast`` that takes the accelerator's device type, which torch's autocast does not know, as the
    CPU's (the harness computes on the CPU; autocast itself is not what it checks)."""

    def __init__(self, device_type, *args, **kwargs):
        super().__init__("cpu" if device_type == ACCELERATOR.type else device_type, *args, **kwargs)


class _PythonValues(TorchFunctionMode):
    """Python values into and out of the accelerator, which torch handles outside the dispatcher: ``torch.tensor``
    / ``torch.as_tensor`` of Python data with ``device=ACCELERATOR`` (made on the CPU, then moved; torch would
    lose the values) and ``.tolist()`` of an accelerator tensor (through the CPU, as from a GPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.tolist and isinstance(args[0], OnDevice):
            return args[0].cpu().tolist()
        if func in (torch.tensor, torch.as_tensor):
            device = kwargs.get("device", args[2] if func is torch.as_tensor and len(args) > 2 else None)
            if device is not None and torch.device(device).type == ACCELERATOR.type \
                    and not isinstance(args[0], torch.Tensor):
                kwargs.pop("device", None)
                return func(*args[:2], **kwargs).to(ACCELERATOR)
        return func(*args, **kwargs)


class SimulatedAccelerator(TorchDispatchMode):
    """While active, ``device=ACCELERATOR`` (``.to()``, factory functions) makes :class:`OnDevice` tensors, and
    every op is checked for mixed devices (see the module docstring). ``torch.autocast`` accepts the
    accelerator's device type meanwhile."""

    def __enter__(self):
        self._autocast, torch.autocast = torch.autocast, _Autocast
        self._from_data = _PythonValues()
        self._from_data.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._from_data.__exit__(*exc)
            torch.autocast = self._autocast

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _done(result) -> "dist.Work":
    fut = Future()
    fut.set_result(result)
    return _create_work_from_future(fut)


class StrictGroup(dist.ProcessGroup):
    """A one-rank process group that takes tensors of ``device_type`` only (as NCCL takes CUDA tensors only).

    ``calls`` records every collective: ``(name, [shape, ...], [device type, ...])``.
    """

    def __init__(self, rank: int, size: int, device_type: str):
        super().__init__(rank, size)
        if size != 1:
            raise ValueError("StrictGroup is a one-rank group")
        self.device_type = device_type
        self.calls: list[tuple[str, list[tuple[int, ...]], list[str]]] = []

    @property
    def _device_types(self) -> list[torch.device]:  # object collectives pick their device from here
        return [torch.device(self.device_type)]

    def _check(self, name: str, tensors) -> None:
        for t in tensors:
            if t.device.type != self.device_type:
                raise RuntimeError(f"strict process group: {name} of a tensor on {t.device}, but this group "
                                   f"reduces {self.device_type} tensors only (as NCCL reduces CUDA tensors only)")
        self.calls.append((name, [tuple(t.shape) for t in tensors], [t.device.type for t in tensors]))

    def allreduce(self, tensors, opts=None):
        self._check("allreduce", tensors)
        return _done(tensors)  # one rank: the sum is the tensor itself

    def allgather(self, outputs, inputs, opts=None):
        self._check("allgather", list(inputs) + [t for out in outputs for t in out])
        for out, inp in zip(outputs, inputs):
            out[0].copy_(inp)
        return _done(outputs)

    def broadcast(self, tensors, opts=None):
        self._check("broadcast", tensors)
        return _done(tensors)

    def barrier(self, opts=None):
        return _done([])

    def size(self) -> int:
        return 1

    def getBackendName(self) -> str:
        return "strict"


_created: list[StrictGroup] = []


def _create(store, rank, size, timeout) -> StrictGroup:
    group = StrictGroup(rank, size, ACCELERATOR.type)
    _created.append(group)
    return group


@contextlib.contextmanager
def strict_group():
    """The default process group is a one-rank :class:`StrictGroup` of the accelerator's device type; yields it."""
    if "strict" not in dist.Backend.backend_list:
        dist.Backend.register_backend("strict", _create, devices=[ACCELERATOR.type])
    dist.init_process_group("strict", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        yield _created[-1]
    finally:
        dist.destroy_process_group()
