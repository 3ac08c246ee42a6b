"""Labelled-only vs semi-supervised training at equal time, on one set of plans.

    # once: a raw folder with N labelled cases + the rest as unlabelled images, planned and preprocessed
    .venv/bin/python benchmarks/semi_supervised.py prepare --dataset la2018 --budget 90 --out /tmp/ssl_la
    # then one run per method (each copies the prepared workspace, so all share its plans and preprocessing)
    .venv/bin/python benchmarks/semi_supervised.py train --dataset la2018 --budget 90 --out /tmp/ssl_la \\
        --method off --results benchmarks/results/LA2018_16labelled_90min_off

Datasets: ``la2018`` is the published protocol (the first 16 labelled cases of ``Task902_LA2018`` + its other 8
images and the 56 scans of ``LA2018_unlabelled`` as unlabelled: 80 training scans); ``hippocampus`` keeps the first
``--labelled-fraction`` (20%) of ``Task04_Hippocampus``'s training cases labelled and the rest as unlabelled images.
``train`` trains ``3d_fullres`` fold 0 for ``--budget`` minutes with ``--method`` (``off``: labelled only), validates
it on fold 0 (its labelled validation cases), predicts the dataset's test images into ``RESULTS/predictions`` (the
project owners score them on the hidden labels) and writes ``RESULTS/summary.txt``. Runs meant to be compared are
started the same way (e.g. side by side, each pinned to its own core with ``taskset``) and measured in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

SHARED = Path(os.environ.get("AUTOSEG_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
DATASETS = {
    "la2018": (SHARED / "Task902_LA2018", SHARED / "LA2018_unlabelled"),
    "hippocampus": (SHARED / "Task04_Hippocampus", None),
}


def build_raw(dataset: str, out: Path, labelled: int | None, fraction: float) -> Path:
    """A raw MSD folder of links: the first ``labelled`` (or ``fraction``) training cases with their labels, the
    other training images (and the dataset's extra unlabelled scans) in ``imagesTrUnlabelled/``, the test images."""
    src, extra = DATASETS[dataset]
    meta = json.loads((src / "dataset.json").read_text())
    n = labelled if labelled is not None else max(1, round(fraction * len(meta["training"])))
    raw = out / "raw" / f"{meta['name']}_{n}labelled"
    if raw.exists():
        shutil.rmtree(raw)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "imagesTrUnlabelled"):
        (raw / sub).mkdir(parents=True)

    def link(rel: str, sub: str, source: Path = src) -> str:
        name = Path(rel).name
        os.symlink((source / rel).resolve(), raw / sub / name)
        return f"./{sub}/{name}"

    training = [{"image": link(c["image"], "imagesTr"), "label": link(c["label"], "labelsTr")}
                for c in meta["training"][:n]]
    for c in meta["training"][n:]:
        link(c["image"], "imagesTrUnlabelled")
    if extra is not None:
        for f in sorted(extra.glob("*.nii.gz")):
            link(f.name, "imagesTrUnlabelled", extra)
    test = [link(t, "imagesTs") for t in meta["test"]]
    meta.update(training=training, test=test, numTraining=len(training), numTest=len(test))
    (raw / "dataset.json").write_text(json.dumps(meta, indent=1))
    return raw


def prepare(args) -> None:
    from autoseg import api
    from autoseg.planning.summary import plans_table

    raw = build_raw(args.dataset, args.out, args.labelled, args.labelled_fraction)
    spec_unlabelled = len(list((raw / "imagesTrUnlabelled").iterdir()))
    ws = args.out / "ws"
    if ws.exists():
        shutil.rmtree(ws)
    t0 = time.perf_counter()
    result = api.plan(raw, ws, budget_minutes=args.budget, progress=False)
    print(plans_table(result.plans))
    print(f"[bench] {raw}: {len(json.loads((raw / 'dataset.json').read_text())['training'])} labelled, "
          f"{spec_unlabelled} unlabelled; planned and preprocessed in {time.perf_counter() - t0:.0f} s "
          f"(plan fitted to --budget {args.budget:g} on this machine)", flush=True)


