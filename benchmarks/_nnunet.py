"""Helpers to run nnU-Net v2 side by side with autoseg in benchmarks.

nnU-Net lives in its own virtualenv (default ``/work/nnunet_venv``) and is only ever
driven through subprocesses, so this module imports with the standard library alone
(nnunetv2 / torch are never imported into the calling interpreter, and the caller's
``os.environ`` is never modified).

Facts about running nnU-Net v2 on this CPU machine (pins, torchvision patch, worker
variables) are in ``/work/shared/peers/NNUNET_ON_CPU.md``.

Public API
----------
ensure_nnunet_venv(path) -> Path               python of a working nnU-Net venv (creates it if needed)
plan_with_nnunet(msd_dir, work_dir, dataset_id, ...) -> dict
                                               MSD conversion + fingerprint/planning, timed
summarize_nnunet_plans(plans) -> dict          compact per-configuration view of nnUNetPlans.json

Run ``python benchmarks/_nnunet.py`` to plan Task04_Hippocampus (id 4) and
BraTS2015_DeepMedicSubset (id 5) under /tmp/nnunet_bench and print the summaries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

TORCH_VERSION = "2.13.0"
NNUNET_VERSION = "2.8.1"
DEFAULT_VENV = Path("/work/nnunet_venv")

# Marker written into torchvision/__init__.py by the CPU patch (idempotence check).
_TV_PATCH_MARKER = "# autoseg-benchmark patch: registrations only with compiled ops"
_TV_ORIGINAL = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
_TV_PATCHED = f"""{_TV_PATCH_MARKER}
if extension._has_ops():
    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401
from torchvision import (
    datasets,"""

_VERIFY_SNIPPET = (
    "import torch, torchvision, nnunetv2\n"
    "from nnunetv2.experiment_planning.plan_and_preprocess_api import *\n"
    f"assert torch.__version__.split('+')[0] == {TORCH_VERSION!r}, torch.__version__\n"
    "assert torch.version.cuda is None, 'CUDA build of torch: ' + torch.__version__\n"
    "import importlib.metadata as m\n"
    f"assert m.version('nnunetv2') == {NNUNET_VERSION!r}, m.version('nnunetv2')\n"
    "print('ok', torch.__version__, torchvision.__version__, m.version('nnunetv2'))\n"
)


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[nnunet] {msg}", flush=True)


def _clean_env(extra: dict | None = None) -> dict:
    """A copy of the caller's environment, stripped of anything that would leak the
    caller's interpreter into the venv's processes. The caller's os.environ is untouched."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PIP_USER",
                "PIP_TARGET", "PIP_PREFIX", "CONDA_PREFIX", "__PYVENV_LAUNCHER__"):
        env.pop(key, None)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_works(python: Path) -> tuple[bool, str]:
    if not python.exists():
        return False, f"{python} missing"
    r = subprocess.run([str(python), "-c", _VERIFY_SNIPPET], capture_output=True, text=True,
                       env=_clean_env(), cwd="/")
    out = (r.stdout + r.stderr).strip()
    return r.returncode == 0, (out.splitlines()[-1] if out else f"rc={r.returncode}")


def _installed_version(python: Path, dist: str) -> str | None:
    r = subprocess.run([str(python), "-c",
                        f"import importlib.metadata as m; print(m.version({dist!r}))"],
                       capture_output=True, text=True, env=_clean_env(), cwd="/")
    return r.stdout.strip() if r.returncode == 0 else None


def _pip(python: Path, args: list[str], env_extra: dict | None = None) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    _log("$ " + " ".join(cmd) + (f"   (env {env_extra})" if env_extra else ""))
    subprocess.run(cmd, check=True, env=_clean_env(env_extra), cwd="/")


