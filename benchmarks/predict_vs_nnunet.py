"""Inference speed, memory and output agreement of ``autoseg predict`` against ``nnUNetv2_predict``, same machine.

Hippocampus (3d_fullres, fold 0, the models trained by ``train_vs_nnunet.py``): the first ``--cases`` images of
imagesTs are segmented by both tools, with and without test-time mirroring, each tool as a subprocess timed from
start to exit (``_nnunet._run_measured``), the two tools alternating. Reported per tool and mode:

* seconds per case = wall time of the N-case run / N (start-up included, as a user sees it);
* a separate 1-case run: its wall time, and from the two runs the marginal cost of one more case
  ``(wall_N - wall_1) / (N - 1)`` and the start-up cost ``wall_1 - marginal`` (imports, model load, workers);
* peak memory: the sampled peak of the summed RSS of the whole process tree (main process + workers; pages
  shared between processes, e.g. the torch libraries each spawned worker maps, are counted once per process),
  the same for PSS (shared pages split between their processes: closer to the memory really used), and the
  largest single process (kernel maxrss);
* agreement: Dice per foreground class between the two tools' label maps (mean over cases, both-empty = 1), the
  fraction of equal voxels, and whether autoseg's (and, for reference, nnU-Net's) outputs have exactly the
  geometry of their inputs (size, spacing, origin, direction).

autoseg reads the MSD files of imagesTs; nnU-Net needs ``<case>_0000.nii.gz`` names, given by symlinks in the work
dir. nnU-Net runs from its own venv with ``-npp 2 -nps 2 -device cpu`` and its default checkpoint_final.pth.
autoseg runs with its default precision (``auto``: bf16 on CPUs with native bf16, which nnU-Net never uses on
the CPU) unless ``--autoseg-precision`` says otherwise; the resolved precision is in the report.

``--brats``: the memory-bounded large-image check. One BraTS case (240x240x155, 2 channels). No BraTS model is
trained elsewhere, so throwaway models are trained here for both tools (1 epoch x 2 iterations, no validation;
the weights do not matter for speed and memory, and the label agreement of two untrained networks means
nothing); the case is then predicted with and without mirroring by both tools. Both tools read the same
nnU-Net-named channel files (from nnU-Net's conversion of the MSD folder).

Usage::

    .venv/bin/python benchmarks/predict_vs_nnunet.py [--work-dir /tmp/predict_bench] [--models /tmp/train_bench]
        [--cases 10] [--repeats 1] [--brats]

``--models`` is the work dir of ``train_vs_nnunet.py`` (read only); train first with
``benchmarks/train_vs_nnunet.py --mode budget``. Writes ``<work-dir>/report.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet  # noqa: E402
import train_vs_nnunet as T  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPO = SHARED / "Task04_Hippocampus"
BRATS = SHARED / "BraTS2015_DeepMedicSubset"
HIPPO_ID, BRATS_ID = 4, 5
ENDING = ".nii.gz"
MODES = (("no_tta", False), ("tta", True))


def _log(msg: str) -> None:
    print(f"[predict-bench] {msg}", flush=True)


def _reset(d: Path) -> Path:
    if d.is_symlink() or d.is_file():
        d.unlink()
    elif d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


# --------------------------------------------------------------------------- models


def autoseg_checkpoint(ws: Path, dataset: str, config: str) -> Path:
    return ws / dataset / "models" / config / "fold_0" / "checkpoint_final.pt"


def nnunet_checkpoint(nn_root: Path, dataset_id: int, config: str) -> Path | None:
    res = nn_root / "nnUNet_results"
    hits = sorted(res.glob(f"Dataset{dataset_id:03d}_*/{T.TRAINER}__nnUNetPlans__{config}/fold_0/checkpoint_final.pth"))
    return hits[0] if hits else None


def check_hippo_models(models: Path, config: str) -> list[str]:
    problems = []
    a = autoseg_checkpoint(models / "autoseg_ws", "Hippocampus", config)
    if not a.is_file():
        problems.append(f"autoseg model missing: {a}")
    if nnunet_checkpoint(models / "nnunet", HIPPO_ID, config) is None:
        problems.append(f"nnU-Net model missing: {models}/nnunet/nnUNet_results/Dataset004_Hippocampus/"
                        f"{T.TRAINER}__nnUNetPlans__{config}/fold_0/checkpoint_final.pth")
    return problems


# --------------------------------------------------------------------------- running the tools


def run_autoseg(ws: Path, dataset: str, config: str, inp: Path, out: Path, tta: bool, precision: str,
                log: Path, cwd: Path) -> dict:
    _reset(out)
    cmd = [sys.executable, "-m", "autoseg", "predict", dataset, "-w", str(ws), "-i", str(inp), "-o", str(out),
           "-c", config, "-f", "0", "--overwrite"]
    if not tta:
        cmd.append("--no-tta")
    if precision != "auto":
        cmd += ["--precision", precision]
    return _nnunet._run_measured(cmd, _nnunet._clean_env(), log, cwd, pss=True)


def run_nnunet(python: Path, nn_work: Path, dataset_id: int, config: str, inp: Path, out: Path, tta: bool,
               log: Path, cwd: Path) -> dict:
    """``nn_work`` holds ``nnunet/nnUNet_{raw,preprocessed,results}`` (train_vs_nnunet.py's layout)."""
    _reset(out)
    cmd = [str(python.parent / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", str(dataset_id),
           "-c", config, "-f", "0", "-tr", T.TRAINER, "-device", "cpu", "-npp", "2", "-nps", "2"]
    if not tta:
        cmd.append("--disable_tta")
    return _nnunet._run_measured(cmd, T.nnunet_env(nn_work, {}), log, cwd, pss=True)


# --------------------------------------------------------------------------- agreement


def _geometry(img: sitk.Image) -> dict:
    return {"size": list(img.GetSize()[:3]), "spacing": list(img.GetSpacing()[:3]),
            "origin": list(img.GetOrigin()[:3]),
            "direction": np.asarray(img.GetDirection()).reshape(img.GetDimension(), -1)[:3, :3].ravel().tolist()}


def _header(path: Path) -> sitk.Image:
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return r


def geometry_check(outputs: dict[str, Path], inputs: dict[str, Path]) -> dict:
    """Output vs input header: size equal and spacing/origin/direction bitwise equal (``exact``); the largest
    absolute difference of the float fields is reported too."""
    exact, max_diff, problems = True, 0.0, []
    for case, out in outputs.items():
        a, b = _geometry(_header(inputs[case])), _geometry(_header(out))
        if a["size"] != b["size"]:
            exact = False
            problems.append(f"{case}: size {b['size']} != input {a['size']}")
            continue
        for key in ("spacing", "origin", "direction"):
            d = float(np.max(np.abs(np.subtract(a[key], b[key]))))
            max_diff = max(max_diff, d)
            if a[key] != b[key]:
                exact = False
                problems.append(f"{case}: {key} {b[key]} != input {a[key]}")
    return {"cases": len(outputs), "exact": exact, "max_abs_diff": max_diff, "problems": problems[:10]}


def label_agreement(a_dir: Path, b_dir: Path, cases: list[str], labels: list[str]) -> dict:
    """Dice per foreground class between two folders of label maps (mean over cases; both empty counts as 1)."""
    per_class = {name: [] for name in labels[1:]}
    equal = []
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_dir / f"{case}{ENDING}")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_dir / f"{case}{ENDING}")))
        if a.shape != b.shape:
            raise RuntimeError(f"{case}: label map shapes differ, {a.shape} vs {b.shape}")
        equal.append(float(np.mean(a == b)))
        for k, name in enumerate(labels[1:], start=1):
            pa, pb = a == k, b == k
            s = int(pa.sum()) + int(pb.sum())
            per_class[name].append(1.0 if s == 0 else 2.0 * int(np.logical_and(pa, pb).sum()) / s)
    return {"dice": {k: float(np.mean(v)) for k, v in per_class.items()},
            "dice_min": {k: float(np.min(v)) for k, v in per_class.items()},
            "equal_voxel_fraction": float(np.mean(equal)), "cases": len(cases)}


