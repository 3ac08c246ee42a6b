"""autoseg's device check (issue 26): what autoseg does on a real GPU, in one JSON report, in under 10 minutes.

It reports
  environment  torch / CUDA / cuDNN / NCCL versions, the GPU, its compute capability, what ``--precision auto``
               picks there, torch's default collective timeouts (NCCL, gloo);
  reductions   the trainer's real reductions (one epoch, label- and region-based, with the end-of-training replica
               check) through a one-rank NCCL group (gloo in the dry run), and whether the group refuses a CPU
               tensor (the original bug);
  memory       for every configuration of a real dataset (Hippocampus; LA2018 when prepared), planned for
               nnU-Net's 8 GB and for the device's whole memory: the planner's estimate against
               ``torch.cuda.max_memory_allocated`` of real training steps, and their seconds per iteration;
  speed        the real trainer and loader on Hippocampus 3d_fullres: seconds per iteration and the fraction of
               the time spent waiting for batches, in bf16 and in fp16 with GradScaler, eager and
               ``torch.compile``'d;
  fold         one fold trained for a few minutes (``api.train`` with a budget), then its predictions of
               validation cases on the GPU (bf16 and fp32) against the same model's fp32 CPU predictions;
  skipped      what the deadline left out.
Each section runs in its own process with its own time limit (a hang or a crash costs that section only), and the
report is rewritten after every section, so a run killed at its limit still leaves what it measured.

1. Here, on a CPU machine with the shared data (once; nothing of it is committed)::

       echo /.gpu_check/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
       .venv/bin/python benchmarks/gpu_check.py --prepare .gpu_check
       .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
           --platform any -d .whl batchgenerators==0.25.5

   ``--prepare`` plans and preprocesses Hippocampus (3d_fullres only) into ``.gpu_check/hippocampus.tar.gz`` and
   fingerprints LA2018 into ``.gpu_check/fingerprints/`` (both from ``../shared/data``).

2. On the GPU machine (torch 2.11 with CUDA 13 installed there, nothing to download), one command, carrying
   ``.whl`` and ``.gpu_check`` (timeout 600 s)::

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
           .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; PYTHONUNBUFFERED=1 python3 \\
           benchmarks/gpu_check.py --data .gpu_check --out $OUT/gpu_check.json --deadline 560 \\
           2>&1 | tee $OUT/gpu_check.log

3. Commit ``gpu_check.json`` as ``benchmarks/results/gpu_check.json`` and fix what it shows.

What travels besides the checkout (about 2.7 MB): ``.whl/batchgenerators-0.25.5-py3-none-any.whl`` (107 kB; the
one package autoseg's training needs that the machine lacks: numpy, scipy, scikit-image, pandas, matplotlib,
tqdm and threadpoolctl are installed there) and ``.gpu_check`` (18.0 MB: ``workspace.tar.gz``, Hippocampus planned
and preprocessed, 208 cases, 17.96 MB; ``fingerprints/LA2018.fingerprint.json``, 0.04 MB). Together about 21 MB of
the 64 MiB allowed; ``--prepare`` prints the sizes, the checkout's included: untracked files that git does not
ignore travel too (a benchmark's workspace left under ``benchmarks/results``, say), so run it from a clean checkout.
SimpleITK (53 MB) does not travel: the check reads no image file, so where SimpleITK is missing a placeholder
module stands in for it (anything that would read or write an image raises), and where autoseg is not installed
``plans/`` stands in for the package ``autoseg._plans``. ``--bare`` forces both here, as on that machine.

Without a GPU: ``--dry-run`` runs every section on the CPU with a tiny synthetic dataset in seconds (gloo instead
of NCCL, fp16 skipped, ``torch.compile`` with the ``eager`` backend); ``tests/integration/test_gpu_check.py``
runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "autoseg gpu_check 1"
SECTIONS = ("environment", "reductions", "memory", "fold", "speed")
#: Sections that read the prepared data.
NEED_DATA = {"memory", "fold", "speed"}
#: Seconds each section may take at most (the deadline may give it less; the last takes what is left).
SECTION_SECONDS = {"environment": 40, "reductions": 60, "memory": 150, "fold": 180, "speed": 240}
#: nnU-Net's memory target, GB (the planner's reference; autoseg's default).
NNUNET_GB = 8.0


# ------------------------------------------------------------------------------------------------- setup


def bare_checkout(force: bool) -> None:
    """Run from a checkout that is not installed, without SimpleITK (as on the lent GPU machine).

    ``autoseg._plans`` is ``plans/`` installed as a package (setup.py): from a bare checkout, ``plans`` itself is
    that package. SimpleITK only reads and writes image files, which this check never does: a placeholder module
    raises on any use of it. ``force``: do both even where autoseg is installed and SimpleITK present.
    """
    sys.path.insert(0, str(REPO))
    if force or _missing("SimpleITK"):
        stub = types.ModuleType("SimpleITK")

        def unavailable(name):  # an AttributeError: probes such as hasattr(module, "__file__") answer no
            raise AttributeError(f"SimpleITK.{name}: SimpleITK is not installed (gpu_check reads no image file)")

        stub.__getattr__ = unavailable
        sys.modules["SimpleITK"] = stub
    if force or _missing("autoseg._plans"):
        import importlib

        import autoseg

        plans = importlib.import_module("plans")
        sys.modules["autoseg._plans"] = plans
        autoseg._plans = plans


def _missing(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except ImportError:  # the parent package itself is missing
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _error(e: BaseException) -> str:
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}"[:500] + "\n" + "".join(lines[-3:])[-1500:]


# ------------------------------------------------------------------------------------------------- prepare


def prepare(out: Path, dry: bool, shared: Path) -> dict:
    """What travels to the GPU machine: a planned, preprocessed (3d_fullres) workspace as a tar.gz, and the
    fingerprints of further real datasets (memory section)."""
    from autoseg import api

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_prepare_"))
    try:
        if dry:
            from autoseg.synthetic import PRESETS, make_dataset

            raw, memory = make_dataset(work / "raw" / "Task01_Tiny", PRESETS["tiny"]), 0.005
        else:
            raw, memory = shared / "Task04_Hippocampus", None
        result = api.plan(raw, work / "ws", memory_gb=memory, preprocess=False, progress=False)
        name = result.plans.dataset_name
        api.preprocess(work / "ws", name, ["3d_fullres"], progress=False)
        api.load_context(work / "ws", name, create_splits=True)
        with tarfile.open(out / "workspace.tar.gz", "w:gz") as tar:
            tar.add(work / "ws" / name, arcname=name)
        fps = out / "fingerprints"
        fps.mkdir(exist_ok=True)
        extra = shared / "Task902_LA2018"
        if not dry and (extra / "dataset.json").is_file():
            la = api.plan(extra, work / "ws_la", preprocess=False, progress=False)
            shutil.copy(la.paths.fingerprint, fps / f"{la.plans.dataset_name}.fingerprint.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"dataset": name, "dry_run": dry, "bytes": sizes, "total_bytes": sum(sizes.values())}
    _write_json(manifest, out / "manifest.json")
    return manifest


def _unpack(data: Path, into: Path) -> Path:
    """The prepared workspace, unpacked under ``into``; returns the workspace root."""
    ws = into / "ws"
    if not ws.is_dir():  # unpacked whole or not at all: a section killed while unpacking leaves no half of it
        part = into / "ws.partial"
        shutil.rmtree(part, ignore_errors=True)
        with tarfile.open(data / "workspace.tar.gz") as tar:
            tar.extractall(part, filter="data")
        os.replace(part, ws)
    return ws


# ------------------------------------------------------------------------------------------------- sections


class Section:
    """One section's results, written to its part file after every item."""

    def __init__(self, name: str, out: Path, seconds: float):
        self.name, self.out = name, out
        self.end = time.monotonic() + seconds
        self.data: dict = {"items": [], "skipped": []}

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, seconds: float, what: str) -> bool:
        if self.left() >= seconds:
            return True
        self.data["skipped"].append({"item": what, "reason": f"deadline: {self.left():.0f} s left, ~{seconds:.0f} "
                                                              f"s needed"})
        self.save()
        return False

    def add(self, item: dict) -> None:
        self.data["items"].append(item)
        self.save()

    def save(self) -> None:
        _write_json(self.data, self.out)


