"""Command line: argparse -> one ``autoseg.api`` call. No logic lives here.

Bad input ends with one line per problem on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg import __version__
from autoseg.errors import AutosegError, JobsFailed

EXIT_USER_ERROR = 2
#: The machine refused a read or write (disk full, permission denied, read-only file system).
EXIT_SYSTEM_ERROR = 1
#: ``predict --skip-bad`` predicted the good inputs and refused some (listed in failures.json).
EXIT_SOME_FAILED = 3

#: How the library's parameters (named in its errors with :func:`autoseg.errors.option`) are spelled here.
FLAGS = {"resume": "--resume", "overwrite": "--overwrite", "continue_": "--continue", "budget_minutes": "--budget",
         "epochs": "--epochs", "configurations": "-c", "folds": "-f", "memory_gb": "--gpu-memory",
         "pretrained": "--pretrained", "device": "--device", "precision": "--precision", "preset": "--preset",
         "num_workers": "-j", "min_iterations": "--min-iterations",
         "freeze_encoder_epochs": "--freeze-encoder-epochs", "warmup_fraction": "--warmup", "schedule": "--schedule",
         "early_stop_patience": "--early-stop", "allocation": "--allocation", "output_format": "--output-format",
         "roi_dir": "--roi", "images": "--images", "labels": "--labels"}


#: ``autoseg demo --kind``: the presets of :data:`autoseg.synthetic.PRESETS` (named here so that the parser does not
#: import the image stack; a test keeps the two equal).
SYNTHETIC_KINDS = ('tiny', 'demo', 'anisotropic', 'multichannel', 'ct', 'large', 'cascade', '2d-rgb', 'brats-like')


def _flag(name: str) -> str:
    """``"overwrite=True"`` -> ``--overwrite``; ``"num_workers=1"`` -> ``-j 1``; ``"device"`` -> ``--device``."""
    key, _, value = name.partition("=")
    flag = FLAGS.get(key, key)
    return flag if value in ("", "True") else f"{flag} {value}"


def _workers(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _positive_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be a positive number")
    return v


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: str) -> float:
    """A duration in minutes: ``90`` (minutes), ``90m``, ``1.5h``, ``2h30m``, ``45s``.

    Examples
    --------
    >>> parse_duration("90"), parse_duration("90m"), parse_duration("1.5h"), parse_duration("2h30m")
    (90.0, 90.0, 90.0, 150.0)
    """
    text = value.strip().lower().replace(" ", "")
    try:
        minutes = float(text)
    except ValueError:
        m = _DURATION.match(text)
        if not text or m is None or not any(m.groups()):
            raise argparse.ArgumentTypeError(f"{value!r}: expected minutes (90) or a duration such as 90m, 1.5h, "
                                             f"2h30m") from None
        h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
        minutes = 60 * h + mins + secs / 60
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: the duration must be positive")
    return minutes


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default in (None, False, argparse.SUPPRESS)
                or default == () or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: {default})"


#: Help of the options several commands share, by destination (a command's own help wins).
COMMON_HELP = {
    "workspace": "workspace folder holding the planned datasets (set $AUTOSEG_WORKSPACE to change the default)",
    "dataset": "dataset name: dataset.json's \"name\" (verify and plan print it)",
    "device": "where the networks run: auto (CUDA when present), cpu, cuda or cuda:N",
    "precision": "arithmetic: auto (bf16 on a GPU that has it, else fp32), fp32, bf16, or fp16 (CUDA; bf16 on "
                 "the CPU)",
    "raw_dir": "raw dataset folder (MSD or nnU-Net v2 layout, with dataset.json)",
    "seed": "seed of every random draw (same seed, same run)",
}


def _default_workspace() -> str:
    return os.environ.get("AUTOSEG_WORKSPACE", "autoseg_workspace")


@dataclass(frozen=True)
class Option:
    """One command-line option: its flags and :meth:`argparse.ArgumentParser.add_argument` keywords."""

    flags: tuple[str, ...]
    kwargs: dict
    #: given to a cluster run's fold jobs when set (``False``: it chooses the jobs, as ``--budget`` does)
    forwarded: bool = True

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or next(f for f in self.flags if f.startswith("--"))[2:].replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.kwargs)

    def spelled(self, value) -> list[str]:
        """``value`` as a command line gives it (nothing when it is the default)."""
        action = self.kwargs.get("action")
        default = self.kwargs.get("default", {"store_true": False, "store_false": True}.get(action))
        if value is None or value == default:
            return []
        flag = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        if action in ("store_true", "store_false"):
            return [flag]
        if isinstance(value, (list, tuple)):
            return [flag, *map(str, value)]
        return [flag, str(value)]


def _option(*flags: str, forwarded: bool = True, **kwargs) -> Option:
    return Option(tuple(flags), kwargs, forwarded)


#: The options of ``train`` that every fold job of a run gets (``train`` and ``jobs`` share them), as data: the
#: parsers are built from it, and a cluster run's jobs get them spelled back from it
#: (:func:`_forwarded_training_flags`).
TRAINING_OPTIONS: tuple[Option, ...] = (
    _option("--epochs", type=_workers, default=None,
            help="epochs to train (default: from --budget; nnU-Net's 1000 on a GPU without one)"),
    _option("--iterations-per-epoch", type=_workers, default=None,
            help="training iterations per epoch (default 250, nnU-Net's; a budget sets its own)"),
    _option("--validation-iterations", type=_workers, default=None,
            help="patch-validation iterations per epoch (default: a fifth of the training iterations, 50 "
                 "for 250)"),
    _option("--budget", forwarded=False, type=parse_duration, default=None, metavar="DURATION",
            help="wall-clock time of the whole training run, as for plan --budget: train DATASET fits the "
                 "run plan to it (or extends it, keeping what is trained); with one -c and one -f, that "
                 "fold's training time; with --cluster and in autoseg jobs, split evenly over the jobs; 90 "
                 "(minutes), 90m, 1.5h, 2h30m (default: the run plan's; without one, on a CPU without "
                 "--epochs 60 minutes per fold, on a GPU nnU-Net's 1000 epochs)"),
    _option("--batch-size", type=_workers, default=None, help="patches per iteration (default: the plan's)"),
    _option("--learning-rate", type=_positive_float, default=None,
            help="initial learning rate of SGD (default: 0.01, nnU-Net's; 0.1 with the short-run recipe)"),
    _option("--schedule", choices=("auto", "nnunet", "short"), default=None,
            help="optimiser recipe: nnunet (momentum 0.99, lr 0.01, no warm-up), short (momentum 0.9, lr 0.1, "
                 "10%% warm-up: converges faster in a few thousand iterations) or auto (default: short when "
                 "the run is expected to be shorter than 5,000 iterations)"),
    _option("--warmup", type=float, default=None, metavar="FRACTION",
            help="linear learning-rate warm-up over this share of the epochs before the poly decay "
                 "(default 0, nnU-Net's schedule)"),
    _option("--seed", type=int, default=None, help="seed of every random draw (default 12345)"),
    _option("--deterministic", action="store_true", default=None,
            help="bitwise reproducible batches and deterministic torch kernels (slower)"),
    _option("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
            help="training arithmetic: auto (bf16 where the device has bf16 units: GPUs of compute "
                 "capability 8.0 and later, CPUs with AVX512-BF16 or AMX; fp16 with loss scaling on older "
                 "GPUs; else fp32), fp32, bf16, fp16 (CUDA)"),
    _option("--device", default="auto", help="auto, cpu, cuda or cuda:N"),
    _option("-j", "--workers", type=int, default=None,
            help="data-loading processes (default: one per usable core but one, shared by the processes of "
                 "a torchrun node; validation gets half as many; 0: in-process)"),
    _option("--checkpoint-every", type=_workers, default=None, metavar="EPOCHS",
            help="epochs between checkpoint_latest.pt writes (default 5)"),
    _option("--no-validation", action="store_true", help="skip the final sliding-window validation"),
    _option("--no-validation-tta", dest="validation_mirroring", action="store_false",
            help="final validation without mirroring (about 8x faster in 3D; Dice a little lower than with "
                 "the TTA that predict uses)"),
    _option("--pretrained", default=None, metavar="MODEL.ZIP[:CONFIG]",
            help="fine-tune: initialise a fresh run from an exported model (configuration default: -c)"),
    _option("--pretrained-fold", default=None, metavar="FOLD",
            help="which exported fold initialises the network (default: 0)"),
    _option("--early-stop", type=_workers, default=None, metavar="PATIENCE",
            help="stop a fold when the smoothed validation pseudo-Dice has not improved for PATIENCE epochs "
                 "(the final checkpoint is saved as usual and the reason recorded; works with --budget). "
                 "Default: train the planned length"),
    _option("--log", nargs="+", choices=("tensorboard", "mlflow"), default=None, metavar="TRACKER",
            help="also record the run in TensorBoard (event files in the fold folder's tensorboard/; extra "
                 "[tensorboard]) and/or MLflow (WORKSPACE/mlruns; extra [mlflow]). Default: log.jsonl and "
                 "progress.png only"),
    _option("--freeze-encoder-epochs", type=int, default=None, metavar="EPOCHS",
            help="with --pretrained: first epochs in which the transferred encoder is not updated"),
)


def _add_workspace(parser: argparse.ArgumentParser, default_ws: str, help: str | None = None) -> None:
    """``-w/--workspace``, as every command that reads or writes a workspace takes it."""
    parser.add_argument("-w", "--workspace", type=Path, default=Path(default_ws), help=help)


def _add_run_selection(parser: argparse.ArgumentParser, default_ws: str) -> None:
    """What a training run is of (``train`` and ``jobs``): the dataset, its workspace, configurations and folds."""
    parser.add_argument("dataset", metavar="DATASET")
    _add_workspace(parser, default_ws)
    parser.add_argument("-c", "--config", nargs="+", default=None,
                        help="configuration(s) (default: every planned one, then model selection)")
    parser.add_argument("-f", "--fold", nargs="+", default=None,
                        help="0-4 or all (default: the five cross-validation folds)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    for option in TRAINING_OPTIONS:
        option.add_to(parser)


def build_parser(default_ws: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``default_ws``: the workspace default (``None``: from the environment, see
    :func:`_default_workspace`)."""
    default_ws = default_ws or _default_workspace()
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
    v.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: auto)")


