"""Training speed and budgeted accuracy of autoseg against nnU-Net v2 on Hippocampus, same plans, same machine.

1. Speed: seconds per training iteration (median over a short run, warm-up excluded) for 3d_fullres and 2d,
   both tools alternating; achieved GFLOP/s against the machine's measured matmul peak.
2. Budget: both tools train fold 0 of 3d_fullres for the same wall-clock budget and run their own final
   sliding-window validation; validation Dice per class is reported. nnU-Net gets its own recipe (SGD, poly,
   250 -> ``--nnunet-iterations`` iterations per epoch) with the number of epochs fitted to the budget from its
   measured step time; autoseg uses ``--budget``.

nnU-Net runs from its own virtualenv (``_nnunet.py``); a small trainer subclass (written by this script into that
virtualenv's nnU-Net package, which is the only place nnU-Net looks for trainers) sets the iteration counts and
records per-step times.

Usage::

    .venv/bin/python benchmarks/train_vs_nnunet.py --mode speed
    .venv/bin/python benchmarks/train_vs_nnunet.py --mode budget --budget-minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet  # noqa: E402
from _hardware import matmul_peak_gflops, training_flops  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPO = SHARED / "Task04_Hippocampus"
TRAINER = "nnUNetTrainerAutosegBench"
TRAINER_SOURCE = '''
import json, os, time
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerAutosegBench(nnUNetTrainer):
    """Benchmark trainer written by autoseg's benchmarks/train_vs_nnunet.py: iteration counts from the
    environment, per-step wall times appended to a JSON-lines file, optional skip of the final validation."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = int(os.environ.get("BENCH_ITERS", 250))
        self.num_val_iterations_per_epoch = int(os.environ.get("BENCH_VAL_ITERS", 50))
        self.num_epochs = int(os.environ.get("BENCH_EPOCHS", 1000))
        self.save_every = 10 ** 6
        self._times = os.environ.get("BENCH_TIMES")

    def train_step(self, batch):
        t0 = time.perf_counter()
        out = super().train_step(batch)
        if self._times:
            with open(self._times, "a") as f:
                f.write(json.dumps(time.perf_counter() - t0) + "\\n")
        return out

    def perform_actual_validation(self, save_probabilities=False):
        if os.environ.get("BENCH_NO_VAL") == "1":
            return
        return super().perform_actual_validation(save_probabilities)