def _device(args):
    import torch

    if args.dry_run or args.cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run on a CPU)")
    return torch.device("cuda:0")


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def section_environment(sec: Section, dev, args) -> None:
    import platform

    import torch
    import torch.distributed.constants as C

    from autoseg.nn.device import resolve_channels_last, resolve_precision
    from autoseg.parallel import usable_cpus

    minutes = lambda t: None if t is None else t.total_seconds() / 60
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "usable_cpus": usable_cpus(), "device": str(dev), "precision_auto": resolve_precision("auto", dev),
           "collective_timeout_minutes": {"nccl": minutes(C.default_pg_nccl_timeout),
                                          "gloo": minutes(C.default_pg_timeout)}}
    env["channels_last_auto"] = resolve_channels_last(None, dev, env["precision_auto"])
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        nccl = torch.cuda.nccl.version()
        env.update(name=props.name, capability=list(torch.cuda.get_device_capability(dev)),
                   memory_gib=props.total_memory / 2 ** 30, multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(),
                   nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
                   bf16_supported=torch.cuda.is_bf16_supported(),
                   bf16_supported_without_emulation=torch.cuda.is_bf16_supported(including_emulation=False))
    sec.data["environment"] = env
    sec.save()


def _tiny_trainer(dev, regions: bool, all_reduce, semi_supervised: str | None = None):
    """The trainer of a small 2D U-Net on random batches (label- or region-based; with ``semi_supervised``, one
    of its methods on random unlabelled batches too), on ``dev``, in the device's automatic precision."""
    import numpy as np
    import torch

    from autoseg.nn import build_network, deep_supervision_scales
    from autoseg.nn.device import resolve_channels_last, resolve_precision
    from autoseg.nn.speed import autocast_context, prepare_for_device
    from autoseg.schema.plans import ArchitecturePlan
    from autoseg.schema.training import TrainConfig
    from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss
    from autoseg.training.trainer import Trainer, TrainState

    arch = ArchitecturePlan("plain_unet", (8, 16, 32), ((3, 3),) * 3, ((1, 1), (2, 2), (2, 2)), (2, 2, 2), (2, 2))
    region_sets = ((1, 2), (2,))
    precision = resolve_precision("auto", dev)
    layout = resolve_channels_last(None, dev, precision)
    torch.manual_seed(0)
    net = prepare_for_device(build_network(arch, 1, 2 if regions else 3), dev, layout)
    steps = [tuple(int(round(1 / s)) for s in scale) for scale in deep_supervision_scales(arch)]

    def batches(seed):
        rng = np.random.default_rng(seed)
        while True:
            seg = rng.integers(0, 3, (4, 1, 32, 32)).astype(np.int8)
            seg[:, :, :3] = -1
            data = seg.astype(np.float32) + rng.standard_normal(seg.shape).astype(np.float32)
            yield {"data": data, "target": [np.ascontiguousarray(seg[:, :, ::a, ::b]) for a, b in steps]}

    cfg = TrainConfig("gpu_check", "2d", "0", "-", epochs=2, iterations_per_epoch=3, validation_iterations=2,
                      precision=precision)
    loss = DeepSupervisionLoss(RegionDiceBCELoss(region_sets) if regions else DiceCELoss())
    semi = None
    if semi_supervised is not None:
        from autoseg.training.semi_supervised import SemiSupervision

        semi = SemiSupervision.from_student(
            net, None, method=semi_supervised, batches=({"data": b["data"]} for b in batches(3)), seed=0,
            threshold=0.5, ema_decay=0.99, weight=0.5, rampup=0.0, scales=deep_supervision_scales(arch),
            class_order=(1, 2) if regions else None)
    return Trainer(model=net, loss=loss, optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9),
                   train_batches=batches(1), val_batches=batches(2), config=cfg, state=TrainState(2, 3, 2),
                   device=dev, precision=precision, channels_last=layout, num_classes=3, autocast=autocast_context,
                   all_reduce=all_reduce, progress=False, regions=region_sets if regions else None, semi=semi)


