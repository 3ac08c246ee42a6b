"""The command line's vocabulary: exit codes, the flags library messages name, value parsers, the help
formatter, and the options several commands share (declared once, forwarded to cluster jobs from the same table).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path



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
         "roi_dir": "--roi", "images": "--images", "labels": "--labels", "semi_supervised": "--semi-supervised",
         "pseudo_label_threshold": "--pseudo-label-threshold", "teacher_ema": "--teacher-ema",
         "unlabelled_weight": "--unlabelled-weight", "unlabelled_rampup": "--unlabelled-rampup",
         "unlabelled_batch_size": "--unlabelled-batch-size"}


#: ``autoseg demo --kind``: the presets of :data:`autoseg.synthetic.PRESETS` (named here so that the parser does not
#: import the image stack; a test keeps the two equal).
SYNTHETIC_KINDS = ('tiny', 'demo', 'anisotropic', 'multichannel', 'ct', 'large', 'cascade', '2d-rgb', 'brats-like')


def flag_for(name: str) -> str:
    """``"overwrite=True"`` -> ``--overwrite``; ``"num_workers=1"`` -> ``-j 1``; ``"device"`` -> ``--device``."""
    key, _, value = name.partition("=")
    flag = FLAGS.get(key, key)
    return flag if value in ("", "True") else f"{flag} {value}"


def parse_positive_int(value: str) -> int:
    """argparse type: an integer of at least 1 (epochs, iterations, batch size ...)."""
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def parse_positive_float(value: str) -> float:
    """argparse type: a number above 0."""
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


def default_workspace() -> str:
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
    _option("--epochs", type=parse_positive_int, default=None,
            help="epochs to train (default: from --budget; nnU-Net's 1000 on a GPU without one)"),
    _option("--iterations-per-epoch", type=parse_positive_int, default=None,
            help="training iterations per epoch (default 250, nnU-Net's; a budget sets its own)"),
    _option("--validation-iterations", type=parse_positive_int, default=None,
            help="patch-validation iterations per epoch (default: a fifth of the training iterations, 50 "
                 "for 250)"),
    _option("--budget", forwarded=False, type=parse_duration, default=None, metavar="DURATION",
            help="wall-clock time of the whole training run, as for plan --budget: train DATASET fits the "
                 "run plan to it (or extends it, keeping what is trained); with one -c and one -f, that "
                 "fold's training time; with --cluster and in autoseg jobs, split evenly over the jobs; 90 "
                 "(minutes), 90m, 1.5h, 2h30m (default: the run plan's; without one, on a CPU without "
                 "--epochs 60 minutes per fold, on a GPU nnU-Net's 1000 epochs)"),
    _option("--batch-size", type=parse_positive_int, default=None, help="patches per iteration (default: the plan's)"),
    _option("--learning-rate", type=parse_positive_float, default=None,
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
    _option("--checkpoint-every", type=parse_positive_int, default=None, metavar="EPOCHS",
            help="epochs between checkpoint_latest.pt writes (default 5)"),
    _option("--no-validation", action="store_true", help="skip the final sliding-window validation"),
    _option("--no-validation-tta", dest="validation_mirroring", action="store_false",
            help="final validation without mirroring (about 8x faster in 3D; Dice a little lower than with "
                 "the TTA that predict uses)"),
    _option("--pretrained", default=None, metavar="MODEL.ZIP[:CONFIG]",
            help="fine-tune: initialise a fresh run from an exported model (configuration default: -c)"),
    _option("--pretrained-fold", default=None, metavar="FOLD",
            help="which exported fold initialises the network (default: 0)"),
    _option("--early-stop", type=parse_positive_int, default=None, metavar="PATIENCE",
            help="stop a fold when the smoothed validation pseudo-Dice has not improved for PATIENCE epochs "
                 "(the final checkpoint is saved as usual and the reason recorded; works with --budget). "
                 "Default: train the planned length"),
    _option("--log", nargs="+", choices=("tensorboard", "mlflow"), default=None, metavar="TRACKER",
            help="also record the run in TensorBoard (event files in the fold folder's tensorboard/; extra "
                 "[tensorboard]) and/or MLflow (WORKSPACE/mlruns; extra [mlflow]). Default: log.jsonl and "
                 "progress.png only"),
    _option("--freeze-encoder-epochs", type=int, default=None, metavar="EPOCHS",
            help="with --pretrained: first epochs in which the transferred encoder is not updated"),
    _option("--semi-supervised", choices=("auto", "off", "pseudo_label", "copy_paste"), default=None,
            help="how the raw folder's imagesTrUnlabelled/ images are used: pseudo_label (the unlabelled patches "
                 "join each step with an EMA teacher's targets), copy_paste (labelled and unlabelled patches "
                 "mixed, the unlabelled parts with the teacher's targets), off (labelled cases only), auto "
                 "(default: pseudo_label in a long run of 5,000 iterations or more, a GPU run; off in a CPU "
                 "budget's short run, where the labelled cases teach more in the same time)"),
    _option("--unlabelled-batch-size", type=parse_positive_int, default=None, metavar="N",
            help="unlabelled patches per step (default: as many as labelled; a step then takes about twice "
                 "the time and memory)"),
    _option("--pseudo-label-threshold", type=float, default=None, metavar="P",
            help="least teacher probability for an unlabelled voxel to get a target (default 0.8)"),
    _option("--teacher-ema", type=float, default=None, metavar="DECAY",
            help="decay per step of the teacher's moving average of the weights (default 0.99)"),
    _option("--unlabelled-weight", type=float, default=None, metavar="W",
            help="weight of the loss on the teacher's targets (default 0.5)"),
    _option("--unlabelled-rampup", type=float, default=None, metavar="FRACTION",
            help="share of the run over which that weight ramps up (default 0.3)"),
)


def add_workspace(parser: argparse.ArgumentParser, default_ws: str, help: str | None = None) -> None:
    """``-w/--workspace``, as every command that reads or writes a workspace takes it."""
    parser.add_argument("-w", "--workspace", type=Path, default=Path(default_ws), help=help)


def add_run_selection(parser: argparse.ArgumentParser, default_ws: str) -> None:
    """What a training run is of (``train`` and ``jobs``): the dataset, its workspace, configurations and folds."""
    parser.add_argument("dataset", metavar="DATASET")
    add_workspace(parser, default_ws)
    parser.add_argument("-c", "--config", nargs="+", default=None,
                        help="configuration(s) (default: every planned one, then model selection)")
    parser.add_argument("-f", "--fold", nargs="+", default=None,
                        help="0-4 or all (default: the five cross-validation folds)")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    for option in TRAINING_OPTIONS:
        option.add_to(parser)