def _add_plan_command(sub, default_ws: str) -> None:
    pl = sub.add_parser("plan", help="verify, fingerprint and plan a dataset")
    pl.add_argument("raw_dir", type=Path, metavar="RAW_DIR")
    _add_workspace(pl, default_ws, help="workspace folder (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    pl.add_argument("--preset", default="default", help="planner preset: default, resenc-m, resenc-l, resenc-xl")
    pl.add_argument("--gpu-memory", type=_positive_float, default=None, metavar="GB",
                    help="accelerator memory target (default: the preset's, else 8 as nnU-Net, or the CUDA "
                         "device's memory when less)")
    pl.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: auto)")
    pl.add_argument("--no-preprocess", action="store_true", help="stop after planning")
    pl.add_argument("--budget", type=parse_duration, default=None, metavar="DURATION",
                    help="wall-clock time of the whole training run (training, validation, model selection): "
                         "fit a run plan to it (which configurations and folds, how long each; stored in "
                         "run_plan.json and followed by train DATASET) and every configuration's plan to one "
                         "fold's time (smaller batch, then patch, spacing, width, patch; trade-offs printed and "
                         "stored in plans.json): 90 (minutes), 90m, 1.5h, 2h30m. Default: nnU-Net's plans, from "
                         "memory alone, and nnU-Net's AutoML")
    pl.add_argument("--min-iterations", type=_workers, default=None, metavar="N",
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
    _add_workspace(pp, default_ws, help="workspace folder (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    pp.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configurations to preprocess (default: every planned one)")
    pp.add_argument("-j", "--workers", type=_workers, default=None,
                    help="parallel processes (default: from cores, free memory and the largest case)")


def _add_evaluate_command(sub, default_ws: str) -> None:
    ev = sub.add_parser("evaluate", help="Dice, IoU, HD95 and NSD of predicted label maps against references")
    ev.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="predicted label maps <case><ending>")
    ev.add_argument("gt_dir", type=Path, metavar="GT_DIR", help="reference label maps, same names")
    ev.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="label values or names (default: the dataset's foreground labels, else every nonzero "
                         "value in the references)")
    ev.add_argument("--dataset", default=None, metavar="NAME", help="planned dataset whose labels to use")
    _add_workspace(ev, default_ws, help="workspace of --dataset (default: $AUTOSEG_WORKSPACE or ./autoseg_workspace)")
    ev.add_argument("--predicted-only", action="store_true",
                    help="score only the reference cases that have a prediction (default: a missing one is an error)")
    ev.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: one per core)")
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
    _add_run_selection(t, default_ws)
    _add_training_options(t)
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
    _add_run_selection(jb, default_ws)
    jb.add_argument("--format", choices=("shell", "slurm"), default="shell",
                    help="shell: the commands in dependency waves; slurm: sbatch submissions chained with "
                         "--dependency=afterok")
    jb.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                    help="with --format slurm: an sbatch option for every job, e.g. --sbatch=--partition=gpu "
                         "--sbatch=--gres=gpu:1 (repeatable)")
    _add_training_options(jb)