def section_reductions(sec: Section, dev, args) -> None:
    import torch
    import torch.distributed as dist

    from autoseg.training import distributed as D

    spec = D.DistributedSpec(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=_free_port())
    t0 = time.perf_counter()
    D.init(spec, dev)
    sec.data.update(backend=dist.get_backend(), init_seconds=time.perf_counter() - t0)
    try:
        # the last two: semi-supervised steps (teacher, its targets, noise and boxes on the device)
        for regions, semi in ((False, None), (True, None), (False, "copy_paste"), (True, "pseudo_label")):
            item = {"training": ("regions" if regions else "labels") + (f" + {semi}" if semi else "")}
            try:
                trainer = _tiny_trainer(dev, regions, D.all_reduce_sum, semi)
                trainer.fit()
                last = trainer.history[-1]
                item.update(ok=True, epochs=len(trainer.history), pseudo_dice=list(last.pseudo_dice),
                            train_loss=last.train_loss, replica_sha256=trainer.replica_sha256,
                            mean_over_ranks=trainer._mean_over_ranks(1.5))
            except Exception as e:  # noqa: BLE001 -- reported
                item.update(ok=False, error=_error(e))
            sec.add(item)
        try:  # what the trainer did before issue 26: a CPU tensor through the group (NCCL has no CPU backend)
            D.all_reduce_sum(torch.ones(2, dtype=torch.float64))
            sec.data["cpu_tensor"] = "accepted"
        except Exception as e:  # noqa: BLE001 -- the expected answer under NCCL
            sec.data["cpu_tensor"] = f"refused: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        sec.save()
    finally:
        D.shutdown()