# --------------------------------------------------------------------------- benchmark core


def _ok(run: dict | None) -> bool:
    return run is not None and "error" not in run


def time_both(python: Path, *, label: str, as_ws: Path, as_dataset: str, nn_work: Path, dataset_id: int,
              config: str, inputs: dict, precision: str, work: Path, repeats: int,
              modes: tuple[str, ...] = tuple(m for m, _ in MODES)) -> dict:
    """inputs: {"n": (autoseg_dir, nnunet_dir, n_cases), "1": (...)} (the "1" entry optional).
    Returns {mode: {tool: {"n": measurement, "1": measurement}}} keeping, per run kind, the fastest repeat."""
    out: dict = {}
    logs = work / "logs"
    for r in range(repeats):
        for mode, tta in [(m, t) for m, t in MODES if m in modes]:
            order = ("autoseg", "nnunet") if r % 2 == 0 else ("nnunet", "autoseg")
            for kind, (as_in, nn_in, n) in inputs.items():
                for tool in order:
                    dst = work / "out" / label / f"{tool}_{mode}_{kind}"
                    _log(f"{label}: {tool} {mode} {n} case(s) (repeat {r + 1}/{repeats}) ...")
                    slot = out.setdefault(mode, {}).setdefault(tool, {})
                    prev = slot.get(kind)
                    if prev is not None and "error" in prev:
                        _log("  skipped: this run failed before")
                        continue
                    try:
                        if tool == "autoseg":
                            m = run_autoseg(as_ws, as_dataset, config, as_in, dst, tta, precision,
                                            logs / f"{label}_autoseg.log", work)
                        else:
                            m = run_nnunet(python, nn_work, dataset_id, config, nn_in, dst, tta,
                                           logs / f"{label}_nnunet.log", work)
                    except subprocess.CalledProcessError as e:
                        last = [ln for ln in (e.output or "").splitlines() if ln.strip()][-1:] or ["?"]
                        err = f"exit status {e.returncode}: {last[0].strip()[:300]}"
                        _log(f"  FAILED ({err}); log: {logs / f'{label}_{tool}.log'}")
                        slot[kind] = {"cases": n, "error": err}
                        continue
                    m["cases"] = n
                    m["s_per_case"] = m["wall_seconds"] / n
                    m["out_dir"] = str(dst)
                    _log(f"  {m['wall_seconds']:.1f} s ({m['s_per_case']:.2f} s/case), peak tree RSS "
                         f"{m['peak_tree_rss_mb']:.0f} MB (PSS {m['peak_tree_pss_mb']:.0f} MB), largest process "
                         f"{m['peak_rss_mb']:.0f} MB")
                    runs = (prev["repeats_wall_seconds"] if prev else []) + [m["wall_seconds"]]
                    if prev is None or m["wall_seconds"] < prev["wall_seconds"]:
                        slot[kind] = m
                    slot[kind]["repeats_wall_seconds"] = runs
                    # peak memory: the worst over repeats
                    for key in ("peak_rss_mb", "peak_tree_rss_mb", "peak_tree_pss_mb"):
                        slot[kind][key] = max(m[key], prev[key] if prev else 0.0)
    for mode in out:
        for tool, slot in out[mode].items():
            if _ok(slot.get("1")) and _ok(slot.get("n")) and slot["n"]["cases"] > 1:
                n = slot["n"]["cases"]
                marginal = (slot["n"]["wall_seconds"] - slot["1"]["wall_seconds"]) / (n - 1)
                slot["marginal_s_per_case"] = marginal
                slot["startup_s"] = slot["1"]["wall_seconds"] - marginal
    return out


