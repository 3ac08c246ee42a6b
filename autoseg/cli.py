"""Command line: argparse -> one ``autoseg.api`` call. No logic lives here.

Bad input ends with one line per problem on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from autoseg import __version__
from autoseg.errors import AutosegError

EXIT_USER_ERROR = 2


def _workers(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _positive_float(value: str) -> float:
    v = float(value)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return v


def _parser() -> argparse.ArgumentParser:
    default_ws = os.environ.get("AUTOSEG_WORKSPACE", "autoseg_workspace")
    p = argparse.ArgumentParser(prog="autoseg", description="Self-configuring medical image segmentation.")
    p.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("verify", help="check a raw dataset folder (MSD or nnU-Net v2 layout); writes nothing")
    v.add_argument("raw_dir", type=Path, metavar="RAW_DIR")
    v.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: auto)")

    pl = sub.add_parser("plan", help="verify, fingerprint and plan a dataset")
    pl.add_argument("raw_dir", type=Path, metavar="RAW_DIR")
    pl.add_argument("-w", "--workspace", type=Path, default=Path(default_ws),
                    help="workspace folder (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    pl.add_argument("--preset", default="default", help="planner preset: default, resenc-m, resenc-l, resenc-xl")
    pl.add_argument("--gpu-memory", type=_positive_float, default=None, metavar="GB",
                    help="accelerator memory target (default: the preset's, else the CUDA device's, else 8)")
    pl.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: auto)")
    pl.add_argument("--no-preprocess", action="store_true", help="stop after planning")

    pp = sub.add_parser("preprocess", help="preprocess a planned dataset (restartable; reuses unchanged data)")
    pp.add_argument("dataset", metavar="DATASET", help="dataset name (its folder in the workspace)")
    pp.add_argument("-w", "--workspace", type=Path, default=Path(default_ws),
                    help="workspace folder (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    pp.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configurations to preprocess (default: every planned one)")
    pp.add_argument("-j", "--workers", type=_workers, default=None,
                    help="parallel processes (default: from cores, free memory and the largest case)")

    ev = sub.add_parser("evaluate", help="Dice, IoU, HD95 and NSD of predicted label maps against references")
    ev.add_argument("pred_dir", type=Path, metavar="PRED_DIR")
    ev.add_argument("gt_dir", type=Path, metavar="GT_DIR")
    ev.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="label values or names (default: the dataset's foreground labels, else every nonzero "
                         "value in the references)")
    ev.add_argument("--dataset", default=None, metavar="NAME", help="planned dataset whose labels to use")
    ev.add_argument("-w", "--workspace", type=Path, default=Path(default_ws),
                    help="workspace of --dataset (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    ev.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: one per core)")
    ev.add_argument("-o", "--output", type=Path, default=None, help="summary file (default: PRED_DIR/summary.json)")
    ev.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                    help="tolerance of the normalised surface Dice, mm (default 1)")

    d = sub.add_parser("demo", help="run the whole pipeline on a small synthetic dataset")
    d.add_argument("--make-data", type=Path, default=None, metavar="DIR",
                   help="only write a synthetic MSD dataset to DIR")
    d.add_argument("--kind", default="demo", help="synthetic preset for --make-data (tiny, demo, anisotropic, "
                                                   "multichannel, ct, large, brats-like)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("-w", "--workspace", type=Path, default=Path("autoseg_demo"),
                   help="demo workspace (default: ./autoseg_demo)")
    return p


def _cmd_verify(args) -> int:
    from autoseg import api

    spec = api.verify(args.raw_dir, num_workers=args.workers)
    print(f"{args.raw_dir}: OK ({len(spec.training)} training, {len(spec.test)} test cases, "
          f"{spec.num_channels} channel(s), {spec.num_classes - 1} foreground label(s))")
    return 0


def _cmd_plan(args) -> int:
    from autoseg import api
    from autoseg.planning.summary import plans_table

    result = api.plan(args.raw_dir, args.workspace, preset=args.preset, memory_gb=args.gpu_memory,
                      num_workers=args.workers, preprocess=not args.no_preprocess)
    if result.fingerprint_reused:
        print(f"dataset unchanged since the last run: reused {result.paths.fingerprint}")
    print(plans_table(result.plans))
    print(f"\nwrote {result.paths.plans}")
    if result.preprocessing is not None:
        from autoseg.preprocessing.run import preprocess_summary

        print("preprocessed:\n" + preprocess_summary(result.preprocessing))
    return 0


def _cmd_preprocess(args) -> int:
    from autoseg import api
    from autoseg.preprocessing.run import preprocess_summary

    result = api.preprocess(args.workspace, args.dataset, configs=args.config, num_workers=args.workers)
    print("preprocessed:\n" + preprocess_summary(result))
    return 0


def _cmd_evaluate(args) -> int:
    from autoseg import api
    from autoseg.evaluation.folder import summary_table

    summary = api.evaluate(args.pred_dir, args.gt_dir, workspace=args.workspace, dataset=args.dataset,
                           num_workers=args.workers, labels=args.labels, output=args.output,
                           nsd_tolerance_mm=args.nsd_tolerance)
    print(summary_table(summary))
    print(f"\nwrote {args.output or args.pred_dir / 'summary.json'}")
    return 0


def _cmd_demo(args) -> int:
    from autoseg import api, synthetic
    from autoseg.planning.summary import plans_table

    if args.kind not in synthetic.PRESETS:
        raise AutosegError(f"--kind {args.kind}: unknown; available: {', '.join(synthetic.PRESETS)}")
    spec = synthetic.PRESETS[args.kind]
    from dataclasses import replace

    spec = replace(spec, seed=args.seed)
    if args.make_data is not None:
        out = _make_data(args.make_data, spec)
        print(f"wrote synthetic dataset '{spec.name}' to {out}")
        return 0
    raw = args.workspace / "raw" / spec.name
    if not (raw / "dataset.json").is_file():
        _make_data(raw, spec)
    result = api.plan(raw, args.workspace)
    print(plans_table(result.plans))
    return 0


def _make_data(out: Path, spec) -> Path:
    from autoseg import synthetic

    if out.exists() and any(out.iterdir()):
        raise AutosegError(f"{out}: folder exists and is not empty; choose another folder")
    return synthetic.make_dataset(out, spec)


_COMMANDS = {"verify": _cmd_verify, "plan": _cmd_plan, "preprocess": _cmd_preprocess, "demo": _cmd_demo,
             "evaluate": _cmd_evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except AutosegError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        if len(e.problems) > 1:
            print(f"error: {len(e.problems)} problems found; nothing was written", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
