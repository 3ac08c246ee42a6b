"""The argument parser: one builder per command, from the shared options of :mod:`autoseg.cli.options`."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg import __version__
from autoseg.cli.options import (COMMON_HELP, SYNTHETIC_KINDS, HelpFormatter, add_run_selection, add_training_options,
                                 add_workspace, default_workspace, parse_duration, parse_positive_float,
                                 parse_positive_int)


def build_parser(default_ws: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``default_ws``: the workspace default (``None``: from the environment, see
    :func:`default_workspace`)."""
    default_ws = default_ws or default_workspace()
    p = argparse.ArgumentParser(prog="autoseg", description="Self-configuring medical image segmentation.")
    p.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, formatter_class=HelpFormatter, **k)  # defaults in every help

    _add_verify_command(sub)
    _add_plan_command(sub, default_ws)
    _add_convert_command(sub)
    _add_preprocess_command(sub, default_ws)
    _add_evaluate_command(sub, default_ws)
    _add_train_command(sub, default_ws)
    _add_jobs_command(sub, default_ws)
    _add_predict_command(sub, default_ws)
    _add_find_best_command(sub, default_ws)
    _add_export_command(sub, default_ws)
    _add_import_command(sub, default_ws)
    _add_serve_command(sub, default_ws)
    _add_report_command(sub, default_ws)
    _add_demo_command(sub)
    for sp in sub.choices.values():  # the shared options' help, in one place
        for action in sp._actions:
            if action.help is None:
                action.help = COMMON_HELP.get(action.dest)
    return p


def _add_verify_command(sub) -> None:
    v = sub.add_parser("verify", help="check a raw dataset folder (MSD or nnU-Net v2 layout); writes nothing")
    v.add_argument("raw_dir", type=Path, metavar="RAW_DIR")
    v.add_argument("-j", "--workers", type=parse_positive_int, default=None, help="parallel processes (default: auto)")


def _add_plan_command(sub, default_ws: str) -> None:
    pl = sub.add_parser("plan", help="verify, fingerprint and plan a dataset")
    pl.add_argument("raw_dir", type=Path, metavar="RAW_DIR")
    add_workspace(pl, default_ws, help="workspace folder (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    pl.add_argument("--preset", default="default", help="planner preset: default, resenc-m, resenc-l, resenc-xl")
    pl.add_argument("--gpu-memory", type=parse_positive_float, default=None, metavar="GB",
                    help="accelerator memory target (default: the preset's, else 8 as nnU-Net, or the CUDA "
                         "device's memory when less)")
    pl.add_argument("-j", "--workers", type=parse_positive_int, default=None, help="parallel processes (default: auto)")
    pl.add_argument("--no-preprocess", action="store_true", help="stop after planning")
    pl.add_argument("--budget", type=parse_duration, default=None, metavar="DURATION",
                    help="wall-clock time of the whole training run (training, validation, model selection): "
                         "fit a run plan to it (which configurations and folds, how long each; stored in "
                         "run_plan.json and followed by train DATASET) and every configuration's plan to one "
                         "fold's time (smaller batch, then patch, spacing, width, patch; trade-offs printed and "
                         "stored in plans.json): 90 (minutes), 90m, 1.5h, 2h30m. Default: nnU-Net's plans, from "
                         "memory alone, and nnU-Net's AutoML")
    pl.add_argument("--min-iterations", type=parse_positive_int, default=None, metavar="N",
                    help="iterations per fold the plans are fitted to reach in the run plan's time (default 500)")
    pl.add_argument("--device", default="auto",
                    help="device --budget is measured on: auto (CUDA when present), cpu, cuda, cuda:N")


def _add_convert_command(sub) -> None:
    cv = sub.add_parser("convert", help="make a raw dataset from any folder of images and masks (file patterns), "
                                        "or from DICOM series with DICOM-SEG / RTSTRUCT annotations",
                        description="Describe where each case's files are with patterns relative to SOURCE, "
                                    "{case} standing for the case id in the file name; the result in OUT_DIR is "
                                    "an nnU-Net v2 raw dataset for `autoseg plan`. Every unmatched file, missing "
                                    "partner and unmapped label value is reported and nothing is written. A SOURCE "
                                    "holding DICOM, given without patterns, is converted from its headers: each "
                                    "image series one case, its DICOM-SEG or RTSTRUCT (matched by the referenced "
                                    "series) its labels, series without one test images.")
    cv.add_argument("source", type=Path, metavar="SOURCE",
                    help="folder the patterns are relative to, or a folder of DICOM (searched at any depth)")
    cv.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="raw dataset folder to create")
    cv.add_argument("--spec", type=Path, default=None, metavar="FILE",
                    help="a JSON file with the keys images, labels, roi, test_images, test_roi, label_map, "
                         "label_names, channel_names, name (instead of the options below)")
    cv.add_argument("--images", nargs="+", default=None, metavar="PATTERN",
                    help="training image files, one pattern per channel, e.g. 'training/images/{case}_training.tif'")
    cv.add_argument("--labels", default=None, metavar="PATTERN", help="training label files")
    cv.add_argument("--roi", default=None, metavar="PATTERN", help="training region-of-interest masks (optional)")
    cv.add_argument("--test-images", nargs="+", default=(), metavar="PATTERN", help="unlabelled images (optional)")
    cv.add_argument("--test-roi", default=None, metavar="PATTERN", help="their region-of-interest masks")
    cv.add_argument("--map", nargs="+", default=(), metavar="SOURCE=LABEL",
                    help="label values to map, e.g. 255=1 (values not mapped must already be label indices)")
    cv.add_argument("--label-names", nargs="+", default=(), metavar="NAME",
                    help="name of every label, background first (default: background label_1 ...)")
    cv.add_argument("--channel-names", nargs="+", default=(), metavar="NAME",
                    help="one per channel (default: R G B for colour files, else image)")
    cv.add_argument("--name", default=None, help="dataset name (default: OUT_DIR's name)")