def _add_predict_command(sub, default_ws: str) -> None:
    pr = sub.add_parser("predict", help="segment a folder of images with trained folds")
    pr.add_argument("dataset", metavar="DATASET")
    pr.add_argument("-i", "--input", type=Path, required=True, metavar="IMAGES_DIR",
                    help="folder of images (MSD naming, or nnU-Net's <case>_0000 per channel), or of DICOM: every "
                         "image series below it is one case, named by its folder (extra [dicom])")
    pr.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR",
                    help="folder the label maps are written to (<case> + the images' ending; .nii.gz for DICOM)")
    _add_workspace(pr, default_ws)
    pr.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configuration, several (their probabilities averaged), or best: best.json's choice with "
                         "its postprocessing (default: best once `autoseg find-best` ran, else 3d_fullres)")
    pr.add_argument("-f", "--fold", nargs="+", default=None, metavar="FOLD",
                    help="folds whose networks are averaged (default: every trained one)")
    pr.add_argument("--folds", nargs="+", dest="fold", help=argparse.SUPPRESS)  # old spelling, one release
    pr.add_argument("--step", type=_positive_float, default=0.5, help="sliding-window step, fraction of the patch")
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
                    help="run the networks with torch (default); compiled: torch.compile first (10-15 s per "
                         "network, then 2%% faster 3D passes on an AVX2 CPU in fp32; bf16 and GPUs not measured); "
                         "or as "
                         "ONNX with onnxruntime on the CPU (extra [onnx]; a fold's network.onnx is made from its "
                         "checkpoint when missing)")