def _measure_steps(plans, configuration: str, dev, steps: int) -> dict:
    """Real training steps (the trainer's) of a configuration's network on one random batch that stays on the
    device: peak allocated memory and seconds per iteration."""
    import gc

    import torch

    from autoseg.nn.device import resolve_precision

    plan = plans.configurations[configuration]
    out = {"patch_size": list(plan.patch_size), "batch_size": plan.batch_size,
           "estimated_gb": plan.estimated_memory_gb, "precision": resolve_precision("auto", dev)}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        out.update(_steps(plans, configuration, dev, steps))
    except torch.cuda.OutOfMemoryError as e:
        out["error"] = f"out of memory: {str(e).splitlines()[0][:300]}"
    gc.collect()  # the network, batch and optimiser state of the steps are gone (with the exception, if any)
    if dev.type == "cuda":
        out["measured_gb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        out["reserved_gb"] = torch.cuda.max_memory_reserved(dev) / 2 ** 30
        out["measured_over_estimated"] = out["measured_gb"] / max(plan.estimated_memory_gb, 1e-9)
        torch.cuda.empty_cache()
    else:
        out["measured_gb"] = None  # no allocator statistics on the CPU
    return out


def _steps(plans, configuration: str, dev, steps: int) -> dict:
    import itertools

    import torch

    from autoseg.nn import build_network, deep_supervision_scales
    from autoseg.nn.device import resolve_channels_last, resolve_precision
    from autoseg.nn.speed import autocast_context, prepare_for_device
    from autoseg.schema.training import TrainConfig
    from autoseg.training.losses import downsample_targets
    from autoseg.training.run import build_loss, cuda_settings
    from autoseg.training.trainer import Trainer, TrainState

    plan = plans.configurations[configuration]
    precision = resolve_precision("auto", dev)
    layout = resolve_channels_last(None, dev, precision)
    out = {}
    torch.manual_seed(0)
    net = prepare_for_device(build_network(plan.architecture, plans.input_channels(configuration), plans.num_outputs),
                             dev, layout)
    shape = (plan.batch_size, plans.input_channels(configuration), *plan.patch_size)
    data = torch.randn(shape, device=dev)
    labels = torch.randint(0, max(2, plans.num_outputs), (shape[0], 1, *shape[2:]), device=dev, dtype=torch.int8)
    batch = {"data": data, "target": downsample_targets(labels, deep_supervision_scales(plan.architecture))}
    cfg = TrainConfig("gpu_check", configuration, "0", "-", epochs=1, iterations_per_epoch=steps,
                      validation_iterations=0, precision=precision)
    regions = tuple(r.labels for r in plans.regions) if plans.regions else None
    trainer = Trainer(model=net, loss=build_loss(plan, plans.regions),
                      optimizer=torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True),
                      train_batches=itertools.repeat(batch), val_batches=iter(()), config=cfg,
                      state=TrainState(1, steps, 0), device=dev, precision=precision, channels_last=layout,
                      num_classes=len(plans.labels), autocast=autocast_context, progress=False, regions=regions)
    with cuda_settings(dev):
        t0 = time.perf_counter()
        trainer.train_step(batch)  # warm-up: allocations, cuDNN's algorithm search
        _sync(dev)
        out["first_step_seconds"] = time.perf_counter() - t0
        timed = []
        for _ in range(steps if out["first_step_seconds"] < 15 else 1):
            t0 = time.perf_counter()
            trainer.train_step(batch)
            _sync(dev)
            timed.append(time.perf_counter() - t0)
    out["step_seconds"] = sorted(timed)[len(timed) // 2]
    return out


def _fingerprints(ws: Path, data: Path) -> dict:
    from autoseg.schema.base import load_json
    from autoseg.schema.fingerprint import Fingerprint

    found = {p.name: p / "fingerprint.json" for p in sorted(ws.iterdir()) if (p / "fingerprint.json").is_file()}
    for p in sorted((data / "fingerprints").glob("*.fingerprint.json")):
        found[p.name[:-len(".fingerprint.json")]] = p
    return {name: load_json(Fingerprint, path) for name, path in found.items()}


def section_memory(sec: Section, dev, args) -> None:
    import torch

    from autoseg.planning.planner import make_plans
    from autoseg.planning.presets import load_preset

    ws = _unpack(args.data, args.scratch)
    preset = load_preset("default")
    # the dry run's tiny dataset: tiny targets, so that the two plans differ as 8 GB and a GPU's memory do
    # (--cpu: a 16 GB device stands in for the GPU)
    device_gb = torch.cuda.get_device_properties(dev).total_memory / 2 ** 30 if dev.type == "cuda" else 16.0
    targets = [("nnunet", 0.005), ("device", 0.01)] if args.dry_run else [("nnunet", NNUNET_GB), ("device", device_gb)]
    steps = 1 if args.dry_run else 3
    sec.data["targets_gb"] = dict(targets)
    for target, gb in targets:  # every 8 GB plan first: the device-memory plans are the larger, slower ones
        for name, fingerprint in _fingerprints(ws, args.data).items():
            try:
                plans = make_plans(fingerprint, preset, gb)
            except Exception as e:  # noqa: BLE001 -- reported
                sec.add({"dataset": name, "target": target, "target_gb": gb, "error": _error(e)})
                continue
            for configuration in plans.configurations:
                what = f"{name} {configuration} at {gb:.3g} GB"
                if not sec.allows(10 if target == "nnunet" else 25, what):
                    continue
                item = {"dataset": name, "configuration": configuration, "target": target, "target_gb": gb}
                try:
                    item.update(_measure_steps(plans, configuration, dev, steps))
                except Exception as e:  # noqa: BLE001 -- reported
                    item["error"] = _error(e)
                # nnU-Net's epoch: 250 iterations
                if item.get("step_seconds") is not None:
                    item["epoch_seconds_250"] = 250 * item["step_seconds"]
                sec.add(item)
    sec.data["target_comparison"] = _compare_targets(sec.data["items"])
    sec.save()


def _compare_targets(items: list[dict]) -> list[dict]:
    """Per dataset and configuration: the device-memory plan against the 8 GB one (patch, batch, step time)."""
    rows = []
    by = {(i["dataset"], i["configuration"], i["target"]): i for i in items}
    for (dataset, configuration, target), dev_item in by.items():
        ref = by.get((dataset, configuration, "nnunet"))
        if target != "device" or ref is None:
            continue
        row = {"dataset": dataset, "configuration": configuration,
               "nnunet": {k: ref.get(k) for k in ("patch_size", "batch_size", "estimated_gb", "step_seconds")},
               "device": {k: dev_item.get(k) for k in ("patch_size", "batch_size", "estimated_gb", "step_seconds")}}
        if ref.get("step_seconds") and dev_item.get("step_seconds"):
            row["step_time_ratio"] = dev_item["step_seconds"] / ref["step_seconds"]
        rows.append(row)
    return rows


def _hippocampus_context(args):
    from autoseg.workflow.context import load_context

    ws = _unpack(args.data, args.scratch)
    name = json.loads((args.data / "manifest.json").read_text())["dataset"]
    return ws, name, load_context(ws, name, create_splits=True)


def section_speed(sec: Section, dev, args) -> None:
    import torch

    from autoseg.data.loader import StoreSource
    from autoseg.errors import AutosegError
    from autoseg.nn.device import resolve_precision
    from autoseg.nn.speed import autocast_context
    from autoseg.preprocessing.store import CaseStore
    from autoseg.training.run import (build_loaders, build_loss, build_model, build_optimizer, cuda_settings, iterate,
                                      make_config, resolve_runtime)
    from autoseg.training.trainer import Trainer, TrainState

    ws, name, ctx = _hippocampus_context(args)
    configuration = "3d_fullres"
    plan, plans = ctx.configuration(configuration), ctx.plans
    train_ids, val_ids = ctx.fold_cases("0")
    iterations = 3 if args.dry_run else 50
    backend = "eager" if args.dry_run else "inductor"
    sec.data.update(dataset=name, configuration=configuration, iterations_per_epoch=iterations,
                    compile_backend=backend)
    # on a CPU (dry run) its own automatic precision stands in for bf16: emulated bf16 takes seconds a step there
    for compiled in (False, True):
        for precision in (resolve_precision("auto", dev) if args.dry_run else "bf16", "fp16"):
            what = f"{precision}{' compiled' if compiled else ''}"
            if not sec.allows(120 if compiled and not args.dry_run else 25, what):
                continue
            item = {"precision": precision, "compile": compiled}
            loaders = ()
            try:
                overrides = dict(epochs=2, iterations_per_epoch=iterations, validation_iterations=0,
                                 precision=precision, num_workers=1 if args.dry_run else None)
                config = make_config(ctx.plans_sha256, ctx.name, configuration, "0", overrides)
                _, config, _ = resolve_runtime(config, plan, str(dev), True, True, given=frozenset(overrides))
                state = TrainState(config.epochs, config.iterations_per_epoch, config.validation_iterations)
                model = build_model(plans, configuration, config, dev, None)
                if compiled:
                    model = torch.compile(model, backend=backend)
                loaders = build_loaders(StoreSource(CaseStore(ctx.paths.preprocessed(configuration))), plan,
                                        train_ids, val_ids, config, state, 0, None, plans.regions, device=dev)
                seen: dict = {}
                trainer = Trainer(model=model, loss=build_loss(plan, plans.regions),
                                  optimizer=build_optimizer(model, config, None),
                                  train_batches=_watch(iterate(loaders[0]), seen), val_batches=iterate(loaders[1]),
                                  config=config,
                                  state=state, device=dev, precision=config.precision,
                                  channels_last=config.channels_last, num_classes=len(plans.labels),
                                  autocast=autocast_context, progress=False,
                                  regions=tuple(r.labels for r in plans.regions) if plans.regions else None)
                with cuda_settings(dev):
                    trainer.fit()
                first, last = trainer.history[0], trainer.history[-1]  # the first epoch warms up (and compiles)
                item.update(workers=loaders[0].config.num_workers, pin_memory=loaders[0].config.pin_memory,
                            batches_pinned=seen.get("pinned"),
                            channels_last=config.channels_last, step_seconds=last.step_seconds,
                            iteration_seconds=last.epoch_seconds / iterations,
                            data_wait_fraction=last.data_wait_seconds / last.epoch_seconds,
                            warmup_seconds=first.epoch_seconds - last.epoch_seconds, train_loss=last.train_loss,
                            grad_scale=trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None)
            except AutosegError as e:  # fp16 on the CPU (dry run)
                item["skipped"] = str(e)
            except Exception as e:  # noqa: BLE001 -- reported
                item["error"] = _error(e)
            finally:
                for loader in loaders:
                    loader.close()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            sec.add(item)


def _watch(batches, seen: dict):
    """The batches, noting whether the first one arrived in pinned memory (what makes the copies asynchronous)."""
    for batch in batches:
        if "pinned" not in seen:
            data = batch["data"]
            seen["pinned"] = bool(getattr(data, "is_pinned", lambda: False)())
        yield batch


def _label_dice(a, b, labels) -> list[float]:
    import numpy as np

    out = []
    for label in labels:
        x, y = a == label, b == label
        total = int(x.sum() + y.sum())
        out.append(1.0 if total == 0 else float(2 * np.logical_and(x, y).sum() / total))
    return out


def section_fold(sec: Section, dev, args) -> None:
    import numpy as np

    from autoseg import api

    ws, name, ctx = _hippocampus_context(args)
    configuration, fold = "3d_fullres", "0"
    # what the section's time leaves for training: the predictions and the start take about two minutes
    budget = 0.05 if args.dry_run else max(0.5, min(2.0, (sec.left() - 110) / 60))
    overrides = (dict(epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=1) if args.dry_run
                 else dict(budget_minutes=budget))
    t0 = time.perf_counter()
    result = api.train(ws, name, configuration, fold, device=str(dev), validate=False, progress=False, **overrides)
    folder = ctx.fold(configuration, fold)
    logs = [json.loads(line) for line in folder.log.read_text().splitlines()]
    sec.data.update(dataset=name, configuration=configuration, fold=fold, budget_minutes=None if args.dry_run
                    else budget, seconds=time.perf_counter() - t0, epochs=result.state.epoch,
                    iterations=result.state.batches_drawn, train_seconds=result.state.train_seconds,
                    precision=result.config.precision, batch_size=result.config.batch_size,
                    ema_pseudo_dice=result.state.ema_pseudo_dice,
                    step_seconds=float(np.median([e["step_seconds"] for e in logs])),
                    data_wait_fraction=sum(e["data_wait_seconds"] for e in logs) / sum(e["epoch_seconds"]
                                                                                      for e in logs))
    sec.save()
    _compare_predictions(sec, ctx, configuration, ctx.fold_cases(fold)[1][:2 if args.dry_run else 8],
                         folder.final_checkpoint, dev, args.dry_run)


def _compare_predictions(sec: Section, ctx, configuration: str, cases, checkpoint: Path, dev, dry: bool) -> None:
    """The model's predictions of ``cases`` (preprocessed) on ``dev`` against its fp32 CPU predictions."""
    import numpy as np
    import torch

    from autoseg.inference.predictor import Predictor
    from autoseg.preprocessing.store import CaseStore

    store = CaseStore(ctx.paths.preprocessed(configuration))
    checkpoint = [checkpoint]
    labels = list(range(1, len(ctx.plans.labels)))
    reference = "cpu_fp32_reference"
    mirror = not dry  # as autoseg predict does; the dry run's tiles are many for its patch
    predictors = {reference: Predictor.from_checkpoints(ctx.plans, configuration, checkpoint, device="cpu",
                                                        precision="fp32", mirror=mirror)}
    # the dry run: a second fp32 predictor on the CPU (the same numbers; bf16 is emulated there, and slow)
    for precision in ("fp32",) if dry else ("bf16", "fp32"):
        predictors[f"{dev.type}_{precision}"] = Predictor.from_checkpoints(ctx.plans, configuration, checkpoint,
                                                                           device=str(dev), precision=precision,
                                                                           mirror=mirror)
    compared = {k: {"label_agreement": [], "dice_vs_cpu": [], "max_probability_difference": [],
                    "dice_vs_truth": []} for k in predictors}
    for case in cases:
        if not sec.allows(15, f"predictions of {case}"):
            break
        image, seg = store.load(case, mmap=False)[:2]
        results = {}
        for key, predictor in predictors.items():
            logits = predictor.logits(image).float()
            results[key] = (torch.softmax(logits, 0), logits.argmax(0).numpy())
        ref_prob, ref_label = results[reference]
        truth = seg[0]
        for key, (prob, label) in results.items():
            c = compared[key]
            c["label_agreement"].append(float((label == ref_label).mean()))
            c["dice_vs_cpu"].append(float(np.mean(_label_dice(label, ref_label, labels))))
            c["max_probability_difference"].append(float((prob - ref_prob).abs().max()))
            valid = truth >= 0
            c["dice_vs_truth"].append(float(np.mean(_label_dice(np.where(valid, label, -1),
                                                                np.where(valid, truth, -1), labels))))
        sec.data["cases"] = cases[:len(compared[reference]["label_agreement"])]
        # against the reference: the same model's fp32 CPU predictions; against the truth: the case's labels
        sec.data["predictions"] = {k: {"min_label_agreement": min(v["label_agreement"]),
                                       "mean_dice_vs_reference": float(np.mean(v["dice_vs_cpu"])),
                                       "max_probability_difference": max(v["max_probability_difference"]),
                                       "mean_dice_vs_truth": float(np.mean(v["dice_vs_truth"]))}
                                   for k, v in compared.items() if v["label_agreement"]}
        sec.save()


RUNNERS = {"environment": section_environment, "reductions": section_reductions, "memory": section_memory,
           "fold": section_fold, "speed": section_speed}


def run_sections(args) -> None:
    """A child process: its sections one after the other, each with its share of ``args.seconds`` and its results
    in ``args.scratch/<section>.json`` (rewritten after every item)."""
    dev = _device(args)
    if args.dry_run:
        import torch

        torch.set_num_threads(1)
    end = time.monotonic() + args.seconds
    for name in args.section:
        sec = Section(name, args.scratch / f"{name}.json", min(SECTION_SECONDS[name], end - time.monotonic()))
        sec.save()
        t0 = time.perf_counter()
        try:
            RUNNERS[name](sec, dev, args)
        except Exception as e:  # noqa: BLE001 -- the parent reports it
            sec.data["error"] = _error(e)
        sec.data["seconds"] = time.perf_counter() - t0
        sec.save()


# ------------------------------------------------------------------------------------------------- the check


def check(args) -> dict:
    """Every section in its own process (on a GPU: a hang, a crash or a CUDA error costs that section only; the
    dry run runs them all in one, to start torch once), in order, within the deadline; the report rewritten after
    each process."""
    start = time.monotonic()
    report = {"schema": SCHEMA, "dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "deadline_seconds": args.deadline, "sections": {}, "skipped": []}
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        report["commit"] = _commit()
        data = args.data
        if data is None:  # the dry run prepares its own tiny data (in a process of its own: it needs SimpleITK)
            data = scratch / "data"
            if set(args.sections) & NEED_DATA:
                subprocess.run([sys.executable, __file__, "--prepare", str(data), "--dry-run"], check=True,
                               stdout=subprocess.DEVNULL)
        groups = [list(args.sections)] if args.dry_run else [[name] for name in args.sections]
        for group in groups:
            left = args.deadline - (time.monotonic() - start)
            seconds = min(sum(SECTION_SECONDS[name] for name in group), left - 5)
            if seconds < 10:
                report["skipped"] += [{"section": name, "reason": f"deadline: {left:.0f} s left"} for name in group]
                continue
            cmd = [sys.executable, __file__, "--section", *group, "--data", str(data), "--scratch", str(scratch),
                   "--seconds", str(seconds)] + ["--dry-run"] * args.dry_run + ["--bare"] * args.bare
            print(f"gpu_check: {', '.join(group)} (up to {seconds:.0f} s)", flush=True)
            t0 = time.monotonic()
            try:
                code = subprocess.run(cmd, timeout=seconds + 30).returncode
            except subprocess.TimeoutExpired:
                code = "timed out"
            for name in group:
                part = scratch / f"{name}.json"
                result = json.loads(part.read_text()) if part.is_file() else {}
                result.setdefault("seconds", time.monotonic() - t0)
                if code != 0:
                    result["exit"] = code
                report["sections"][name] = result
            report["seconds"] = time.monotonic() - start
            _write_json(report, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["seconds"] = time.monotonic() - start
    _write_json(report, args.out)
    return report


def _checkout_bytes() -> int | None:
    """Bytes of the checkout's files that travel to the GPU machine (``None`` without git)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = [REPO / f for f in out.decode().split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file())


def _commit() -> str | None:
    """The checkout's commit (``None`` where it travelled without its .git)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", type=Path, metavar="DIR", help="write what travels to DIR (on a CPU machine)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data",
                    help="the shared real datasets (for --prepare)")
    ap.add_argument("--data", type=Path, help="what --prepare wrote (default with --dry-run: made on the fly)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    ap.add_argument("--deadline", type=float, default=560.0, help="seconds the whole check may take")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, tiny settings, seconds")
    ap.add_argument("--bare", action="store_true", help="as on the GPU machine: no SimpleITK, autoseg not installed")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)  # the GPU settings on the CPU (slow)
    ap.add_argument("--section", nargs="+", choices=SECTIONS, help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare is not None:
        sys.path.insert(0, str(REPO))
        manifest = prepare(args.prepare, args.dry_run, args.shared)
        for path, size in manifest["bytes"].items():
            print(f"{size / 1e6:9.2f} MB  {args.prepare / path}")
        print(f"{manifest['total_bytes'] / 1e6:9.2f} MB  in all")
        checkout = _checkout_bytes()
        if checkout is not None:
            total = checkout + manifest["total_bytes"] + sum(p.stat().st_size for p in REPO.glob(".whl/*.whl"))
            print(f"{checkout / 1e6:9.2f} MB  the checkout (tracked and untracked files that git does not ignore)")
            print(f"{total / 2 ** 20:9.2f} MiB travel with .whl and {args.prepare} (at most 64 MiB)"
                  + ("  TOO MUCH: remove untracked files" if total > 64 * 2 ** 20 else ""))
        return 0
    if args.data is None and not args.dry_run:
        ap.error("--data DIR (what --prepare wrote) is needed, except with --dry-run")
    if args.section is not None:
        bare_checkout(args.bare)
        run_sections(args)
        return 0
    report = check(args)
    failed = [n for n, s in report["sections"].items() if "error" in s or "exit" in s]
    print(f"gpu_check: {args.out} written in {report['seconds']:.0f} s"
          + (f"; sections with errors: {', '.join(failed)}" if failed else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
