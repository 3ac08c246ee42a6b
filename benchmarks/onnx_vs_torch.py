"""The ONNX path against the torch path: seconds per case and agreement on the Hippocampus test images.

    .venv/bin/python benchmarks/onnx_vs_torch.py -w WORKSPACE [--dataset Hippocampus] [--images DIR] [--no-tta]

``WORKSPACE`` holds a trained dataset (e.g. the one ``benchmarks/budget_hippocampus20`` trains, or any
``autoseg train``). The script exports the trained folds as ONNX (``fold_onnx``, timed), predicts every image of
``--images`` (default: the shared Hippocampus ``imagesTs``) once with torch and once with onnxruntime (same folds,
same preprocessing and sliding window, fp32 on the CPU, one after the other on this machine), and prints seconds per
case of each and how the label maps agree: voxels that differ, and the Dice of each label between the two paths.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from autoseg import api
from autoseg.io.image import read_label
from autoseg.workflow.export import fold_onnx

HIPPO_TS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus" / "imagesTs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workspace", type=Path, required=True)
    ap.add_argument("--dataset", default="Hippocampus")
    ap.add_argument("-c", "--config", default="3d_fullres")
    ap.add_argument("--images", type=Path, default=HIPPO_TS)
    ap.add_argument("--no-tta", action="store_true")
    args = ap.parse_args()
    ctx = api.load_context(args.workspace, args.dataset)
    folds = ctx.trained_folds(args.config)
    t0 = time.perf_counter()
    for f in folds:
        fold_onnx(ctx, args.config, f)
    print(f"[bench] ONNX networks of {args.config} folds {', '.join(folds)}: {time.perf_counter() - t0:.1f} s "
          f"(made or checked)", flush=True)
    n = len(list(args.images.glob("*.nii.gz")))
    out = Path(tempfile.mkdtemp(prefix="onnx_vs_torch_"))
    seconds = {}
    for runtime in ("torch", "onnxruntime"):
        t0 = time.perf_counter()
        api.predict(args.workspace, args.dataset, args.images, out / runtime, args.config, folds,
                    tta=not args.no_tta, device="cpu", precision="fp32", progress=False, runtime=runtime)
        seconds[runtime] = (time.perf_counter() - t0) / n
        print(f"[bench] {runtime}: {seconds[runtime]:.2f} s per case ({n} cases)", flush=True)
    labels = range(1, len(ctx.plans.labels))
    differing = total = 0
    dice = {v: [] for v in labels}
    for f in sorted((out / "torch").glob("*.nii.gz")):
        a, b = read_label(f)[0], read_label(out / "onnxruntime" / f.name)[0]
        differing, total = differing + int((a != b).sum()), total + a.size
        for v in labels:
            denom = int((a == v).sum() + (b == v).sum())
            if denom:
                dice[v].append(2 * int(((a == v) & (b == v)).sum()) / denom)
    print(f"\n[bench] summary ({args.dataset} {args.config}, folds {', '.join(folds)}, "
          f"{'no TTA' if args.no_tta else 'mirroring TTA'}, fp32, CPU)")
    print(f"  torch        {seconds['torch']:.2f} s per case")
    print(f"  onnxruntime  {seconds['onnxruntime']:.2f} s per case ({seconds['onnxruntime'] / seconds['torch']:.2f}x)")
    print(f"  label maps: {differing} of {total} voxels differ ({differing / total:.2e}); Dice torch vs onnxruntime "
          + ", ".join(f"{ctx.plans.labels[v]} min {min(d):.4f} mean {np.mean(d):.4f}" for v, d in dice.items() if d))


if __name__ == "__main__":
    main()