def _link_inputs(src_files: dict[str, list[Path]], as_dir: Path, nn_dir: Path, msd_for_autoseg: bool) -> None:
    """src_files: case -> channel files. autoseg gets the MSD name (one file) when ``msd_for_autoseg``, else the
    same nnU-Net-named links as nnU-Net."""
    _reset(as_dir)
    _reset(nn_dir)
    for case, files in src_files.items():
        for c, f in enumerate(files):
            (nn_dir / f"{case}_{c:04d}{ENDING}").symlink_to(f.resolve())
            if not msd_for_autoseg:
                (as_dir / f"{case}_{c:04d}{ENDING}").symlink_to(f.resolve())
        if msd_for_autoseg:
            (as_dir / f"{case}{ENDING}").symlink_to(files[0].resolve())


def _resolved_precision(precision: str) -> str:
    from autoseg.nn.device import resolve_precision

    import torch

    return resolve_precision(precision, torch.device("cpu"))


def hippocampus(python: Path, args, work: Path) -> dict:
    models = args.models.resolve()
    ts = sorted(p for p in (HIPPO / "imagesTs").iterdir() if p.name.endswith(ENDING) and not p.name.startswith("."))
    if args.cases > 0:
        ts = ts[:args.cases]
    cases = [p.name[:-len(ENDING)] for p in ts]
    n = len(cases)
    inp = work / "inputs" / "hippocampus"
    _link_inputs({c: [p] for c, p in zip(cases, ts)}, inp / "autoseg_n", inp / "nnunet_n", True)
    inputs = {"n": (inp / "autoseg_n", inp / "nnunet_n", n)}
    if n > 1:
        _link_inputs({cases[0]: [ts[0]]}, inp / "autoseg_1", inp / "nnunet_1", True)
        inputs["1"] = (inp / "autoseg_1", inp / "nnunet_1", 1)
    timing = time_both(python, label="hippocampus", as_ws=models / "autoseg_ws", as_dataset="Hippocampus",
                       nn_work=models, dataset_id=HIPPO_ID, config=args.config, inputs=inputs,
                       precision=args.autoseg_precision, work=work, repeats=args.repeats)
    if n == 1:
        for slot in (s for m in timing.values() for s in m.values()):
            slot["1"] = slot["n"]
    labels = json.loads((models / "autoseg_ws" / "Hippocampus" / "plans.json").read_text())["labels"]
    return _with_agreement(timing, cases, {c: p for c, p in zip(cases, ts)}, labels,
                           {"dataset": "Hippocampus", "config": args.config, "cases": n, "case_ids": cases,
                            "models": str(models)})