def _add_preprocess_command(sub, default_ws: str) -> None:
    pp = sub.add_parser("preprocess", help="preprocess a planned dataset (restartable; reuses unchanged data)")
    pp.add_argument("dataset", metavar="DATASET", help="dataset name (its folder in the workspace)")
    add_workspace(pp, default_ws, help="workspace folder (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    pp.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configurations to preprocess (default: every planned one)")
    pp.add_argument("-j", "--workers", type=parse_positive_int, default=None,
                    help="parallel processes (default: from cores, free memory and the largest case)")


def _add_evaluate_command(sub, default_ws: str) -> None:
    ev = sub.add_parser("evaluate", help="Dice, IoU, HD95 and NSD of predicted label maps against references")
    ev.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="predicted label maps <case><ending>")
    ev.add_argument("gt_dir", type=Path, metavar="GT_DIR", help="reference label maps, same names")
    ev.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="label values or names (default: the dataset's foreground labels, else every nonzero "
                         "value in the references)")
    ev.add_argument("--dataset", default=None, metavar="NAME", help="planned dataset whose labels to use")
    add_workspace(ev, default_ws, help="workspace of --dataset (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    ev.add_argument("--predicted-only", action="store_true",
                    help="score only the reference cases that have a prediction (default: a missing one is an error)")
    ev.add_argument("-j", "--workers", type=parse_positive_int, default=None, help="parallel processes (default: one per core)")
    ev.add_argument("-o", "--output", type=Path, default=None, help="summary file (default: PRED_DIR/summary.json)")
    ev.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                    help="tolerance of the normalised surface Dice, mm (default 1)")
    ev.add_argument("--roi", type=Path, default=None, metavar="DIR",
                    help="region-of-interest masks <case><ending> (nonzero inside): score inside them only")
    ev.add_argument("--regions", nargs="+", default=None, metavar="NAME=LABELS",
                    help="score regions (unions of labels) instead of labels, e.g. 'whole tumour=1,2,3,4' "
                         "'tumour core=1,3,4' 'enhancing tumour=4'")