def train(args) -> None:
    from autoseg import api

    template = args.out / "ws"
    ws = args.out / f"ws_{args.method}"
    if not ws.exists():
        # hard links: the preprocessed arrays are only read, and every write of a run replaces a file
        subprocess.run(["cp", "-al", str(template), str(ws)], check=True)
    ctx = api.load_context(template, _dataset_name(template))
    name = ctx.name
    overrides = dict(budget_minutes=args.budget, validation_mirroring=False)
    if args.method != "off" or args.explicit_off:
        overrides["semi_supervised"] = args.method
    t0 = time.perf_counter()
    result = api.train(ws, name, "3d_fullres", "0", resume=True, progress=False, **overrides)
    train_min = (time.perf_counter() - t0) / 60
    st = result.state
    res = args.results
    res.mkdir(parents=True, exist_ok=True)
    pred = res / "predictions"
    t1 = time.perf_counter()
    subprocess.run([str(Path(os.sys.executable)), "-m", "autoseg", "predict", name, "-w", str(ws), "-i",
                    str(Path(ctx.spec.raw_dir) / "imagesTs"), "-o", str(pred), "-c", "3d_fullres", "-f", "0",
                    "--no-tta", "--overwrite"], check=True)
    pred_min = (time.perf_counter() - t1) / 60
    fold = api.load_context(ws, name).fold("3d_fullres", "0")
    summary = json.loads(fold.validation_summary.read_text())
    shutil.copy(fold.validation_summary, res / "validation_summary.json")
    shutil.copy(fold.train_config, res / "train_config.json")
    shutil.copy(template / name / "plans.json", res / "plans.json")
    log = [json.loads(line) for line in fold.log.read_text().splitlines() if line.strip()]
    lines = [f"# benchmarks/semi_supervised.py train --dataset {args.dataset} --budget {args.budget:g} "
             f"--method {args.method}",
             f"# {time.strftime('%Y-%m-%d %H:%M')} UTC; {_cpu()}",
             f"method: {args.method}; trained {st.epoch} epochs x {st.iterations_per_epoch} = "
             f"{st.epoch * st.iterations_per_epoch} steps in {train_min:.1f} min (train + fold-0 validation); "
             f"median step {log[-1]['step_seconds']:.2f} s",
             f"fold-0 validation (no mirroring), per class Dice: {json.dumps(result.validation_dice)}",
             f"mean foreground Dice: {summary.get('foreground_mean_dice')}; per class: {summary.get('mean')}",
             f"test predictions: {pred} ({pred_min:.1f} min, no TTA)"]
    (res / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def _dataset_name(ws: Path) -> str:
    return next(p.parent.name for p in ws.glob("*/plans.json"))


def _cpu() -> str:
    try:
        from _hardware import cpu_description

        return cpu_description()
    except Exception:  # noqa: BLE001 -- a description only
        return f"{os.cpu_count()} cpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("prepare", "train"))
    ap.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="work folder (raw links, workspaces)")
    ap.add_argument("--budget", type=float, required=True, help="training minutes (plan fit and training)")
    ap.add_argument("--labelled", type=int, default=None, help="labelled cases (default: la2018 16)")
    ap.add_argument("--labelled-fraction", type=float, default=0.2)
    ap.add_argument("--method", default="off", help="semi-supervised method, or off (labelled only)")
    ap.add_argument("--explicit-off", action="store_true", help="pass off to the trainer (not just omit it)")
    ap.add_argument("--results", type=Path, default=None, help="folder for the summary and the test predictions")
    args = ap.parse_args()
    if args.labelled is None and args.dataset == "la2018":
        args.labelled = 16
    if args.step == "prepare":
        prepare(args)
    else:
        if args.results is None:
            ap.error("train needs --results")
        train(args)


if __name__ == "__main__":
    main()
