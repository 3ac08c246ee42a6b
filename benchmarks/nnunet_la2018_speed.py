"""nnU-Net v2's own plan and seconds per training iteration on Task902_LA2018, beside autoseg's, on this CPU.

    .venv/bin/python benchmarks/nnunet_la2018_speed.py [--iterations 6] [--work-dir /tmp/nnunet_la2018]

nnU-Net (its own virtualenv, torch pinned as ours; see ``_nnunet.py``) plans and preprocesses LA2018, then trains
``3d_fullres`` fold 0 for a few iterations with a benchmark trainer that records every step's wall time (written
by ``train_vs_nnunet.py``); autoseg trains the same nnU-Net-sized plan (its memory-only plan, identical patch and
batch) for the same number of iterations, one after the other. Prints both plans, both medians (the first two
steps excluded as warm-up) and how many iterations each gets in 60 minutes, against the budget-fitted plan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet  # noqa: E402
from train_vs_nnunet import TRAINER, install_trainer, nnunet_env  # noqa: E402

LA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task902_LA2018"
DATASET_ID = 902


def nnunet_steps(python: Path, work: Path, iterations: int) -> list[float]:
    times = work / "nnunet_steps.jsonl"
    times.unlink(missing_ok=True)
    env = nnunet_env(work, {"BENCH_ITERS": iterations, "BENCH_EPOCHS": 1, "BENCH_VAL_ITERS": 1, "BENCH_NO_VAL": "1",
                            "BENCH_TIMES": times})
    cmd = [str(python.parent / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER,
           "-device", "cpu"]
    _nnunet._run_measured(cmd, env, work / "logs" / "nnunet_train.log", work)
    return [json.loads(line) for line in times.read_text().splitlines()]


def autoseg_steps(work: Path, iterations: int) -> tuple[list[float], dict]:
    ws = work / "autoseg_ws"
    subprocess.run([sys.executable, "-m", "autoseg", "plan", str(LA), "-w", str(ws)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "autoseg", "train", "LA2018", "-w", str(ws), "-c", "3d_fullres", "-f",
                    "0", "--epochs", "1", "--iterations-per-epoch", str(iterations), "--validation-iterations", "1",
                    "--no-validation", "--overwrite", "-j", "1"], check=True, stdout=subprocess.DEVNULL)
    fold = ws / "LA2018" / "models" / "3d_fullres" / "fold_0"
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    plan = json.loads((ws / "LA2018" / "plans.json").read_text())["configurations"]["3d_fullres"]
    # one epoch: the log has its median step (warm-up included in the epoch's wall time, not in the median)
    return [log[0]["step_seconds"]], plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/nnunet_la2018"))
    ap.add_argument("--iterations", type=int, default=6)
    args = ap.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    python = _nnunet.ensure_nnunet_venv()
    install_trainer(python)
    planned = _nnunet.plan_with_nnunet(LA, work / "nnunet", DATASET_ID, num_proc=2, configurations=("3d_fullres",),
                                       preprocess=True)
    summary = _nnunet.summarize_nnunet_plans(planned["plans"])
    print("[bench] nnU-Net v2 plans (8 GB default):\n" + _nnunet.format_summary(summary), flush=True)
    theirs = nnunet_steps(python, work, args.iterations)
    nn_median = statistics.median(theirs[2:]) if len(theirs) > 3 else statistics.median(theirs)
    print(f"[bench] nnU-Net 3d_fullres steps (s): {[round(t, 1) for t in theirs]} -> median {nn_median:.1f} s "
          f"(first two excluded)", flush=True)
    ours, plan = autoseg_steps(work, args.iterations)
    print(f"[bench] autoseg 3d_fullres (memory-only plan: patch {plan['patch_size']}, batch {plan['batch_size']}): "
          f"median step {ours[0]:.1f} s", flush=True)
    print("\n[bench] summary: iterations in 60 training minutes at nnU-Net's plan: "
          f"nnU-Net {3600 / nn_median:.0f}, autoseg {3600 / ours[0]:.0f} (speed ratio {nn_median / ours[0]:.2f}x); "
          "autoseg's --budget 60 plan: see budget_la2018_v2.txt (390 iterations at 8.8 s)")


if __name__ == "__main__":
    main()