def _add_train_command(sub, default_ws: str) -> None:
    t = sub.add_parser("train", help="train a configuration's fold (resumable, extendable, time-budgeted)")
    add_run_selection(t, default_ws)
    add_training_options(t)
    t.add_argument("--resume", action="store_true",
                   help="continue a killed run from its latest checkpoint (train DATASET always continues its run "
                        "plan; with a larger --budget it extends it)")
    t.add_argument("--overwrite", action="store_true", help="discard an unfinished run in the fold folder")
    t.add_argument("--allocation", choices=("plan", "uniform"), default="plan",
                   help="without -c/-f: plan follows the run plan (plan --budget, or --budget here); uniform "
                        "splits --budget evenly over every configuration x fold (the behaviour before run plans, "
                        "for comparison)")
    t.add_argument("--cluster", default=None, metavar="SPEC",
                   help="hand the fold jobs to a Dask cluster: local[:N] (N worker processes on this machine), a "
                        "scheduler address (tcp://HOST:PORT) or a job-queue file (.yaml: SLURM, PBS, LSF, SGE, "
                        "HTCondor; extra [cluster]). Default: train in this process")
    t.add_argument("--job-timeout", type=parse_duration, default=None, metavar="DURATION",
                   help="with --cluster: a job whose log has not grown for this long (no epoch line, no "
                        "validation progress) is hung: it is killed and retried; 90 (minutes), 90m, 1.5h, 45s "
                        "(default: 60 minutes)")


def _add_jobs_command(sub, default_ws: str) -> None:
    jb = sub.add_parser("jobs", help="print the training run as commands with dependencies (shell or sbatch script)")
    add_run_selection(jb, default_ws)
    jb.add_argument("--format", choices=("shell", "slurm"), default="shell",
                    help="shell: the commands in dependency waves; slurm: sbatch submissions chained with "
                         "--dependency=afterok")
    jb.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                    help="with --format slurm: an sbatch option for every job, e.g. --sbatch=--partition=gpu "
                         "--sbatch=--gres=gpu:1 (repeatable)")
    add_training_options(jb)


def _add_predict_command(sub, default_ws: str) -> None:
    pr = sub.add_parser("predict", help="segment a folder of images with trained folds")
    pr.add_argument("dataset", metavar="DATASET")
    pr.add_argument("-i", "--input", type=Path, required=True, metavar="IMAGES_DIR",
                    help="folder of images (MSD naming, or nnU-Net's <case>_0000 per channel), or of DICOM: every "
                         "image series below it is one case, named by its folder (extra [dicom])")
    pr.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR",
                    help="folder the label maps are written to (<case> + the images' ending; .nii.gz for DICOM)")
    add_workspace(pr, default_ws)
    pr.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configuration, several (their probabilities averaged), or best: best.json's choice with "
                         "its postprocessing (default: best once `autoseg find-best` ran, else 3d_fullres)")
    pr.add_argument("-f", "--fold", nargs="+", default=None, metavar="FOLD",
                    help="folds whose networks are averaged (default: every trained one)")
    pr.add_argument("--folds", nargs="+", dest="fold", help=argparse.SUPPRESS)  # old spelling, one release
    pr.add_argument("--step", type=parse_positive_float, default=0.5, help="sliding-window step, fraction of the patch")
    pr.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster)")
    pr.add_argument("--save-probabilities", action="store_true",
                    help="also write <case>.npz with the class probabilities (float16) in the image's geometry")
    pr.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    pr.add_argument("--continue", dest="continue_", action="store_true", help="skip cases already written")
    pr.add_argument("--skip-bad", action="store_true",
                    help="predict the good inputs when some are bad (default: stop before writing anything); the "
                         "bad ones are listed in OUT_DIR/failures.json and the exit code is 3")
    pr.add_argument("--roi", type=Path, default=None, metavar="DIR",
                    help="region-of-interest masks <case><ending> (nonzero inside), one per image: background "
                         "is written outside them")
    pr.add_argument("--output-format", choices=("nifti", "dicom-seg"), default="nifti",
                    help="nifti: label maps as images (default); dicom-seg: one DICOM-SEG <case>.dcm per input DICOM "
                         "series, referencing it (DICOM input only)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    pr.add_argument("--runtime", choices=("torch", "compiled", "onnxruntime"), default="torch",
                    help="run the networks with torch (default); compiled: torch.compile first (13-15 s per "
                         "network, then 2%% faster 3D passes on an AVX2 CPU in fp32; bf16 and GPUs not measured); "
                         "or as "
                         "ONNX with onnxruntime on the CPU (extra [onnx]; a fold's network.onnx is made from its "
                         "checkpoint when missing)")