def _with_agreement(timing: dict, cases: list[str], inputs: dict[str, Path], labels: list[str], meta: dict) -> dict:
    agreement = {}
    for mode in timing:
        a_run, b_run = timing[mode]["autoseg"].get("n"), timing[mode]["nnunet"].get("n")
        ag: dict = {}
        if _ok(a_run):
            a_dir = Path(a_run["out_dir"])
            ag["autoseg_geometry"] = geometry_check({c: a_dir / f"{c}{ENDING}" for c in cases}, inputs)
        if _ok(b_run):
            b_dir = Path(b_run["out_dir"])
            ag["nnunet_geometry"] = geometry_check({c: b_dir / f"{c}{ENDING}" for c in cases}, inputs)
        if _ok(a_run) and _ok(b_run):
            ag.update(label_agreement(a_dir, b_dir, cases, labels))
        agreement[mode] = ag
    return {**meta, "labels": labels, "timing": timing, "agreement": agreement}


# --------------------------------------------------------------------------- BraTS


def brats(python: Path, args, work: Path) -> dict:
    root = work / "brats"
    as_ws, nn_root = root / "autoseg_ws", root / "nnunet"
    config = "3d_fullres"
    setup: dict = {}

    # nnU-Net: convert + plan + preprocess 3d_fullres, train 1 epoch x 2 iterations
    if nnunet_checkpoint(nn_root, BRATS_ID, config) is None:
        _log("BraTS: nnU-Net plan + preprocess (throwaway model) ...")
        t0 = time.perf_counter()
        _nnunet.plan_with_nnunet(BRATS, nn_root, BRATS_ID, num_proc=2, configurations=(config,), preprocess=True)
        setup["nnunet_plan_preprocess_s"] = time.perf_counter() - t0
        _log("BraTS: nnU-Net train 1 epoch x 2 iterations ...")
        env = T.nnunet_env(root, {"BENCH_ITERS": 2, "BENCH_EPOCHS": 1, "BENCH_VAL_ITERS": 1, "BENCH_NO_VAL": "1",
                                  "BENCH_TIMES": ""})
        cmd = [str(python.parent / "nnUNetv2_train"), str(BRATS_ID), config, "0", "-tr", T.TRAINER,
               "-device", "cpu"]
        setup["nnunet_train"] = _nnunet._run_measured(cmd, env, work / "logs" / "brats_nnunet_train.log", work)
    else:
        _log("BraTS: reusing the nnU-Net throwaway model")

    # autoseg: plan, preprocess 3d_fullres only, train 1 epoch x 2 iterations
    datasets = [d.name for d in as_ws.iterdir() if (d / "plans.json").is_file()] if as_ws.is_dir() else []
    as_dataset = datasets[0] if len(datasets) == 1 else None
    if as_dataset is None or not autoseg_checkpoint(as_ws, as_dataset, config).is_file():
        _log("BraTS: autoseg plan + preprocess (throwaway model) ...")
        if as_ws.exists():
            shutil.rmtree(as_ws)
        log = work / "logs" / "brats_autoseg_train.log"
        t0 = time.perf_counter()
        _nnunet._run_measured([sys.executable, "-m", "autoseg", "plan", str(BRATS), "-w", str(as_ws),
                               "--no-preprocess"], _nnunet._clean_env(), log, work)
        datasets = [d.name for d in as_ws.iterdir() if (d / "plans.json").is_file()]
        if len(datasets) != 1:
            raise RuntimeError(f"{as_ws}: expected one planned dataset, found {datasets}")
        as_dataset = datasets[0]
        _nnunet._run_measured([sys.executable, "-m", "autoseg", "preprocess", as_dataset, "-w", str(as_ws),
                               "-c", config, "-j", "2"], _nnunet._clean_env(), log, work)
        setup["autoseg_plan_preprocess_s"] = time.perf_counter() - t0
        _log("BraTS: autoseg train 1 epoch x 2 iterations ...")
        setup["autoseg_train"] = _nnunet._run_measured(
            [sys.executable, "-m", "autoseg", "train", as_dataset, "-w", str(as_ws), "-c", config, "-f", "0",
             "--overwrite", "--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1",
             "--no-validation"], _nnunet._clean_env(), log, work)
    else:
        _log("BraTS: reusing the autoseg throwaway model")

    # the case: nnU-Net's converted channel files, for both tools
    raw = sorted((nn_root / "nnUNet_raw").glob(f"Dataset{BRATS_ID:03d}_*/imagesTr"))[0]
    first = sorted(raw.glob(f"*_0000{ENDING}"))[0]
    case = first.name[:-len(f"_0000{ENDING}")]
    files = sorted(raw.glob(f"{case}_[0-9][0-9][0-9][0-9]{ENDING}"))
    inp = work / "inputs" / "brats"
    _link_inputs({case: files}, inp / "autoseg_1", inp / "nnunet_1", False)
    timing = time_both(python, label="brats", as_ws=as_ws, as_dataset=as_dataset, nn_work=root,
                       dataset_id=BRATS_ID, config=config, inputs={"n": (inp / "autoseg_1", inp / "nnunet_1", 1)},
                       precision=args.autoseg_precision, work=work, repeats=args.repeats, modes=tuple(args.modes))
    labels = json.loads((as_ws / as_dataset / "plans.json").read_text())["labels"]
    size = list(_header(files[0]).GetSize())
    res = _with_agreement(timing, [case], {case: files[0]}, labels,
                          {"dataset": as_dataset, "config": config, "cases": 1, "case_ids": [case],
                           "image_size_xyz": size, "channels": len(files), "setup": setup,
                           "note": "throwaway models (1 epoch x 2 iterations): label agreement is meaningless"})
    return res


