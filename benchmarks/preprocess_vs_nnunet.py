"""Preprocess the same datasets with autoseg and nnU-Net v2 (3d_fullres + 2d); compare time, memory and results.

Datasets: the shared Hippocampus and BraTS subsets, and a synthetic anisotropic CT-like set (resampling with
separate z; skip with ``--no-synthetic``). Both tools first plan (untimed; nnU-Net's MSD conversion too),
then their preprocessing alone is timed as a subprocess with 2 workers, alternating which tool runs first per repeat
(figures on this shared machine vary by 30% from run to run). Printed per dataset: wall time of both and the ratio
nnU-Net / autoseg, peak RSS (largest process and the summed process tree), and for a few cases per configuration
the agreement of the preprocessed arrays: whether autoseg's stored arrays (its own plans) have nnU-Net's shapes, and
autoseg's preprocessing run at nnU-Net's plans (axis order, spacing, normalisation), so planner differences do not
hide resampling differences: max / mean absolute difference of the normalised intensities and the fraction of
equal segmentation voxels (-1 "outside" included). nnU-Net 2.8 stores blosc2 ``.b2nd``
files, read back through the nnU-Net venv's python.

Usage::

    .venv/bin/python benchmarks/preprocess_vs_nnunet.py [--work-dir /tmp/preprocess_bench] [--repeats 2] [--cases 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = ("3d_fullres", "2d")
WORKERS = 2

_READ_B2ND = r"""
import sys, numpy as np, blosc2
src, dst, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
for i in ids:
    np.save(f"{dst}/{i}.npy", blosc2.open(urlpath=f"{src}/{i}.b2nd", mode="r")[:])
    np.save(f"{dst}/{i}_seg.npy", blosc2.open(urlpath=f"{src}/{i}_seg.b2nd", mode="r")[:])