def patch_torchvision(venv: Path) -> bool:
    """NNUNET_ON_CPU.md point 2: the PyPI torchvision wheel is a CUDA build whose
    ``import`` fails next to the CPU torch ("operator torchvision::nms does not exist").
    Import ``_autograd_registrations``/``_meta_registrations`` only when the compiled ops
    loaded. Idempotent; only ever touches the benchmark venv. Returns True if it changed
    the file."""
    inits = sorted(Path(venv).glob("lib/python*/site-packages/torchvision/__init__.py"))
    if not inits:
        raise FileNotFoundError(f"torchvision not installed in {venv}")
    changed = False
    for init in inits:
        text = init.read_text()
        if _TV_PATCH_MARKER in text:
            continue
        if _TV_ORIGINAL not in text:
            raise RuntimeError(f"{init}: unexpected torchvision/__init__.py layout, cannot patch")
        init.write_text(text.replace(_TV_ORIGINAL, _TV_PATCHED, 1))
        for pyc in (init.parent / "__pycache__").glob("__init__.*.pyc"):
            pyc.unlink()
        _log(f"patched {init}")
        changed = True
    return changed


def ensure_nnunet_venv(path: str | os.PathLike = DEFAULT_VENV) -> Path:
    """Return the python of a working nnU-Net v2 venv at ``path``; create/repair it if needed.

    Steps (each skipped when already done): ``python3 -m venv``; ``pip install
    torch==2.13.0`` (CPU wheel); ``pip install nnunetv2==2.8.1`` with ``PIP_CONSTRAINT``
    pointing to a file holding ``torch==2.13.0`` (it overrides the global constraint of
    /etc/xdg/pip/pip.conf and keeps pip from swapping in a CUDA torch); torchvision patch.
    Everything runs in subprocesses with a copied environment."""
    venv = Path(path)
    python = _venv_python(venv)
    if python.exists():
        try:
            patch_torchvision(venv)  # cheap, idempotent; needed for a fresh install too
        except FileNotFoundError:
            pass
    ok, msg = _venv_works(python)
    if ok:
        _log(f"venv OK: {python} ({msg})")
        return python
    _log(f"venv at {venv} not usable ({msg}); installing")

    if not python.exists():
        # the base interpreter (not a venv's), so the new venv does not chain on the caller's
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
        _log(f"$ {base} -m venv {venv}")
        subprocess.run([base, "-m", "venv", str(venv)], check=True, env=_clean_env(), cwd="/")

    if (_installed_version(python, "torch") or "").split("+")[0] != TORCH_VERSION:
        _pip(python, [f"torch=={TORCH_VERSION}"])

    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    if _installed_version(python, "nnunetv2") != NNUNET_VERSION:
        _pip(python, [f"nnunetv2=={NNUNET_VERSION}"], {"PIP_CONSTRAINT": str(constraints)})

    torch_v = (_installed_version(python, "torch") or "")
    if torch_v.split("+")[0] != TORCH_VERSION or "cu" in torch_v.split("+")[-1]:
        raise RuntimeError(f"torch in {venv} is {torch_v!r}, expected {TORCH_VERSION} CPU")
    patch_torchvision(venv)

    ok, msg = _venv_works(python)
    if not ok:
        raise RuntimeError(f"nnU-Net venv {venv} still broken after install: {msg}")
    _log(f"venv ready: {python} ({msg})")
    return python


# --------------------------------------------------------------------------- processes


def _tree_rss_kb(root_pid: int, field: str = "VmRSS") -> int:
    """Sum of VmRSS (kB) of root_pid and all its descendants, from /proc. ``field="Pss"``: the sum of the
    proportional set sizes instead (from smaps_rollup; pages shared between processes counted once in total)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/status" if field == "VmRSS" else f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def _run_measured(cmd: list[str], env: dict, log_path: Path, cwd: Path, pss: bool = False) -> dict:
    """Run cmd, return wall seconds, peak RSS of the largest single process in its tree
    (kernel rusage via wait4 -- same figure as ``/usr/bin/time -v``) and the peak of the
    summed RSS of the whole process tree (sampled from /proc every 0.2 s). ``pss``: also
    ``peak_tree_pss_mb``, the sampled peak of the summed PSS of the tree (shared pages, e.g.
    the torch libraries every worker maps, counted once instead of once per process)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=log, stderr=subprocess.STDOUT)
        peak_tree = [0]
        peak_pss = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak_tree[0] = max(peak_tree[0], _tree_rss_kb(proc.pid))
                if pss:
                    peak_pss[0] = max(peak_pss[0], _tree_rss_kb(proc.pid, "Pss"))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise subprocess.CalledProcessError(proc.returncode, cmd, output=tail)
    out = {"wall_seconds": wall, "peak_rss_mb": rusage.ru_maxrss / 1024.0,
           "peak_tree_rss_mb": peak_tree[0] / 1024.0}
    if pss:
        out["peak_tree_pss_mb"] = peak_pss[0] / 1024.0
    return out


