"""Augmented training batches per second: autoseg's BatchLoader next to nnU-Net v2's, on Hippocampus.

For each configuration (3d_fullres: patch 40x56x40, batch 7; 2d: patch 56x40, batch 292 -- both tools plan these)
and each worker count, the consumer pulls batches as fast as it can (it does no training) and we count batches per
second after a warm-up. The nnU-Net side runs in its own virtualenv through a subprocess: ``nnUNetDataLoader`` with
the trainer's own ``get_training_transforms`` and initial patch size, behind its ``NonDetMultiThreadedAugmenter``
(``SingleThreadedAugmenter`` for 0 workers), on nnU-Net-preprocessed data -- the training-time data path of
``nnUNetTrainer.get_dataloaders`` without the validation loader.

Data: autoseg reads its preprocessed case store in ``--workspace`` (running ``autoseg plan`` there first when it is
missing); if that fails it falls back to raw images with a per-image z-score, labelled "raw z-score" in the table.
nnU-Net's preprocessed copy goes to ``--nnunet-work`` (made with ``benchmarks/_nnunet.py`` when missing).

The closing lines relate the loader to training: the CPU time one batch costs (1 / rate in-process, or with one
worker), as a fraction of a training step (nnU-Net on this CPU: 3d_fullres ~7 s, 2d ~1.8 s per iteration,
``/work/shared/peers/NNUNET_ON_CPU.md``). On a 2-core machine the workers share the cores with training, so this
fraction is roughly the slowdown loading adds to training.

Run: ``.venv/bin/python benchmarks/loader_throughput.py [--seconds 12] [--workers 1 2] [--configs 3d_fullres 2d]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _nnunet  # noqa: E402  (benchmarks/ helper, standard library only)

RAW = Path("/work/shared/data/Task04_Hippocampus")
NNUNET_STEP_SECONDS = {"3d_fullres": 7.0, "2d": 1.8}  # NNUNET_ON_CPU.md, nnU-Net training on this CPU
HIPPOCAMPUS_FALLBACK = {  # what both planners choose for Hippocampus, for the raw fallback
    "3d_fullres": ((40, 56, 40), 7, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),
    "2d": ((56, 40), 292, [[1, 1], [2, 2], [2, 2], [2, 2]]),
}

# --------------------------------------------------------------------------- autoseg side


def _autoseg_sources(workspace: Path, raw: Path, configs: list[str]) -> tuple[dict, dict, str]:
    """Per configuration: (source, plan-like tuple); and a label of where the data came from."""
    from autoseg.data.loader import StoreSource
    from autoseg.schema.base import load_json
    from autoseg.schema.plans import Plans

    plans_path = workspace / "Hippocampus" / "plans.json"
    try:
        if not all((workspace / "Hippocampus" / "preprocessed" / c / "store_info.json").is_file() for c in configs):
            from autoseg import api

            print(f"[autoseg] planning + preprocessing {raw} into {workspace}", flush=True)
            api.plan(raw, workspace, num_workers=2, progress=False)
        plans = load_json(Plans, plans_path)
        sources, geometry = {}, {}
        for c in configs:
            plan = plans.configurations[c]
            sources[c] = StoreSource.from_folder(workspace / "Hippocampus" / "preprocessed" / c)
            geometry[c] = (tuple(plan.patch_size), plan.batch_size, plan.architecture.strides)
        return sources, geometry, "autoseg preprocessed"
    except Exception as e:  # noqa: BLE001 -- fall back, loudly
        print(f"[autoseg] preprocessed data unavailable ({type(e).__name__}: {e}); FALLBACK to raw images "
              f"with a per-image z-score", flush=True)
    from autoseg.io.image import read_image, read_label
    from autoseg.preprocessing.case import class_locations

    cases = {}
    for img in sorted((raw / "imagesTr").glob("*.nii.gz")):
        if img.name.startswith("."):
            continue
        data, _ = read_image([img])
        seg, _ = read_label(raw / "labelsTr" / img.name)
        data = (data - data.mean()) / max(float(data.std()), 1e-8)
        seg = seg[None].astype(np.int8)
        locs = class_locations(seg[0], int(seg.max()) + 1, np.random.default_rng(0))
        cases[img.name[:-7]] = (data.astype(np.float32), seg, locs)
    src = _InMemory(cases)
    return {c: src for c in configs}, {c: HIPPOCAMPUS_FALLBACK[c] for c in configs}, "raw z-score (fallback)"


class _InMemory(dict):
    """Case id -> (data, seg, locs): an autoseg.data.sampling.CaseSource over arrays in memory (the fallback)."""

    def case_ids(self) -> list:
        return list(self)

    def load(self, case_id: str):
        return self[case_id]


def _time(next_batch, close, seconds: float, min_batches: int, started: float) -> dict:
    next_batch()  # first batch: worker start-up
    first = time.perf_counter() - started
    next_batch()  # one more so every worker is past its start-up
    t0 = time.perf_counter()
    n = 0
    while n < min_batches or time.perf_counter() - t0 < seconds:
        next_batch()
        n += 1
    rate = n / (time.perf_counter() - t0)
    close()
    return {"batches_per_s": rate, "first_batch_s": first, "batches": n}


def run_autoseg(source, geometry, workers: int, seconds: float, min_batches: int) -> dict:
    from autoseg.data.augmentation import TrainingAugmentation, training_params
    from autoseg.data.loader import BatchLoader, LoaderConfig

    patch, batch, strides = geometry
    aug = TrainingAugmentation(training_params(patch, strides))
    started = time.perf_counter()
    loader = BatchLoader(source, LoaderConfig(patch, batch, sample_patch_size=aug.pre_patch_size,
                                              num_workers=workers, seed=0), aug)
    out = _time(lambda: next(loader), loader.close, seconds, min_batches, started)
    out["pre_patch"] = aug.pre_patch_size
    return out


# --------------------------------------------------------------------------- nnU-Net side

_NNUNET_SCRIPT = r"""
import json, sys, time, torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