def _add_find_best_command(sub, default_ws: str) -> None:
    fb = sub.add_parser("find-best", help="rank cross-validated configurations and pairs; choose postprocessing")
    fb.add_argument("dataset", metavar="DATASET")
    _add_workspace(fb, default_ws)
    fb.add_argument("-c", "--config", nargs="+", default=None, metavar="CONFIG",
                    help="configurations to consider (default: every planned one with all folds trained)")
    fb.add_argument("--configs", nargs="+", dest="config", help=argparse.SUPPRESS)  # old spelling, one release
    fb.add_argument("-j", "--workers", type=_workers, default=None, help="parallel processes (default: one per core)")


def _add_export_command(sub, default_ws: str) -> None:
    ex = sub.add_parser("export", help="write trained models (plans, weights, summaries) to one zip")
    ex.add_argument("dataset", metavar="DATASET")
    ex.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.ZIP", help="zip to write")
    _add_workspace(ex, default_ws)
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
    _add_workspace(im, default_ws)
    im.add_argument("--overwrite", action="store_true",
                    help="replace differing plans (kept as plans.<hash>.json) and fold folders")


def _add_serve_command(sub, default_ws: str) -> None:
    sv = sub.add_parser("serve", help="serve trained models over HTTP (3D Slicer's MONAI Label extension, "
                                      "POST /v1/segment/DATASET); extra [serve]")
    sv.add_argument("datasets", nargs="*", metavar="DATASET",
                    help="datasets to serve (default: every one of the workspace with a trained or imported model)")
    _add_workspace(sv, default_ws)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    sv.add_argument("-c", "--config", default=None,
                    help="configuration of every served dataset (default: best.json's choice, else 3d_fullres, "
                         "else the first trained one)")
    sv.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                    help="require 'Authorization: Bearer <token>' with the token in FILE (default: no token)")
    sv.add_argument("--queue", type=_workers, default=4,
                    help="requests that may wait per model while one runs; beyond: 503 (default: 4)")
    sv.add_argument("--max-upload-mb", type=_positive_float, default=1024.0,
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
    _add_workspace(rp, default_ws)
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


def _cmd_verify(args) -> int:
    from autoseg import api

    spec = api.verify(args.raw_dir, num_workers=args.workers)
    print(f"{args.raw_dir}: OK, dataset '{spec.name}' ({len(spec.training)} training, {len(spec.test)} test cases, "
          f"{spec.num_channels} channel(s), {spec.num_classes - 1} foreground label(s))")
    print(f"next: autoseg plan {args.raw_dir}")
    return 0


def _cmd_plan(args) -> int:
    from autoseg import api
    from autoseg.planning.summary import plans_table

    budget = {} if args.min_iterations is None else {"min_iterations": args.min_iterations}
    result = api.plan(args.raw_dir, args.workspace, preset=args.preset, memory_gb=args.gpu_memory,
                      num_workers=args.workers, preprocess=not args.no_preprocess, budget_minutes=args.budget,
                      device=args.device, **budget)
    if result.fingerprint_reused:
        print(f"dataset unchanged since the last run: reused {result.paths.fingerprint}")
    if result.dataset_report is not None:
        from autoseg.fingerprint.report import format_report

        print(format_report(result.dataset_report) + f"\n(also in {result.paths.dataset_report})\n")
    print(plans_table(result.plans))
    if result.run_plan is not None:
        from autoseg.planning.run_plan import run_plan_table

        print("\n" + run_plan_table(result.run_plan) + f"\n(also in {result.paths.run_plan})")
    if args.budget is None:
        advice = api.cpu_budget_advice(result.plans, args.workspace, args.device, **budget)
        if advice:
            print("\n" + advice)
    print(f"\nwrote {result.paths.plans}")
    if result.preprocessing is not None:
        from autoseg.preprocessing.run import preprocess_summary

        print("preprocessed:\n" + preprocess_summary(result.preprocessing))
    name = result.plans.dataset_name
    ws = "" if args.workspace == Path(_default_workspace()) else f" -w {args.workspace}"
    print(f"\ndataset name: {name}; next: autoseg train {name}{ws}"
          + (" (it follows the run plan)" if result.run_plan is not None else ""))
    return 0


def _cmd_preprocess(args) -> int:
    from autoseg import api
    from autoseg.preprocessing.run import preprocess_summary

    result = api.preprocess(args.workspace, args.dataset, configs=args.config, num_workers=args.workers)
    print("preprocessed:\n" + preprocess_summary(result))
    return 0


def _cmd_evaluate(args) -> int:
    from autoseg import api
    from autoseg.evaluation.folder import parse_regions, summary_table

    summary = api.evaluate(args.pred_dir, args.gt_dir, workspace=args.workspace, dataset=args.dataset,
                           num_workers=args.workers, labels=args.labels, output=args.output,
                           nsd_tolerance_mm=args.nsd_tolerance, predicted_only=args.predicted_only,
                           roi_dir=args.roi, regions=parse_regions(args.regions) if args.regions else None)
    print(summary_table(summary))
    print(f"\nwrote {args.output or args.pred_dir / 'summary.json'}")
    return 0


def _cmd_train(args) -> int:
    from autoseg import api

    overrides = dict(epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                     validation_iterations=args.validation_iterations, batch_size=args.batch_size,
                     validation_mirroring=None if args.validation_mirroring else False,
                     learning_rate=args.learning_rate, warmup_fraction=args.warmup, schedule=args.schedule,
                     seed=args.seed,
                     deterministic=args.deterministic,
                     precision=args.precision, num_workers=args.workers, checkpoint_every=args.checkpoint_every,
                     pretrained=args.pretrained, pretrained_fold=args.pretrained_fold,
                     freeze_encoder_epochs=args.freeze_encoder_epochs, early_stop_patience=args.early_stop,
                     trackers=tuple(args.log) if args.log else None)
    single = args.config is not None and len(args.config) == 1 and args.fold is not None and len(args.fold) == 1
    if args.job_timeout is not None and args.cluster is None:
        raise AutosegError("--job-timeout applies to the jobs of a --cluster run")
    if args.cluster is not None:
        if args.overwrite:
            raise AutosegError("--overwrite applies to one fold in this process, not to a cluster run")
        best = api.train_on_cluster(args.workspace, args.dataset, args.cluster, args.config, args.fold,
                                    budget_minutes=args.budget, train_flags=_forwarded_training_flags(args),
                                    device=args.device, precision=args.precision,
                                    job_timeout_minutes=args.job_timeout)
        if best is not None:
            from autoseg.evaluation.selection import selection_table

            print(selection_table(best))
        return 0
    if not single:
        if args.overwrite:
            raise AutosegError("--overwrite applies to one fold: give one -c and one -f")
        _, best = api.train_all(args.workspace, args.dataset, args.config, args.fold, budget_minutes=args.budget,
                                device=args.device, validate=not args.no_validation, allocation=args.allocation,
                                **overrides)
        if best is not None:
            from autoseg.evaluation.selection import selection_table

            print(selection_table(best))
        return 0
    distributed = _torchrun_spec()
    result = api.train(args.workspace, args.dataset, args.config[0], args.fold[0], device=args.device,
                       resume=args.resume, overwrite=args.overwrite, validate=not args.no_validation,
                       distributed=distributed, budget_minutes=args.budget, **overrides)
    if distributed is not None and not distributed.is_main:
        return 0
    st = result.state
    if result.already_finished:
        print(f"{result.folder}: already trained ({st.epoch} epochs); pass a larger --epochs to extend it")
    print(f"{args.config[0]} fold {args.fold[0]}: {st.epoch} epochs x {st.iterations_per_epoch} iterations, "
          f"best smoothed pseudo-Dice {st.best_ema_pseudo_dice:.3f}")
    if st.stop_reason:
        print(st.stop_reason)
    if result.validation_dice:
        print("validation Dice: " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a"
                                              for k, v in result.validation_dice.items()))
    print(f"model folder: {result.folder}")
    return 0


