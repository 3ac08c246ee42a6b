"""Transfer between datasets with different plans, and Hippocampus under ``plan --budget``.

    .venv/bin/python benchmarks/transfer_la2018.py [--hippocampus-minutes 20] [--la-minutes 20] [--out DIR]

1. Task04_Hippocampus planned with ``--budget HIPPOCAMPUS_MINUTES`` (the budget rule on this machine's measured
   throughput), ``3d_fullres`` fold 0 trained for that long and validated (the "--budget 20 is not worse" check),
   then exported to ``OUT/hippocampus.zip``.
2. Task902_LA2018 planned with ``--budget LA_MINUTES``; ``3d_fullres`` fold 0 trained for that long twice, one after
   the other on the same machine: from scratch, and initialised from the Hippocampus model (every tensor whose
   name and shape match; ``--freeze-encoder-epochs`` optional). Both validated on fold 0's cases.

Prints the plans, each run's iterations and validation Dice, and the transfer table by block.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from autoseg import api
from autoseg.planning.summary import plans_table
from autoseg.schema.base import load_json
from autoseg.schema.training import TransferReport
from autoseg.training.pretrained import block_summary

DATA = Path("/work/shared/data")


def run(raw: Path, ws: Path, minutes: float, label: str, **overrides) -> dict:
    t0 = time.perf_counter()
    result = api.plan(raw, ws, progress=False, budget_minutes=minutes)
    name = result.plans.dataset_name
    print(f"\n[bench] {label}: plans (fitted to {minutes:g} min per fold)\n{plans_table(result.plans)}", flush=True)
    trained = api.train(ws, name, "3d_fullres", "0", budget_minutes=minutes, progress=False, **overrides)
    ctx = api.load_context(ws, name)
    summary = json.loads(ctx.fold("3d_fullres", "0").validation_summary.read_text())
    st = trained.state
    out = {"label": label, "iterations": st.epoch * st.iterations_per_epoch, "epochs": st.epoch,
           "train_minutes": round(st.train_seconds / 60, 1), "wall_minutes": round((time.perf_counter() - t0) / 60, 1),
           "dice": {summary["label_names"].get(k, k): round(m["dice"], 4) for k, m in summary["mean"].items()},
           "hd95": {summary["label_names"].get(k, k): round(m["hd95"], 2) for k, m in summary["mean"].items()},
           "cases": len(summary["cases"])}
    print(f"[bench] {label}: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/transfer_la2018"))
    ap.add_argument("--hippocampus-minutes", type=float, default=20.0)
    ap.add_argument("--la-minutes", type=float, default=20.0)
    ap.add_argument("--freeze-encoder-epochs", type=int, default=None)
    ap.add_argument("--hippocampus-zip", type=Path, default=None, help="reuse an exported Hippocampus model")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    zip_path = args.hippocampus_zip
    if zip_path is None:
        hws = args.out / "ws_hippocampus"
        results.append(run(DATA / "Task04_Hippocampus", hws, args.hippocampus_minutes, "Hippocampus"))
        zip_path = args.out / "hippocampus.zip"
        api.export_model(hws, "Hippocampus", zip_path, ["3d_fullres"], overwrite=True)
    la = DATA / "Task902_LA2018"
    scratch_ws, tuned_ws = args.out / "ws_scratch", args.out / "ws_pretrained"
    for ws in (scratch_ws, tuned_ws):
        shutil.rmtree(ws, ignore_errors=True)
    results.append(run(la, scratch_ws, args.la_minutes, "LA2018 from scratch"))
    # the same measured throughput for both, so both get the same plan (a second calibration could differ a little)
    tuned_ws.mkdir(parents=True)
    shutil.copy(scratch_ws / "calibration.json", tuned_ws / "calibration.json")
    results.append(run(la, tuned_ws, args.la_minutes, "LA2018 from the Hippocampus model",
                       pretrained=str(zip_path), freeze_encoder_epochs=args.freeze_encoder_epochs))
    report = load_json(TransferReport, tuned_ws / "LA2018" / "models" / "3d_fullres" / "fold_0" /
                       "pretrained_transfer.json")
    print(f"\n[bench] transfer table ({len(report.loaded)} of {len(report.tensors)} tensors transferred):")
    for line in block_summary(report):
        print("  " + line)
    print("\n[bench] summary")
    for r in results:
        print(f"  {r['label']}: {r['iterations']} iterations in {r['train_minutes']} min, fold-0 validation "
              f"({r['cases']} cases) Dice {r['dice']}, HD95 {r['hd95']} mm")


if __name__ == "__main__":
    main()