config, workers, seconds, min_batches, dataset = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
base = join(nnUNet_preprocessed, dataset)
plans = load_json(join(base, "nnUNetPlans.json"))
plans["continue_training"] = False  # run_training.py adds this key before building a trainer
t = nnUNetTrainer(plans, config, 0, load_json(join(base, "dataset.json")), device=torch.device("cpu"))
t._set_batch_size_and_oversample()
t.dataset_class = infer_dataset_class(t.preprocessed_dataset_folder)
patch = t.configuration_manager.patch_size
rot, dummy2d, initial_patch, mirror = t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
tr = t.get_training_transforms(patch, rot, t._get_deep_supervision_scales(), mirror, dummy2d,
                               use_mask_for_norm=t.configuration_manager.use_mask_for_norm,
                               is_cascaded=t.is_cascaded, foreground_labels=t.label_manager.foreground_labels,
                               regions=None, ignore_label=t.label_manager.ignore_label)
ds_tr, _ = t.get_tr_and_val_datasets()
dl = nnUNetDataLoader(ds_tr, t.batch_size, initial_patch, patch, t.label_manager,
                      oversample_foreground_percent=t.oversample_foreground_percent, sampling_probabilities=None,
                      pad_sides=None, transforms=tr, probabilistic_oversampling=False)
started = time.perf_counter()
if workers == 0:
    gen = SingleThreadedAugmenter(dl, None)