"""


def _nnunet_env(work: Path, python: Path) -> dict:
    """The environment ``_nnunet.plan_with_nnunet`` gives nnU-Net (same folders, same worker variables)."""
    import os

    return _nnunet._clean_env({
        "nnUNet_raw": work / "nnUNet_raw", "nnUNet_preprocessed": work / "nnUNet_preprocessed",
        "nnUNet_results": work / "nnUNet_results", "nnUNet_n_proc_DA": WORKERS, "nnUNet_def_n_proc": WORKERS,
        "nnUNet_compile": "f", "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })


def _time_nnunet(work: Path, python: Path, did: int, dataset_name: str, log: Path) -> dict:
    pre = work / "nnUNet_preprocessed" / dataset_name
    for c in CONFIGS:
        shutil.rmtree(pre / f"nnUNetPlans_{c}", ignore_errors=True)
    cmd = [str(python.parent / "nnUNetv2_preprocess"), "-d", str(did), "-c", *CONFIGS,
           "-np", *[str(WORKERS)] * len(CONFIGS), "--no_pbar"]
    return _nnunet._run_measured(cmd, _nnunet_env(work, python), log, work)


def _time_autoseg(ws: Path, dataset: str, log: Path) -> dict:
    shutil.rmtree(ws / dataset / "preprocessed", ignore_errors=True)  # cold: nothing to reuse
    cmd = [sys.executable, "-m", "autoseg", "preprocess", dataset, "-w", str(ws), "-c", *CONFIGS,
           "-j", str(WORKERS)]
    return _nnunet._run_measured(cmd, _nnunet._clean_env(), log, ws)


def _plans_like_nnunet(ours, nn_plans: dict, config: str):
    """autoseg plans with nnU-Net's axis order, target spacing and normalisation for ``config``, so the arrays can
    be compared even where the two planners disagree (then only the crop/normalise/resample code differs)."""
    import dataclasses

    from autoseg.schema.plans import ChannelNormalization

    c = nn_plans["configurations"][config]
    props = nn_plans["foreground_intensity_properties_per_channel"]
    norms = []
    for ch, (scheme, mask) in enumerate(zip(c["normalization_schemes"], c["use_mask_for_norm"])):
        if scheme == "CTNormalization":
            p = props[str(ch)]
            norms.append(ChannelNormalization("ct", False, p["percentile_00_5"], p["percentile_99_5"], p["mean"],
                                              p["std"]))
        else:
            norms.append(ChannelNormalization({"ZScoreNormalization": "zscore", "NoNormalization": "none",
                                               "RescaleTo01Normalization": "rescale_0_1"}[scheme], bool(mask)))
    cfg = dataclasses.replace(ours.configurations[config], spacing=tuple(c["spacing"]), normalization=tuple(norms))
    fwd = tuple(nn_plans["transpose_forward"])
    return dataclasses.replace(ours, transpose_forward=fwd, transpose_backward=tuple(nn_plans["transpose_backward"]),
                               configurations={**ours.configurations, config: cfg})


def _agreement(raw: Path, ws: Path, dataset: str, nn_pre: Path, python: Path, n_cases: int,
               tmp: Path) -> list[str]:
    from autoseg.io.verify import load_and_check_case
    from autoseg.preprocessing.case import preprocess_case
    from autoseg.preprocessing.store import CaseStore
    from autoseg.schema.base import load_json
    from autoseg.schema.dataset import DatasetSpec
    from autoseg.schema.plans import Plans
    from autoseg.workspace import Workspace

    paths = Workspace(ws).dataset(dataset)
    spec = load_json(DatasetSpec, paths.dataset_spec)
    ours = load_json(Plans, paths.plans)
    nn_plans = json.loads((nn_pre / "nnUNetPlans.json").read_text())
    lines = []
    for config in CONFIGS:
        store = CaseStore(paths.preprocessed(config))
        ids = store.case_ids()[:n_cases]
        out = tmp / config
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(python), "-c", _READ_B2ND, str(nn_pre / f"nnUNetPlans_{config}"), str(out), *ids],
                       check=True, env=_nnunet._clean_env(), cwd="/")
        same_plans = _plans_like_nnunet(ours, nn_plans, config)
        spacing_note = (f"spacing autoseg {[round(v, 3) for v in ours.configurations[config].spacing]} vs nnU-Net "
                        f"{[round(v, 3) for v in nn_plans['configurations'][config]['spacing']]}")
        lines.append(f"  {config}: {spacing_note}")
        for cid in ids:
            data, seg, _, _ = store.load(cid)
            nd, ns = np.load(out / f"{cid}.npy"), np.load(out / f"{cid}_seg.npy")
            own = "equal" if data.shape == nd.shape else f"differs ({tuple(data.shape)} vs {nd.shape})"
            case = next(c for c in spec.training if c.case_id == cid)
            loaded = load_and_check_case(raw, spec, case)
            mine = preprocess_case(loaded.image, loaded.label, loaded.geometry, same_plans, config, cid,
                                   np.random.default_rng(0))
            if mine.data.shape != nd.shape:
                lines.append(f"    {cid}: own-plans shape {own}; at nnU-Net's plans shape still differs: "
                             f"{mine.data.shape} vs {nd.shape}")
                continue
            diff = np.abs(mine.data.astype(np.float64) - nd)
            same = np.mean(mine.seg == ns) * 100
            lines.append(f"    {cid}: own-plans shape {own}; at nnU-Net's plans {tuple(nd.shape)}: intensity |diff| "
                         f"max {diff.max():.2e} mean {diff.mean():.2e}; labels equal {same:.3f}%")
    return lines


def _datasets(work: Path, no_synthetic: bool) -> list[tuple[str, Path, int]]:
    out = [("Hippocampus", SHARED / "Task04_Hippocampus", 4), ("BraTS subset", SHARED / "BraTS2015_DeepMedicSubset", 5)]
    if not no_synthetic:  # anisotropic (about 5 x 0.8 x 0.8 mm): exercises resampling with separate z
        from autoseg import synthetic

        folder = work / "raw" / "Task11_Anisotropic"
        if not (folder / "dataset.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            synthetic.make_dataset(folder, synthetic.PRESETS["anisotropic"])
        out.append(("synthetic anisotropic", folder, 11))
    return out


def main(argv=None) -> int:
    import resource

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/preprocess_bench"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cases", type=int, default=3, help="cases per configuration compared array by array")
    p.add_argument("--no-synthetic", action="store_true", help="only the shared real datasets")
    args = p.parse_args(argv)
    work = args.work_dir.resolve()
    python = _nnunet.ensure_nnunet_venv()
    from autoseg.io.dataset_json import read_dataset_spec

    # Phase 1, timings. The kernel's max-RSS of an exec'ed child starts from this process's RSS at fork time, so
    # nothing large is loaded here until every timing is done (the comparisons of phase 2 load whole cases).
    timed = []
    for name, folder, did in _datasets(work, args.no_synthetic):
        if not (folder / "dataset.json").is_file():
            print(f"skipping {name}: {folder} not found")
            continue
        print(f"== {name}: planning (untimed) ...", flush=True)
        nn = _nnunet.plan_with_nnunet(folder, work / "nnunet", did, num_proc=WORKERS, preprocess=False)
        ws = work / "autoseg_ws"
        subprocess.run([sys.executable, "-m", "autoseg", "plan", str(folder), "-w", str(ws), "-j", str(WORKERS),
                        "--no-preprocess"], check=True, stdout=subprocess.DEVNULL, env=_nnunet._clean_env())
        dataset = read_dataset_spec(folder).name
        ours, theirs = [], []
        for r in range(args.repeats):
            order = ("autoseg", "nnunet") if r % 2 == 0 else ("nnunet", "autoseg")
            for tool in order:
                print(f"   repeat {r + 1}: {tool} preprocessing ...", flush=True)
                if tool == "autoseg":
                    ours.append(_time_autoseg(ws, dataset, work / "logs" / f"autoseg_{did}.log"))
                else:
                    theirs.append(_time_nnunet(work / "nnunet", python, did, nn["dataset_name"],
                                               work / "logs" / f"nnunet_{did}.log"))
        timed.append((name, folder, did, nn["dataset_name"], ws, dataset, ours, theirs))
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Phase 2, agreement of the arrays.
    reports = []
    for name, folder, did, nn_name, ws, dataset, ours, theirs in timed:
        print(f"== {name}: comparing arrays ...", flush=True)
        agree = _agreement(folder, ws, dataset, work / "nnunet" / "nnUNet_preprocessed" / nn_name, python,
                           args.cases, work / "compare" / str(did))
        t_ours = statistics.median(m["wall_seconds"] for m in ours)
        t_theirs = statistics.median(m["wall_seconds"] for m in theirs)
        lines = [f"== {name} ({', '.join(CONFIGS)}; {WORKERS} workers; median of {args.repeats})",
                 f"  wall: autoseg {t_ours:.1f} s, nnU-Net {t_theirs:.1f} s -> nnU-Net / autoseg = "
                 f"{t_theirs / t_ours:.2f}x  (runs: autoseg {[round(m['wall_seconds'], 1) for m in ours]}, "
                 f"nnU-Net {[round(m['wall_seconds'], 1) for m in theirs]})",
                 f"  peak RSS largest process: autoseg {max(m['peak_rss_mb'] for m in ours):.0f} MB, nnU-Net "
                 f"{max(m['peak_rss_mb'] for m in theirs):.0f} MB; process tree: autoseg "
                 f"{max(m['peak_tree_rss_mb'] for m in ours):.0f} MB, nnU-Net "
                 f"{max(m['peak_tree_rss_mb'] for m in theirs):.0f} MB", *agree]
        reports.append("\n".join(lines))
    print("\n\n".join(["", *reports]))
    print(f"\n(largest-process figures are the kernel's max RSS and never below this benchmark process's own "
          f"{parent_mb:.0f} MB at the time of the timings; the process-tree figures are sampled from /proc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
