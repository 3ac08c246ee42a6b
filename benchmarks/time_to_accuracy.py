"""Time to accuracy: README's user path on a raw dataset with one wall-clock budget for the whole training run.

    .venv/bin/python benchmarks/time_to_accuracy.py RAW --budget 20 [--test-images DIR] [--roi DIR] [--out DIR]
                                                    [--arm plan|uniform|both] [--device cpu]

``RAW`` is a raw dataset folder, or the name of one under ``../shared/data`` (``Task04_Hippocampus``). Arms:

* ``plan`` (default, the README path): ``autoseg plan RAW --budget T``, ``autoseg train DATASET`` (it follows the
  run plan), ``autoseg predict DATASET -i TEST -o OUT/predictions`` with what the run selected (``best.json``);
* ``uniform`` (the behaviour before run plans, for comparison at the same T on the same machine): ``autoseg plan
  RAW`` (nnU-Net's memory-only plans), ``autoseg train DATASET --budget T --allocation uniform`` (T split evenly
  over every configuration x fold), ``autoseg predict``;
* ``both``: ``plan`` then ``uniform``, one after the other.

Each arm writes its test predictions to ``OUT/predictions`` (default OUT: ``benchmarks/results/<dataset>_<T>min``,
``..._uniform`` for the uniform arm) and ``OUT/<dataset>_<T>min.txt``: the commands, the wall time of every stage,
per trained fold its configuration, iterations (epochs x iterations per epoch), training minutes and validation
Dice, the cross-validation / selection table where it exists (``best.json``), and the run plan. ``plans.json``,
``run_plan.json`` and ``best.json`` are copied beside it. The workspace is ``OUT/workspace`` (removed at the end
unless ``--keep``). The hidden test labels are not read: the project owners score the predictions.

Long on real data (run it in the background, one at a time, on a quiet machine); a smoke run on the synthetic
tiny dataset takes a few minutes:

    .venv/bin/autoseg demo --make-data /tmp/tiny_raw --kind tiny
    .venv/bin/python benchmarks/time_to_accuracy.py /tmp/tiny_raw --budget 1.5 --out /tmp/tta_tiny
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


class Log:
    """Lines of the result file, also printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(text.splitlines() or [""])


def autoseg(log: Log, output: list[str], *args: str) -> float:
    """Run one autoseg command (its output streamed, kept in ``output``); returns its wall time, s."""
    log(f"$ autoseg {' '.join(args)}")
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-m", "autoseg", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            output.append(line.rstrip())
            print(line, end="", flush=True)
    if proc.returncode:
        log(f"autoseg {args[0]} failed with exit code {proc.returncode}")
        raise SystemExit(proc.returncode)
    return time.perf_counter() - t0


def resolve_raw(name: str) -> Path:
    path = Path(name)
    if (path / "dataset.json").is_file():
        return path
    if (SHARED / name / "dataset.json").is_file():
        return SHARED / name
    raise SystemExit(f"{name}: no dataset.json here nor under {SHARED}")


def fold_rows(ws: Path, dataset: str) -> list[str]:
    """One line per trained fold: configuration, fold, epochs x iterations, training minutes, validation Dice."""
    from autoseg.nn.checkpoint import load_checkpoint
    from autoseg.schema.base import load_json
    from autoseg.schema.evaluation import EvaluationSummary
    from autoseg.training.automl import read_log, trained_minutes
    from autoseg.workspace import Workspace

    paths = Workspace(ws).dataset(dataset)
    rows = [f"{'configuration':20s} {'fold':>4s} {'iterations':>18s} {'train min':>9s}  validation Dice"]
    models = paths.root / "models"
    for config in sorted(p.name for p in models.iterdir()) if models.is_dir() else []:
        for fold in paths.trained_folds(config):
            folder = paths.fold(config, fold)
            state = json.loads(load_checkpoint(folder.final_checkpoint)["state"])
            its = f"{state['epoch']} x {state['iterations_per_epoch']} = {state['epoch'] * state['iterations_per_epoch']}"
            dice = "-"
            if folder.validation_summary.is_file():
                s = load_json(EvaluationSummary, folder.validation_summary)
                dice = ", ".join(f"{s.label_names.get(k, k)} {m.dice:.4f}" for k, m in s.mean.items()
                                 if m.dice is not None) + f" ({len(s.cases)} cases)"
            stop = f"  [{state['stop_reason']}]" if state.get("stop_reason") else ""
            rows.append(f"{config:20s} {fold:>4s} {its:>18s} {trained_minutes(read_log(folder)):9.1f}  {dice}{stop}")
    return rows