else:
    gen = NonDetMultiThreadedAugmenter(data_loader=dl, transform=None, num_processes=workers,
                                       num_cached=max(6, workers // 2), seeds=None, pin_memory=False,
                                       wait_time=0.002)
next(gen)
first = time.perf_counter() - started
next(gen)
t0 = time.perf_counter(); n = 0
while n < min_batches or time.perf_counter() - t0 < seconds:
    next(gen); n += 1
rate = n / (time.perf_counter() - t0)
if workers:
    gen._finish()
print("RESULT " + json.dumps({"batches_per_s": rate, "first_batch_s": first, "batches": n,
                              "patch": list(map(int, patch)), "batch_size": int(t.batch_size),
                              "pre_patch": list(map(int, initial_patch)), "dummy_2d": bool(dummy2d)}))
"""


def prepare_nnunet(work: Path, raw: Path, configs: list[str]) -> str:
    pre = work / "nnUNet_preprocessed"
    found = sorted(pre.glob("Dataset004_*")) if pre.is_dir() else []
    if not found or not all((found[0] / f"nnUNetPlans_{c}").is_dir() for c in configs):
        print(f"[nnunet] preprocessing {raw} into {work}", flush=True)
        _nnunet.plan_with_nnunet(raw, work, 4, num_proc=2, configurations=tuple(configs), preprocess=True)
        found = sorted(pre.glob("Dataset004_*"))
    return found[0].name


def run_nnunet(work: Path, dataset: str, config: str, workers: int, seconds: float, min_batches: int) -> dict:
    python = _nnunet.ensure_nnunet_venv()
    env = _nnunet._clean_env({
        "nnUNet_raw": work / "nnUNet_raw", "nnUNet_preprocessed": work / "nnUNet_preprocessed",
        "nnUNet_results": work / "nnUNet_results", "nnUNet_n_proc_DA": workers, "nnUNet_compile": "f",
        "nnUNet_def_n_proc": 2})
    r = subprocess.run([str(python), "-c", _NNUNET_SCRIPT, config, str(workers), str(seconds), str(min_batches),
                        dataset], capture_output=True, text=True, env=env, cwd=str(work), timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"nnU-Net loader run failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/bench_ws"))
    ap.add_argument("--raw", type=Path, default=RAW)
    ap.add_argument("--nnunet-work", type=Path, default=Path("/tmp/loader_bench/nnunet"))
    ap.add_argument("--configs", nargs="+", default=["3d_fullres", "2d"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--seconds", type=float, default=12.0, help="measuring time per row, after warm-up")
    ap.add_argument("--min-batches", type=int, default=4)
    ap.add_argument("--skip-nnunet", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    sources, geometry, origin = _autoseg_sources(args.workspace, args.raw, args.configs)
    dataset = None if args.skip_nnunet else prepare_nnunet(args.nnunet_work, args.raw, args.configs)
    print(f"[bench] cores {os.cpu_count()}; autoseg data: {origin}", flush=True)

    rows = []
    for config in args.configs:
        for workers in args.workers:
            # alternate the tools row by row: this shared machine's speed drifts over minutes
            r = run_autoseg(sources[config], geometry[config], workers, args.seconds, args.min_batches)
            rows.append({**r, "tool": "autoseg", "data": origin, "config": config, "workers": workers,
                         "patch": "x".join(map(str, geometry[config][0])), "batch": geometry[config][1]})
            print(f"[bench] autoseg {config} w{workers}: {r['batches_per_s']:.2f} batches/s", flush=True)
            if dataset is not None:
                r = run_nnunet(args.nnunet_work, dataset, config, workers, args.seconds, args.min_batches)
                rows.append({**r, "tool": "nnU-Net v2", "data": "nnU-Net preprocessed", "config": config,
                             "workers": workers, "patch": "x".join(map(str, r["patch"])), "batch": r["batch_size"]})
                print(f"[bench] nnU-Net {config} w{workers}: {r['batches_per_s']:.2f} batches/s", flush=True)

    # CPU seconds one batch costs: from the in-process row when measured, else the one-worker row
    per_batch = {}
    for r in sorted(rows, key=lambda r: -r["workers"]):
        if r["workers"] <= 1:
            per_batch[(r["tool"], r["config"])] = 1.0 / r["batches_per_s"]
    print()
    print(f"{'tool':<11} {'config':<11} {'patch':<9} {'batch':>5} {'pre-aug box':<12} {'workers':>7} "
          f"{'batches/s':>9} {'1st batch s':>11}")
    for r in rows:
        box = "x".join(map(str, r["pre_patch"]))
        print(f"{r['tool']:<11} {r['config']:<11} {r['patch']:<9} {r['batch']:>5} {box:<12} {r['workers']:>7} "
              f"{r['batches_per_s']:>9.2f} {r['first_batch_s']:>11.2f}")
    print("\ndata time per batch (one core) / nnU-Net's training step on this CPU:")
    for (tool, config), t in per_batch.items():
        step = NNUNET_STEP_SECONDS[config]
        print(f"  {tool:<11} {config:<11} {t:.3f} s / {step:.1f} s = {100 * t / step:.1f}%")
    print(f"\nautoseg data: {origin}. Step times are nnU-Net's on this CPU (NNUNET_ON_CPU.md), not autoseg's.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