'''


def install_trainer(python: Path) -> None:
    out = subprocess.run([str(python), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    target = Path(out) / "training" / "nnUNetTrainer" / "variants" / "benchmarking" / f"{TRAINER}.py"
    if not target.is_file() or target.read_text() != TRAINER_SOURCE:
        target.write_text(TRAINER_SOURCE)


def nnunet_env(work: Path, extra: dict) -> dict:
    env = _nnunet._clean_env({"nnUNet_raw": str(work / "nnunet" / "nnUNet_raw"),
                              "nnUNet_preprocessed": str(work / "nnunet" / "nnUNet_preprocessed"),
                              "nnUNet_results": str(work / "nnunet" / "nnUNet_results"),
                              "nnUNet_n_proc_DA": "2", "nnUNet_def_n_proc": "2", "nnUNet_compile": "f"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_nnunet_train(python: Path, work: Path, config: str, iters: int, epochs: int, val_iters: int,
                     validate: bool, times_file: Path | None) -> dict:
    env = nnunet_env(work, {"BENCH_ITERS": iters, "BENCH_EPOCHS": epochs, "BENCH_VAL_ITERS": val_iters,
                            "BENCH_NO_VAL": "0" if validate else "1", "BENCH_TIMES": times_file or ""})
    if times_file is not None and times_file.exists():
        times_file.unlink()
    cmd = [str(python.parent / "nnUNetv2_train"), "4", config, "0", "-tr", TRAINER, "-device", "cpu"]
    m = _nnunet._run_measured(cmd, env, work / "logs" / f"nnunet_train_{config}.log", work)
    if times_file is not None:
        m["step_times"] = [json.loads(line) for line in times_file.read_text().splitlines()]
    return m


def run_autoseg_train(work: Path, config: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "autoseg", "train", "Hippocampus", "-w", str(work / "autoseg_ws"), "-c", config,
           "-f", "0", "--overwrite", *extra]
    return _nnunet._run_measured(cmd, _nnunet._clean_env(), work / "logs" / f"autoseg_train_{config}.log", work)


def autoseg_step_times(work: Path, config: str) -> list[float]:
    log = work / "autoseg_ws" / "Hippocampus" / "models" / config / "fold_0" / "log.jsonl"
    return [json.loads(line)["step_seconds"] for line in log.read_text().splitlines()]


def flops_per_iteration(config: str, work: Path) -> float:
    """Forward + backward FLOPs of autoseg's network for one batch of the plans (torch's FLOP counter)."""
    from autoseg.api import load_plans
    from autoseg.nn.unet import build_network

    plan = load_plans(work / "autoseg_ws", "Hippocampus").configurations[config]
    return training_flops(build_network(plan.architecture, 1, 3), (plan.batch_size, 1, *plan.patch_size))


def prepare(work: Path) -> Path:
    python = _nnunet.ensure_nnunet_venv()
    install_trainer(python)
    if not (work / "nnunet" / "nnUNet_preprocessed" / "Dataset004_Hippocampus" / "nnUNetPlans_3d_fullres").is_dir():
        print("nnU-Net: plan + preprocess Hippocampus ...", flush=True)
        _nnunet.plan_with_nnunet(HIPPO, work / "nnunet", 4, num_proc=2, configurations=("2d", "3d_fullres"),
                                 preprocess=True)
    if not (work / "autoseg_ws" / "Hippocampus" / "preprocessed" / "3d_fullres").is_dir():
        print("autoseg: plan + preprocess Hippocampus ...", flush=True)
        subprocess.run([sys.executable, "-m", "autoseg", "plan", str(HIPPO), "-w", str(work / "autoseg_ws")],
                       check=True, stdout=subprocess.DEVNULL)
    return python


def speed(python: Path, work: Path, configs: list[str], iterations: int, repeats: int) -> dict:
    results = {}
    peak = matmul_peak_gflops()
    for config in configs:
        ours, theirs = [], []
        for _ in range(repeats):
            t = run_nnunet_train(python, work, config, iterations, 1, 1, False, work / "nnunet_steps.jsonl")
            theirs.append(statistics.median(t["step_times"][3:]))
            run_autoseg_train(work, config, ["--epochs", "2", "--iterations-per-epoch", str(iterations // 2),
                                             "--validation-iterations", "1", "--no-validation", "-j", "1"])
            ours.append(autoseg_step_times(work, config)[-1])  # epoch 2: warm-up is over
        flops = flops_per_iteration(config, work)
        a, b = min(ours), min(theirs)
        results[config] = {"autoseg_s_per_it": a, "nnunet_s_per_it": b, "speedup": b / a, "gflop_per_it": flops / 1e9,
                           "autoseg_gflops": flops / a / 1e9, "nnunet_gflops": flops / b / 1e9}
        print(f"{config}: autoseg {a:.3f} s/it, nnU-Net {b:.3f} s/it -> {b / a:.2f}x; {flops / 1e9:.0f} GFLOP/it: "
              f"autoseg {flops / a / 1e9:.0f} GFLOP/s, nnU-Net {flops / b / 1e9:.0f} GFLOP/s "
              f"(matmul peak fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s)", flush=True)
    results["matmul_peak_gflops"] = peak
    return results


def nnunet_validation_dice(work: Path, config: str) -> dict:
    res = work / "nnunet" / "nnUNet_results" / "Dataset004_Hippocampus"
    summary = next(res.glob(f"{TRAINER}__*__{config}/fold_0/validation/summary.json"))
    data = json.loads(summary.read_text())
    return {k: v["Dice"] for k, v in data["mean"].items()}


def autoseg_validation_dice(work: Path, config: str) -> dict:
    from autoseg.workspace import Workspace

    fold = Workspace(work / "autoseg_ws").dataset("Hippocampus").fold(config, 0)
    data = json.loads(fold.validation_summary.read_text())
    return {data["label_names"].get(k, k): v["dice"] for k, v in data["mean"].items()}


def budget(python: Path, work: Path, config: str, minutes: float, nn_iters: int, nn_step: float | None) -> dict:
    if nn_step is None:
        t = run_nnunet_train(python, work, config, 8, 1, 1, False, work / "nnunet_steps.jsonl")
        nn_step = statistics.median(t["step_times"][3:])
    val_iters = max(1, nn_iters // 5)
    epochs = max(1, int(minutes * 60 // (nn_iters * nn_step + val_iters * nn_step / 3)))
    print(f"nnU-Net: {epochs} epochs x {nn_iters} iterations for {minutes:g} min ({nn_step:.2f} s/it) ...",
          flush=True)
    t0 = time.perf_counter()
    m_nn = run_nnunet_train(python, work, config, nn_iters, epochs, val_iters, True, None)
    nn_total = time.perf_counter() - t0
    print(f"autoseg: --budget {minutes:g} ...", flush=True)
    m_as = run_autoseg_train(work, config, ["--budget", str(minutes)])
    log = [json.loads(line) for line in (work / "autoseg_ws" / "Hippocampus" / "models" / config / "fold_0" /
                                         "log.jsonl").read_text().splitlines()]
    out = {"nnunet": {"epochs": epochs, "iterations": epochs * nn_iters, "wall_s": nn_total,
                      "dice": nnunet_validation_dice(work, config)},
           "autoseg": {"epochs": len(log), "iterations": None, "wall_s": m_as["wall_seconds"],
                       "train_s": sum(e["epoch_seconds"] for e in log),
                       "dice": autoseg_validation_dice(work, config)}}
    print(json.dumps(out, indent=2), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/train_bench"))
    ap.add_argument("--mode", choices=("speed", "budget", "both"), default="speed")
    ap.add_argument("--configs", nargs="+", default=["3d_fullres", "2d"])
    ap.add_argument("--iterations", type=int, default=12, help="speed run: iterations per tool")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget-minutes", type=float, default=20.0)
    ap.add_argument("--budget-config", default="3d_fullres")
    ap.add_argument("--nnunet-iterations", type=int, default=25, help="budget run: nnU-Net iterations per epoch")
    args = ap.parse_args(argv)
    if not (HIPPO / "dataset.json").is_file():
        print(f"{HIPPO} not found: nothing to benchmark")
        return 1
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = prepare(work)
    report = {}
    if args.mode in ("speed", "both"):
        report["speed"] = speed(python, work, args.configs, args.iterations, args.repeats)
    if args.mode in ("budget", "both"):
        nn_step = report.get("speed", {}).get(args.budget_config, {}).get("nnunet_s_per_it")
        report["budget"] = budget(python, work, args.budget_config, args.budget_minutes, args.nnunet_iterations,
                                  nn_step)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