def _forwarded_training_flags(args) -> list[str]:
    """The training options given on this command line, spelled for ``autoseg train`` (every fold job gets them)."""
    return [word for option in TRAINING_OPTIONS if option.forwarded
            for word in option.spelled(getattr(args, option.dest, None))]


def _cmd_jobs(args) -> int:
    from autoseg import api

    print(api.job_script(args.workspace, args.dataset, args.format, args.config, args.fold,
                         budget_minutes=args.budget, train_flags=_forwarded_training_flags(args),
                         sbatch_options=args.sbatch, device=args.device, precision=args.precision), end="")
    return 0


def _torchrun_spec():
    """Rank information when started by torchrun (the only place its environment variables are read)."""
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    from autoseg.training.distributed import DistributedSpec

    return DistributedSpec(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                           local_rank=int(os.environ["LOCAL_RANK"]), master_addr=os.environ["MASTER_ADDR"],
                           master_port=int(os.environ["MASTER_PORT"]),
                           local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _cmd_predict(args) -> int:
    from autoseg import api

    config = args.config[0] if args.config and len(args.config) == 1 else args.config
    api.check_predict(args.workspace, args.dataset, args.input, config, args.fold,
                      args.output_format)  # before any message
    print(api.describe_configuration(args.workspace, args.dataset, config))
    r = api.predict(args.workspace, args.dataset, args.input, args.output, config, args.fold,
                    args.save_probabilities, args.step, not args.no_tta, args.overwrite, args.continue_,
                    args.device, args.precision, skip_bad=args.skip_bad, roi_dir=args.roi, runtime=args.runtime,
                    output_format=args.output_format)
    print(f"wrote {len(r.written)} segmentation(s) to {r.output_dir}"
          + (f"; skipped {len(r.skipped)} already present" if r.skipped else ""))
    if r.failed:
        for problems in r.failed.values():
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
        print(f"error: {len(r.failed)} input case(s) refused, the others predicted (listed in {r.failures_file})",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _cmd_export(args) -> int:
    from autoseg import api

    m = api.export_model(args.workspace, args.dataset, args.output, args.config, args.checkpoint, args.overwrite,
                         args.fmt)
    folds = "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in m.folds.items())
    print(f"wrote {args.output} ({m.dataset}: {folds}; {args.output.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_import(args) -> int:
    from autoseg import api

    r = api.import_model(args.zip, args.workspace, args.overwrite)
    folds = "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in r.manifest.folds.items())
    print(f"imported {r.manifest.dataset} ({folds}) into {r.root}: {len(r.written)} file(s) written"
          + (f", {len(r.unchanged)} already there" if r.unchanged else ""))
    print(f"predict with: autoseg predict {r.manifest.dataset} -w {args.workspace} -i IMAGES_DIR -o OUT_DIR")
    return 0


def _cmd_report(args) -> int:
    from autoseg import api

    print(f"wrote {api.report(args.workspace, args.dataset, args.config, args.fold)}")
    return 0


def _cmd_find_best(args) -> int:
    from autoseg import api
    from autoseg.evaluation.selection import selection_table

    best = api.find_best(args.workspace, args.dataset, args.config, num_workers=args.workers)
    _, pp = api.load_best(args.workspace, args.dataset)
    print(selection_table(best, pp))
    print(f"\nwrote {api.load_context(args.workspace, args.dataset).paths.best} and its postprocessing.json")
    return 0


def _cmd_demo(args) -> int:
    from dataclasses import replace

    from autoseg import api, synthetic

    if args.make_data is not None:
        if args.kind not in synthetic.PRESETS:
            raise AutosegError(f"--kind {args.kind}: unknown; available: {', '.join(synthetic.PRESETS)}")
        spec = replace(synthetic.PRESETS[args.kind], seed=args.seed)
        out = _make_data(args.make_data, spec)
        print(f"wrote synthetic dataset '{spec.name}' to {out}")
        return 0
    r = api.demo(args.workspace, seed=args.seed, budget_minutes=args.budget, device=args.device)
    fmt = lambda d: ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in (d or {}).items())
    print(f"\ndemo finished: model {r['model']}\n  cross-validation Dice (fold 0): {fmt(r['validation_dice'])}"
          f"\n  test-set Dice ({r['predictions']}): {fmt(r['test_dice'])}")
    return 0


def _is_dicom_convert(args) -> bool:
    """A DICOM folder given without file patterns: its series and annotations make the dataset."""
    from autoseg.io.dicom_series import is_dicom_folder

    patterns = (args.images, args.labels, args.roi, args.test_images, args.test_roi, args.map, args.label_names,
                args.channel_names)
    return not any(patterns) and is_dicom_folder(args.source)


def _cmd_convert(args) -> int:
    from autoseg import api
    from autoseg.io.convert import ConvertSpec, parse_label_map

    if args.spec is not None:
        given = [o for o, v in (("--images", args.images), ("--labels", args.labels), ("--roi", args.roi),
                                ("--test-images", args.test_images), ("--test-roi", args.test_roi),
                                ("--map", args.map), ("--label-names", args.label_names),
                                ("--channel-names", args.channel_names), ("--name", args.name)) if v]
        if given:
            raise AutosegError(f"--spec {args.spec}: give the patterns either in the file or as options, not both "
                               f"({', '.join(given)})")
        spec = ConvertSpec.from_json(args.spec)
    elif _is_dicom_convert(args):
        from autoseg.io.dicom_dataset import DicomConvertSpec

        spec = DicomConvertSpec(args.name)
    else:
        if not args.images or not args.labels:
            raise AutosegError("convert: --images and --labels are required (or --spec FILE)")
        spec = ConvertSpec(tuple(args.images), args.labels, args.roi, tuple(args.test_images), args.test_roi,
                           parse_label_map(args.map), tuple(args.label_names), tuple(args.channel_names), args.name)
    out = api.convert(args.source, args.out_dir, spec)
    print(f"wrote {out} (nnU-Net v2 raw layout); next: autoseg plan {out}")
    return 0


def _cmd_serve(args) -> int:
    from autoseg.errors import require_extra
    from autoseg.server import ServeOptions, serve
    from autoseg.workflow.serving import load_served_model, servable_datasets

    for module in ("fastapi", "uvicorn", "python_multipart"):  # before any model is loaded
        require_extra(module, "serve", "autoseg serve")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            raise AutosegError(f"{args.token_file}: cannot read the token file ({e.strerror})") from None
        if not token:
            raise AutosegError(f"{args.token_file}: the token file is empty")
    studies = None
    if args.studies is not None:  # an unreachable PACS fails here, before any model is loaded
        from autoseg.server.dicomweb import connect

        studies = connect(args.studies)
        print(f"datastore: the DICOMweb server at {studies.url}", flush=True)
    contexts = servable_datasets(args.workspace, args.datasets)
    models = []
    for ctx in contexts:
        models.append(load_served_model(ctx, args.config, args.device, mirror=not args.no_tta, runtime=args.runtime))
        print(f"loaded {models[-1].description}", flush=True)
    print(f"serving {', '.join(m.name for m in models)} at http://{args.host}:{args.port} "
          f"(GET /info/, POST /infer/MODEL, POST /v1/segment/MODEL, GET /healthz)", flush=True)
    serve(models, args.host, args.port, ServeOptions(queue=args.queue, max_upload_mb=args.max_upload_mb,
                                                    token=token), studies=studies)
    return 0


def _make_data(out: Path, spec) -> Path:
    from autoseg import synthetic

    if out.exists() and any(out.iterdir()):
        raise AutosegError(f"{out}: folder exists and is not empty; choose another folder")
    return synthetic.make_dataset(out, spec)


_COMMANDS = {"predict": _cmd_predict, "train": _cmd_train, "verify": _cmd_verify, "plan": _cmd_plan,
             "preprocess": _cmd_preprocess, "demo": _cmd_demo, "evaluate": _cmd_evaluate,
             "find-best": _cmd_find_best, "export": _cmd_export, "import": _cmd_import, "report": _cmd_report,
             "convert": _cmd_convert, "serve": _cmd_serve, "jobs": _cmd_jobs}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 the machine refused a read or write: disk full, permission
    denied ..., 2 bad input, 3 ``predict --skip-bad`` refused some inputs, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except AutosegError as e:
        for line in e.render(_flag):
            print(f"error: {line}", file=sys.stderr)
        if len(e.problems) > 1:
            print(f"error: {len(e.problems)} problems found; nothing was written", file=sys.stderr)
        return EXIT_USER_ERROR
    except JobsFailed as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except OSError as e:
        # disk full, permission denied, read-only file system ...: every writer is atomic, so nothing partial is
        # left; say which path, without a traceback
        where = e.filename or "autoseg"
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