# --------------------------------------------------------------------------- report


def _num(v, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}s}"


def _geom_text(g: dict | None) -> str:
    if g is None:
        return "-"
    return "exact" if g["exact"] else f"DIFFERS (max {g['max_abs_diff']:.2g})"


def _table(title: str, res: dict) -> str:
    lines = [f"\n== {title}: {res['dataset']} {res['config']}, {res['cases']} case(s) ==",
             f"{'mode':7s} {'tool':8s} {'s/case':>8s} {'1-case s':>9s} {'marginal':>9s} {'start-up':>9s} "
             f"{'tree RSS MB':>12s} {'tree PSS MB':>12s} {'max proc MB':>12s}"]
    for mode in res["timing"]:
        for tool in ("autoseg", "nnunet"):
            s = res["timing"][mode].get(tool, {})
            if not _ok(s.get("n")):
                lines.append(f"{mode:7s} {tool:8s} FAILED: {s.get('n', {}).get('error', 'not run')}")
                continue
            one = s["1"]["wall_seconds"] if _ok(s.get("1")) else None
            runs = [s["n"]] + ([s["1"]] if _ok(s.get("1")) else [])
            lines.append(
                f"{mode:7s} {tool:8s} {s['n']['s_per_case']:8.2f} {_num(one, 9, 1)} "
                f"{_num(s.get('marginal_s_per_case'), 9, 2)} {_num(s.get('startup_s'), 9, 1)} "
                f"{max(r['peak_tree_rss_mb'] for r in runs):12.0f} {max(r['peak_tree_pss_mb'] for r in runs):12.0f} "
                f"{max(r['peak_rss_mb'] for r in runs):12.0f}")
        a, b = res["timing"][mode]["autoseg"].get("n"), res["timing"][mode]["nnunet"].get("n")
        if _ok(a) and _ok(b):
            lines.append(f"{mode:7s} nnU-Net / autoseg (s/case): {b['s_per_case'] / a['s_per_case']:.2f}x")
    for mode, ag in res["agreement"].items():
        text = f"{mode:7s} "
        if "dice" in ag:
            dice = ", ".join(f"{k} {v:.3f}" for k, v in ag["dice"].items())
            text += f"Dice autoseg vs nnU-Net: {dice}; equal voxels {ag['equal_voxel_fraction']:.4f}; "
        text += (f"output geometry = input: autoseg {_geom_text(ag.get('autoseg_geometry'))}, "
                 f"nnU-Net {_geom_text(ag.get('nnunet_geometry'))}")
        lines.append(text)
        for p in (ag.get("autoseg_geometry") or {}).get("problems", []):
            lines.append(f"        autoseg: {p}")
    if "note" in res:
        lines.append(f"note: {res['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/predict_bench"))
    ap.add_argument("--models", type=Path, default=Path("/tmp/train_bench"),
                    help="work dir of train_vs_nnunet.py (autoseg_ws/ and nnunet/), read only")
    ap.add_argument("--cases", type=int, default=10, help="first N images of imagesTs; 0 = all")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per tool and mode (fastest kept)")
    ap.add_argument("--autoseg-precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--brats", action="store_true", help="also the BraTS one-case large-image check")
    ap.add_argument("--no-hippocampus", action="store_true", help="skip the Hippocampus part (with --brats)")
    ap.add_argument("--modes", nargs="+", choices=[m for m, _ in MODES], default=[m for m, _ in MODES],
                    help="BraTS: which prediction modes to time (TTA is 8 passes: 8x the time on a CPU)")
    args = ap.parse_args(argv)

    work = args.work_dir.resolve()
    models = args.models.resolve()
    if models == work or models in work.parents:
        print(f"--work-dir {work} must not be inside --models {models} (models are read only)")
        return 2
    if not args.no_hippocampus:
        if not (HIPPO / "dataset.json").is_file():
            print(f"{HIPPO} not found: nothing to benchmark")
            return 1
        problems = check_hippo_models(models, args.config)
        if problems:
            for p in problems:
                print(p)
            print(f"train first with benchmarks/train_vs_nnunet.py --mode budget (its --work-dir is --models, "
                  f"here {models})")
            return 2
    if args.brats and not (BRATS / "dataset.json").is_file():
        print(f"{BRATS} not found: cannot run --brats")
        return 1
    work.mkdir(parents=True, exist_ok=True)
    python = _nnunet.ensure_nnunet_venv()
    T.install_trainer(python)  # nnUNetv2_predict looks the trainer class up by name

    report: dict = {"autoseg_precision": args.autoseg_precision,
                    "autoseg_precision_resolved": _resolved_precision(args.autoseg_precision),
                    "nnunet_precision": "fp32 (nnU-Net autocasts on CUDA only)",
                    "nnunet_args": "-npp 2 -nps 2 -device cpu", "repeats": args.repeats}
    if not args.no_hippocampus:
        report["hippocampus"] = hippocampus(python, args, work)
        (work / "report.json").write_text(json.dumps(report, indent=2))
    if args.brats:
        report["brats"] = brats(python, args, work)
    (work / "report.json").write_text(json.dumps(report, indent=2))

    print(f"\nautoseg precision {report['autoseg_precision_resolved']} ({args.autoseg_precision}), "
          f"nnU-Net fp32; s/case = wall / cases (start-up included); marginal = (wall_N - wall_1)/(N - 1); "
          f"start-up = wall_1 - marginal; memory: peak of the summed RSS of the process tree (shared library "
          f"pages counted once per process), of the summed PSS (shared pages split), and the largest single process")
    if "hippocampus" in report:
        print(_table("Hippocampus", report["hippocampus"]))
    if "brats" in report:
        print(_table("BraTS large image", report["brats"]))
    print(f"\nwrote {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