def run_arm(arm: str, raw: Path, budget: float, test: Path, roi: Path | None, out: Path, device: str,
            keep: bool) -> None:
    from autoseg.io.dataset_json import read_dataset_spec

    dataset = read_dataset_spec(raw).name
    shutil.rmtree(out / "predictions", ignore_errors=True)
    shutil.rmtree(out / "workspace", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ws = out / "workspace"
    log, output = Log(), []
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    log(f"# benchmarks/time_to_accuracy.py {raw} --budget {budget:g} --arm {arm} on "
        f"{datetime.date.today().isoformat()} ({platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores), commit {head}")
    log(f"# dataset {dataset}; test images {test}" + (f"; regions of interest {roi}" if roi else ""))
    times = {}
    t_all = time.perf_counter()
    if arm == "plan":
        times["plan (+ preprocess)"] = autoseg(log, output, "plan", str(raw), "-w", str(ws), "--budget",
                                               f"{budget:g}", "--device", device)
        times["train (run plan)"] = autoseg(log, output, "train", dataset, "-w", str(ws), "--device", device)
    else:
        times["plan (+ preprocess)"] = autoseg(log, output, "plan", str(raw), "-w", str(ws), "--device", device)
        times["train (uniform split)"] = autoseg(log, output, "train", dataset, "-w", str(ws), "--budget",
                                                 f"{budget:g}", "--allocation", "uniform", "--device", device)
    predict = ["predict", dataset, "-w", str(ws), "-i", str(test), "-o", str(out / "predictions"), "--device",
               device]
    if roi is not None:
        predict += ["--roi", str(roi)]
    times["predict test images"] = autoseg(log, output, *predict)
    total = time.perf_counter() - t_all

    log("\n## wall time per stage")
    for stage, seconds in times.items():
        log(f"  {stage:24s} {seconds / 60:7.1f} min")
    log(f"  {'all':24s} {total / 60:7.1f} min (the budget, {budget:g} min, is the training run's)")
    log("\n## trained folds")
    for row in fold_rows(ws, dataset):
        log("  " + row)
    paths = ws / dataset
    if (paths / "best.json").is_file():
        from autoseg.evaluation.selection import selection_table
        from autoseg.schema.base import load_json
        from autoseg.schema.selection import BestChoice, Postprocessing

        best = load_json(BestChoice, paths / "best.json")
        pp = (load_json(Postprocessing, paths / best.postprocessing_file) if best.postprocessing_file else None)
        log("\n## selection (best.json)" + (f": scored on the {best.basis}" if best.basis
                                            else ": cross-validation of every case"))
        log(selection_table(best, pp))
    if (paths / "run_plan.json").is_file():
        from autoseg.planning.run_plan import run_plan_table
        from autoseg.schema.base import load_json
        from autoseg.schema.run_plan import RunPlan

        log("\n## run plan (as it ended: probes' winner filled in)")
        log(run_plan_table(load_json(RunPlan, paths / "run_plan.json")))
    elif any(line.startswith("training plan for") for line in output):
        log("\n## training plan (budget split evenly)")
        start = next(i for i, line in enumerate(output) if line.startswith("training plan for"))
        end = next((i for i in range(start, len(output)) if not output[i].strip()), len(output))
        log("\n".join(output[start:end]))
    n_pred = len(list((out / "predictions").glob("*"))) if (out / "predictions").is_dir() else 0
    log(f"\n## test predictions: {n_pred} file(s) in {out / 'predictions'}")
    for name in ("plans.json", "run_plan.json", "best.json", "postprocessing.json"):
        if (paths / name).is_file():
            shutil.copy2(paths / name, out / name)
    (out / f"{dataset}_{budget:g}min{'' if arm == 'plan' else '_' + arm}.txt").write_text("\n".join(log.lines) + "\n")
    (out / "autoseg_output.log").write_text("\n".join(output) + "\n")
    if not keep:
        shutil.rmtree(ws, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="raw dataset folder, or its name under ../shared/data")
    ap.add_argument("--budget", type=float, required=True, help="minutes of wall clock for the whole training run")
    ap.add_argument("--test-images", type=Path, default=None, help="images to predict (default: RAW/imagesTs)")
    ap.add_argument("--roi", type=Path, default=None, help="their regions of interest (predict --roi)")
    ap.add_argument("--out", type=Path, default=None,
                    help="result folder (default: benchmarks/results/<dataset>_<T>min, _uniform for that arm)")
    ap.add_argument("--arm", choices=("plan", "uniform", "both"), default="plan")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the workspace (OUT/workspace)")
    args = ap.parse_args()
    raw = resolve_raw(args.raw)
    from autoseg.io.dataset_json import read_dataset_spec

    dataset = read_dataset_spec(raw).name
    test = args.test_images or raw / "imagesTs"
    if not test.is_dir():
        raise SystemExit(f"{test}: no test image folder (give --test-images)")
    for arm in (("plan", "uniform") if args.arm == "both" else (args.arm,)):
        suffix = "" if arm == "plan" else f"_{arm}"
        out = (args.out / arm if args.arm == "both" else args.out) if args.out else \
            ROOT / "benchmarks" / "results" / f"{dataset}_{args.budget:g}min{suffix}"
        run_arm(arm, raw, args.budget, test, args.roi, out, args.device, args.keep)


if __name__ == "__main__":
    main()
