"""The device's measured training throughput, for the budget rule (:mod:`autoseg.planning.budget`).

One probe network (the default preset's 3D U-Net for a 32^3 patch at 1 mm, batch 2, more on a device that does
that in under a quarter of a second) is trained for a few steps on random data; its step time over its
multiply-accumulates (:func:`autoseg.planning.compute.training_macs`) is the device's seconds per MAC. On this
project's CPU, seconds per MAC stay within about +-25% across the batch, patch and width of real plans
(``benchmarks/results/compute_model.txt``), so one probe prices them all. The result is
cached per machine, device, precision, thread count and torch version in a JSON file the caller names (the CLI:
the workspace's ``calibration.json``), so a second ``plan --budget`` costs nothing. Only a budget measures:
``plan`` without one prices nnU-Net's plan only from a measurement already cached (:func:`known_throughput`).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from autoseg.errors import AutosegError
from autoseg.nn.device import resolve_channels_last, resolve_device, resolve_precision
from autoseg.nn.speed import benchmark_step
from autoseg.nn.unet import build_network
from autoseg.planning.compute import training_macs
from autoseg.planning.configuration import architecture_for
from autoseg.planning.presets import load_preset
from autoseg.planning.topology import pool_and_conv_props
from autoseg.schema.base import load_json, save_json
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss

#: Probe: patch (voxels, 1 mm), batch, input channels, classes.
PROBE = ((32, 32, 32), 2, 1, 2)
#: CPU cores that other processes may keep busy during the probe before its measurement counts as taken on a busy
#: machine. On this project's 2-core CPU one niced process beside the probe made it measure 191-201 s per 10^12
#: MACs instead of 19.5 (the plans then shrank tenfold).
BUSY_CORES = 0.3


@dataclass(frozen=True)
class Throughput:
    """One device's measured speed.

    Attributes
    ----------
    key
        Machine, device, precision, threads and torch version it holds for.
    device
        The device measured, as torch names it (``cpu``, ``cuda:0``).
    seconds_per_tmac
        Time per 10^12 multiply-accumulates of a training step, s.
    measured
        When (ISO 8601, UTC).
    others_cores
        CPU cores that other processes kept busy while the probe ran (a CPU probe on Linux; ``None``: not known).
        Above :data:`BUSY_CORES` the measurement is of a busy machine and is not cached.
    """

    key: str
    device: str
    seconds_per_tmac: float
    measured: str
    others_cores: float | None = None

    @property
    def busy(self) -> bool:
        return self.others_cores is not None and self.others_cores > BUSY_CORES

    @property
    def seconds_per_mac(self) -> float:
        return self.seconds_per_tmac * 1e-12


@dataclass(frozen=True)
class CalibrationCache:
    """Every :class:`Throughput` measured with one workspace, by key."""

    SCHEMA_VERSION: ClassVar[int] = 1

    entries: dict[str, Throughput]
    schema_version: int = field(default=SCHEMA_VERSION)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores_busy_seconds() -> float | None:
    """CPU seconds the cores this process may run on have been busy since boot, whoever kept them busy
    (``/proc/stat``); ``None`` where that is not known."""
    try:
        cores = {f"cpu{c}" for c in os.sched_getaffinity(0)}
        with open("/proc/stat") as f:
            rows = [line.split() for line in f if line.startswith("cpu")]
    except (OSError, AttributeError):
        return None
    busy = 0
    for row in rows:
        if row[0] in cores:
            ticks = [int(v) for v in row[1:9]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK") if busy else None


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def device_key(device: torch.device, precision: str) -> str:
    """What a measurement holds for: host, processor or GPU name, precision, threads, torch version."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return (f"{platform.node()}|{name}|{device}|{precision}|threads {torch.get_num_threads()}|"
            f"torch {torch.__version__}")


def measure_throughput(device: str = "auto", precision: str = "auto", iterations: int = 3,
                       min_seconds: float = 0.25, max_batch: int = 64) -> Throughput:
    """Train the probe network a few steps (a few seconds on a CPU) and return the device's seconds per MAC.

    A fast device finishes the probe's step in microseconds, timing kernel launches rather than arithmetic, so the
    batch doubles (up to ``max_batch``) until one step takes at least ``min_seconds``: the device is then as busy as
    with a real plan's patch.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    patch, batch, channels, classes = PROBE
    preset = load_preset("default")
    arch = architecture_for(pool_and_conv_props((1.0,) * len(patch), patch, preset.featuremap_min_edge), preset)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_network(arch, channels, classes)
    loss = DeepSupervisionLoss(DiceCELoss(batch_dice=False))
    # what the cores did besides this process while it measured: a busy machine measures a slower one
    cores0, own0, wall0 = _cores_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    while True:
        seconds = benchmark_step(net, loss, (batch, channels, *patch), dev, prec,
                                 resolve_channels_last(None, dev, prec), iterations=iterations, warmup=1)
        if seconds >= min_seconds or batch * 2 > max_batch:
            break
        batch *= 2
    cores1, own1, wall1 = _cores_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
    others = (None if dev.type != "cpu" or cores0 is None or cores1 is None else
              round(max(0.0, (cores1 - cores0) - (own1 - own0)) / max(wall1 - wall0, 1e-9), 2))
    macs = training_macs(arch, patch, batch, channels, classes)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Throughput(device_key(dev, prec), str(dev), round(seconds / macs * 1e12, 3), now, others)


def _entries(cache: Path | None) -> dict[str, Throughput]:
    if cache is None or not Path(cache).is_file():
        return {}
    try:
        return dict(load_json(CalibrationCache, Path(cache)).entries)
    except AutosegError:
        return {}  # unreadable or from another version: measure again, and rewrite it


def known_throughput(cache: Path | None, device: str = "auto", precision: str = "auto") -> Throughput | None:
    """The device's throughput as measured into ``cache`` before, or ``None``: never runs the probe."""
    dev = resolve_device(device)
    return _entries(cache).get(device_key(dev, resolve_precision(precision, dev)))


def cached_throughput(cache: Path | None, device: str = "auto", precision: str = "auto") -> tuple[Throughput, bool]:
    """The device's throughput from ``cache`` when measured there before, else measured now (and added to it,
    unless measured on a busy machine: :attr:`Throughput.busy`).

    Returns
    -------
    tuple
        ``(throughput, from_cache)``.
    """
    dev = resolve_device(device)
    key = device_key(dev, resolve_precision(precision, dev))
    entries = _entries(cache)
    if key in entries:
        return entries[key], True
    got = measure_throughput(str(dev), precision)
    if cache is not None and not got.busy:
        save_json(CalibrationCache({**entries, key: got}), Path(cache))
    return got, False