# --------------------------------------------------------------------------- planning


def _stage_msd_folder(msd_dir: Path, work_dir: Path, dataset_id: int) -> tuple[Path, list[str]]:
    """nnUNetv2_convert_MSD_dataset insists on (a) a folder named ``TaskXX_Name`` with a
    single underscore (it does ``task, name = basename.split('_')`` and ``int(task[4:])``
    even with -overwrite_id) and (b) an ``imagesTs`` folder. When the source does not
    comply, build a staging folder of symlinks (source data stays read-only)."""
    quirks: list[str] = []
    name = msd_dir.name
    ok_name = re.fullmatch(r"Task\d+_[^_]+", name) is not None
    has_ts = (msd_dir / "imagesTs").is_dir()
    if ok_name and has_ts:
        return msd_dir, quirks
    if not ok_name:
        quirks.append(f"folder name {name!r} is not TaskXX_Name (converter splits on '_'); staged")
    if not has_ts:
        quirks.append("no imagesTs/ (converter asserts it exists); staged with an empty imagesTs")
    short = name.split("_", 1)[1] if ok_name else name
    short = re.sub(r"[^A-Za-z0-9]", "", short) or "Dataset"
    stage = work_dir / "_msd_staging" / f"Task{dataset_id:02d}_{short}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for entry in ("imagesTr", "labelsTr", "imagesTs", "dataset.json"):
        src = msd_dir / entry
        if src.exists():
            (stage / entry).symlink_to(src.resolve())
    if not (stage / "imagesTs").exists():
        (stage / "imagesTs").mkdir()
    return stage, quirks


def _remove_dataset_id(dirs: list[Path], dataset_id: int) -> None:
    for d in dirs:
        if d.is_dir():
            for p in d.glob(f"Dataset{dataset_id:03d}_*"):
                shutil.rmtree(p)