def _add_find_best_command(sub, default_ws: str) -> None:
    fb = sub.add_parser("find-best", help="rank cross-validated configurations and pairs; choose postprocessing")
    fb.add_argument("dataset", metavar="DATASET")
    add_workspace(fb, default_ws)
    fb.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configurations to consider (default: every planned one with all folds trained)")
    fb.add_argument("--configs", nargs="+", dest="config", help=argparse.SUPPRESS)  # old spelling, one release
    fb.add_argument("-j", "--workers", type=parse_positive_int, default=None, help="parallel processes (default: one per core)")


def _add_export_command(sub, default_ws: str) -> None:
    ex = sub.add_parser("export", help="write trained models (plans, weights, summaries) to one zip")
    ex.add_argument("dataset", metavar="DATASET")
    ex.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.ZIP", help="zip to write")
    add_workspace(ex, default_ws)
    ex.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configurations (default: best.json's choice, else every one with trained folds)")
    ex.add_argument("--checkpoint", choices=("final", "best"), default="final",
                    help="which checkpoint of every fold (default: final)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    ex.add_argument("--format", choices=("checkpoint", "onnx"), default="checkpoint", dest="fmt",
                    help="onnx: also every fold's network as ONNX and inference.json, to run without autoseg "
                         "(extra [onnx]; default: checkpoint only)")


def _add_import_command(sub, default_ws: str) -> None:
    im = sub.add_parser("import", help="unpack an exported model zip into a workspace (for autoseg predict)")
    im.add_argument("zip", type=Path, metavar="MODEL.ZIP", help="a zip written by autoseg export")
    add_workspace(im, default_ws)
    im.add_argument("--overwrite", action="store_true",
                    help="replace differing plans (kept as plans.<hash>.json) and fold folders")


def _add_serve_command(sub, default_ws: str) -> None:
    sv = sub.add_parser("serve", help="serve trained models over HTTP (3D Slicer's MONAI Label extension, "
                                      "POST /v1/segment/DATASET); extra [serve]")
    sv.add_argument("datasets", nargs="*", metavar="DATASET",
                    help="datasets to serve (default: every one of the workspace with a trained or imported model)")
    add_workspace(sv, default_ws)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    sv.add_argument("-c", "--config", default=None,
                    help="configuration of every served dataset (default: best.json's choice, else 3d_fullres, "
                         "else the first trained one)")
    sv.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                    help="require 'Authorization: Bearer <token>' with the token in FILE (default: no token)")
    sv.add_argument("--queue", type=parse_positive_int, default=4,
                    help="requests that may wait per model while one runs; beyond: 503 (default: 4)")
    sv.add_argument("--max-upload-mb", type=parse_positive_float, default=1024.0,
                    help="largest upload accepted, MB (default: 1024)")
    sv.add_argument("--studies", default=None, metavar="URL",
                    help="DICOMweb server (PACS) as the datastore, e.g. http://host:8042/dicom-web: its series are "
                         "listed and segmented by SeriesInstanceUID, the DICOM-SEG stored back; extra [dicom]")
    sv.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster)")
    sv.add_argument("--runtime", choices=("torch", "compiled", "onnxruntime"), default="torch",
                    help="torch (default), compiled (torch.compile at start-up) or onnxruntime (extra [onnx])")
    sv.add_argument("--device", default="auto")


def _add_report_command(sub, default_ws: str) -> None:
    rp = sub.add_parser("report", help="write a trained fold's report.md (metrics table, box plot, overlays)")
    rp.add_argument("dataset", metavar="DATASET")
    add_workspace(rp, default_ws)
    rp.add_argument("-c", "--config", default="3d_fullres", help="configuration (default: 3d_fullres)")
    rp.add_argument("-f", "--fold", default="0", help="fold (default: 0)")


def _add_demo_command(sub) -> None:
    d = sub.add_parser("demo", help="run the whole pipeline on a small synthetic dataset")
    d.add_argument("--make-data", type=Path, default=None, metavar="DIR",
                   help="only write a synthetic MSD dataset to DIR")
    d.add_argument("--kind", default="demo", choices=SYNTHETIC_KINDS, help="synthetic preset for --make-data")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the run")
    d.add_argument("-w", "--workspace", type=Path, default=Path("autoseg_demo"),
                   help="demo workspace (default: ./autoseg_demo)")
    d.add_argument("--budget", type=parse_duration, default=3.0, metavar="DURATION",
                   help="training time (default 3 minutes)")
    d.add_argument("--device", default="auto")