def plan_with_nnunet(msd_dir: Path, work_dir: Path, dataset_id: int, num_proc: int = 2,
                     configurations=("2d", "3d_fullres", "3d_lowres"), preprocess: bool = False,
                     gpu_memory_gb: float | None = None, verify_dataset_integrity: bool = False,
                     venv: str | os.PathLike = DEFAULT_VENV) -> dict:
    """Convert an MSD folder and run nnU-Net v2 fingerprint extraction + experiment planning
    (+ preprocessing of ``configurations`` if ``preprocess``) with ``num_proc`` workers.

    Everything nnU-Net writes goes to ``work_dir/nnUNet_{raw,preprocessed,results}``; any
    existing DatasetNNN_* for ``dataset_id`` there is deleted first, so calls are repeatable.
    Returns {"wall_seconds": {"convert", "plan"}, "plans", "fingerprint", "peak_rss_mb",
    "peak_tree_rss_mb", "rss_mb_by_step", "dataset_name", "paths", "quirks", "command"}.
    ``plan`` = fingerprint + planning (+ preprocessing if requested), timed apart from the
    conversion. ``peak_rss_mb`` is the largest single process of the plan step (kernel
    maxrss, like /usr/bin/time -v); ``peak_tree_rss_mb`` the sampled peak of the summed RSS
    of the plan step's whole process tree (main process + workers)."""
    msd_dir = Path(msd_dir).resolve()
    work_dir = Path(work_dir).resolve()
    python = ensure_nnunet_venv(venv)
    bindir = python.parent
    raw, pre, res = (work_dir / "nnUNet_raw", work_dir / "nnUNet_preprocessed",
                     work_dir / "nnUNet_results")
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    _remove_dataset_id([raw, pre, res], dataset_id)
    env = _clean_env({
        "nnUNet_raw": raw, "nnUNet_preprocessed": pre, "nnUNet_results": res,
        "nnUNet_n_proc_DA": num_proc, "nnUNet_def_n_proc": num_proc, "nnUNet_compile": "f",
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    log_path = work_dir / "logs" / f"Dataset{dataset_id:03d}.log"
    if log_path.exists():
        log_path.unlink()

    source, quirks = _stage_msd_folder(msd_dir, work_dir, dataset_id)
    for q in quirks:
        _log(f"quirk: {q}")

    convert_cmd = [str(bindir / "nnUNetv2_convert_MSD_dataset"), "-i", str(source),
                   "-overwrite_id", str(dataset_id), "-np", str(num_proc)]
    _log(f"converting {msd_dir.name} -> id {dataset_id}")
    conv = _run_measured(convert_cmd, env, log_path, work_dir)
    _log(f"  convert {conv['wall_seconds']:.1f} s")

    found = sorted(raw.glob(f"Dataset{dataset_id:03d}_*"))
    if len(found) != 1:
        raise RuntimeError(f"expected one converted dataset for id {dataset_id}, found {found}")
    dataset_name = found[0].name

    plan_cmd = [str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id),
                "-np", str(num_proc), "-npfp", str(num_proc), "--no_pbar"]
    if not preprocess:
        plan_cmd.append("--no_pp")
    else:
        plan_cmd += ["-c", *configurations]
    if verify_dataset_integrity:
        plan_cmd.append("--verify_dataset_integrity")
    if gpu_memory_gb is not None:
        plan_cmd += ["-gpu_memory_target", str(gpu_memory_gb)]
    _log("planning: " + " ".join(plan_cmd[1:]))
    plan = _run_measured(plan_cmd, env, log_path, work_dir)
    _log(f"  fingerprint+plan{'+preprocess' if preprocess else ''} {plan['wall_seconds']:.1f} s, "
         f"peak RSS {plan['peak_rss_mb']:.0f} MB (largest process), "
         f"{plan['peak_tree_rss_mb']:.0f} MB (tree)")

    plans_path = pre / dataset_name / "nnUNetPlans.json"
    fp_path = pre / dataset_name / "dataset_fingerprint.json"
    return {
        "dataset_name": dataset_name,
        "wall_seconds": {"convert": conv["wall_seconds"], "plan": plan["wall_seconds"]},
        "plans": json.loads(plans_path.read_text()),
        "fingerprint": json.loads(fp_path.read_text()),
        "peak_rss_mb": plan["peak_rss_mb"],
        "peak_tree_rss_mb": plan["peak_tree_rss_mb"],
        "rss_mb_by_step": {"convert": {k: conv[k] for k in ("peak_rss_mb", "peak_tree_rss_mb")},
                           "plan": {k: plan[k] for k in ("peak_rss_mb", "peak_tree_rss_mb")}},
        "paths": {"plans": str(plans_path), "fingerprint": str(fp_path),
                  "dataset_json": str(raw / dataset_name / "dataset.json"), "log": str(log_path)},
        "quirks": quirks,
        "command": " ".join(plan_cmd[1:]),
    }


# --------------------------------------------------------------------------- summaries


def _resolve_configuration(configs: dict, name: str, seen: tuple = ()) -> dict:
    """Same rule as nnU-Net's PlansManager: parent dict updated with the child's keys."""
    cfg = dict(configs[name])
    parent = cfg.get("inherits_from")
    if parent is None:
        return cfg
    if parent in seen + (name,):
        raise RuntimeError(f"circular inherits_from: {seen + (name, parent)}")
    base = _resolve_configuration(configs, parent, seen + (name,))
    base.update(cfg)
    return base


def _poolings_per_axis(strides, ndim: int) -> list[int]:
    counts = [0] * ndim
    for s in strides:
        s = [s] * ndim if isinstance(s, (int, float)) else list(s)
        for ax, v in enumerate(s):
            if v == 2:
                counts[ax] += 1
    return counts


def summarize_nnunet_plans(plans: dict) -> dict:
    """Compact view of an nnUNetPlans.json: per configuration name ->
    spacing, patch_size, batch_size, poolings_per_axis (number of stride-2 steps per axis
    from architecture.arch_kwargs.strides), n_stages, features_per_stage, normalization,
    use_mask_for_norm (+ inherits_from / previous_stage for the cascade, which is resolved
    against its parent like nnU-Net does); plus top-level transpose_forward/backward."""
    configs = plans.get("configurations", {})
    out: dict = {"transpose_forward": plans.get("transpose_forward"),
                 "transpose_backward": plans.get("transpose_backward"),
                 "configurations": {}}
    for name in configs:
        cfg = _resolve_configuration(configs, name)
        arch = cfg.get("architecture", {})
        kw = arch.get("arch_kwargs", {})
        patch = list(cfg.get("patch_size", []))
        strides = kw.get("strides", [])
        entry = {
            "spacing": list(cfg.get("spacing", [])),
            "patch_size": patch,
            "batch_size": int(cfg["batch_size"]) if "batch_size" in cfg else None,
            "poolings_per_axis": _poolings_per_axis(strides, len(patch)),
            "n_stages": int(kw["n_stages"]) if "n_stages" in kw else len(strides),
            "features_per_stage": list(kw.get("features_per_stage", [])),
            "normalization": list(cfg.get("normalization_schemes", [])),
            "use_mask_for_norm": list(cfg.get("use_mask_for_norm", [])),
        }
        if "inherits_from" in configs[name]:
            entry["inherits_from"] = configs[name]["inherits_from"]
            if "previous_stage" in cfg:
                entry["previous_stage"] = cfg["previous_stage"]
        out["configurations"][name] = entry
    return out


def format_summary(summary: dict) -> str:
    lines = [f"transpose_forward={summary['transpose_forward']} "
             f"transpose_backward={summary['transpose_backward']}"]
    for name, c in summary["configurations"].items():
        extra = (f" (inherits {c['inherits_from']}, previous_stage {c.get('previous_stage')})"
                 if "inherits_from" in c else "")
        lines.append(
            f"  {name}{extra}: spacing={[round(s, 4) for s in c['spacing']]} patch={c['patch_size']} "
            f"batch={c['batch_size']} pool/axis={c['poolings_per_axis']} stages={c['n_stages']} "
            f"features={c['features_per_stage']} norm={c['normalization']} "
            f"mask_for_norm={c['use_mask_for_norm']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    import argparse

    data = Path("/work/shared/data")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/nnunet_bench"))
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--preprocess", action="store_true")
    p.add_argument("--verify", action="store_true", help="--verify_dataset_integrity")
    p.add_argument("--copy-ref", type=Path, default=None,
                   help="copy nnUNetPlans.json / dataset_fingerprint.json to DIR/<dataset>/")
    args = p.parse_args(argv)

    jobs = [(data / "Task04_Hippocampus", 4), (data / "BraTS2015_DeepMedicSubset", 5)]
    results = {}
    for msd, did in jobs:
        if not msd.is_dir():
            _log(f"skip {msd}: not found")
            continue
        r = plan_with_nnunet(msd, args.work_dir, did, num_proc=args.num_proc,
                             preprocess=args.preprocess, verify_dataset_integrity=args.verify)
        results[msd.name] = r
        if args.copy_ref:
            dst = args.copy_ref / msd.name
            dst.mkdir(parents=True, exist_ok=True)
            for key in ("plans", "fingerprint", "dataset_json"):
                shutil.copy2(r["paths"][key], dst)
    for name, r in results.items():
        w = r["wall_seconds"]
        print(f"\n== {name} ({r['dataset_name']}) ==")
        print(f"wall: convert {w['convert']:.1f} s, fingerprint+plan {w['plan']:.1f} s; "
              f"peak RSS {r['peak_rss_mb']:.0f} MB largest process / "
              f"{r['peak_tree_rss_mb']:.0f} MB process tree")
        if r["quirks"]:
            print("quirks: " + "; ".join(r["quirks"]))
        print(format_summary(summarize_nnunet_plans(r["plans"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
