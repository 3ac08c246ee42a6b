"""TrainConfig: every number of a training run, saved with the run (``train_config.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from autoseg.schema.base import OMIT_IF_NONE


@dataclass(frozen=True)
class TrainConfig:
    """One fold's training run. Any field can be overridden from the CLI; a different number is a field here,
    never a subclass.

    Attributes
    ----------
    dataset, configuration, fold
        What is trained: the workspace dataset, the plans configuration, the fold (``"0"``-``"4"`` or ``"all"``).
    epochs, iterations_per_epoch
        Length of training. nnU-Net's 1000 x 250 is a GPU budget; with ``budget_minutes`` they are derived from
        the measured speed instead.
    budget_minutes
        Wall-clock budget for the training loop (validation at the end excluded); ``None`` means use ``epochs``.
    validation_iterations
        Patch batches per epoch for the running pseudo-Dice.
    validation_mirroring
        The fold's final validation (its validation cases predicted whole, then scored) uses mirroring test-time
        augmentation, as nnU-Net's does and as ``autoseg predict`` does by default; ``False`` predicts each case
        once, about 8x (3D) or 4x (2D) faster, for quick runs and tests (its Dice is then a little lower than
        what ``predict`` with TTA gives).
    batch_size
        Patches per step; ``None`` takes the plans' batch size.
    learning_rate, momentum, weight_decay, poly_exponent, grad_clip
        SGD with Nesterov momentum, poly learning-rate decay, gradient-norm clip.
    warmup_fraction
        Share of the epochs over which the learning rate ramps up linearly before the poly decay (0: nnU-Net's
        schedule).
    schedule
        ``"nnunet"`` (the numbers above), ``"short"`` (:data:`autoseg.training.schedule.SHORT_RUN`: momentum 0.9,
        lr 0.1, 10% warm-up, for runs of a few thousand iterations) or ``"auto"``, resolved when a fresh run starts
        from its expected iterations (:func:`autoseg.training.schedule.choose_schedule`) and saved resolved;
        learning rate, momentum and warm-up given explicitly are kept either way.
    oversample_foreground
        Fraction of every batch forced to contain foreground.
    deep_supervision
        Train the auxiliary low-resolution outputs too.
    seed, deterministic
        Every random draw derives from ``seed``; ``deterministic`` also asks torch for deterministic kernels and
        makes data loading bitwise reproducible.
    precision
        ``"auto"`` (bf16 autocast on CPUs with native bf16 and on recent GPUs, else fp16 on CUDA), ``"fp32"``,
        ``"bf16"``, ``"fp16"``.
    channels_last
        Channels-last memory format; ``None`` = on with mixed precision and on CUDA.
    num_workers
        Background data-loading processes; ``None`` = from the cores.
    checkpoint_every
        Epochs between ``checkpoint_latest.pt`` writes.
    ema_momentum
        Smoothing of the validation pseudo-Dice that selects ``checkpoint_best.pt``.
    plans_sha256
        Hash of the plans this run was configured with.
    pretrained, pretrained_fold
        Fine-tuning: ``model.zip[:CONFIG]`` (an ``autoseg export``; the configuration defaults to the one trained)
        whose fold ``pretrained_fold`` initialises a fresh run's network where tensor names and shapes match.
    trackers
        Experiment trackers that also record the run: ``"tensorboard"``, ``"mlflow"``
        (:mod:`autoseg.training.tracking`); ``None``: only autoseg's own log.jsonl and progress.png.
    early_stop_patience
        Stop when the smoothed validation pseudo-Dice has not improved for this many epochs (``None``: train the
        planned length; composes with a budget, which still ends the run when its time is up).
    freeze_encoder_epochs
        Fine-tuning: for this many first epochs the transferred encoder tensors (``stem.*``, ``encoder.*``) are not
        updated, so the freshly initialised decoder and heads adapt to them before the whole network trains.
    semi_supervised
        How the dataset's unlabelled training images are used (:mod:`autoseg.training.semi_supervised`):
        ``"pseudo_label"``, ``"copy_paste"``, ``"off"`` (labelled cases only) or ``"auto"`` (the measured best
        method when the dataset has unlabelled images, else off), resolved when a run starts and saved resolved.
    unlabelled_batch_size
        Unlabelled patches per step; ``None``: as many as labelled ones (a step then costs about twice a
        supervised one, in time and memory).
    pseudo_label_threshold
        Least teacher probability for an unlabelled voxel to get a target (below: ignored).
    teacher_ema
        Decay of the teacher's exponential moving average of the weights, per step.
    unlabelled_weight, unlabelled_rampup
        Weight of the loss on teacher targets, reached after this share of the run (mean teacher's ramp).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset: str
    configuration: str
    fold: str
    plans_sha256: str
    epochs: int = 1000
    iterations_per_epoch: int = 250
    budget_minutes: float | None = None
    validation_iterations: int = 50
    validation_mirroring: bool = True
    batch_size: int | None = None
    learning_rate: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    warmup_fraction: float = 0.0
    schedule: str = "auto"
    oversample_foreground: float = 0.33
    deep_supervision: bool = True
    seed: int = 12345
    deterministic: bool = False
    precision: str = "auto"
    channels_last: bool | None = None
    num_workers: int | None = None
    checkpoint_every: int = 5
    ema_momentum: float = 0.9
    pretrained: str | None = None
    pretrained_fold: str = "0"
    freeze_encoder_epochs: int = 0
    schema_version: int = field(default=SCHEMA_VERSION)
    early_stop_patience: int | None = field(default=None, metadata=OMIT_IF_NONE)
    trackers: tuple[str, ...] | None = field(default=None, metadata=OMIT_IF_NONE)
    semi_supervised: str = "auto"
    unlabelled_batch_size: int | None = field(default=None, metadata=OMIT_IF_NONE)
    pseudo_label_threshold: float = 0.8
    teacher_ema: float = 0.99
    unlabelled_weight: float = 0.5
    unlabelled_rampup: float = 0.3


@dataclass(frozen=True)
class EpochLog:
    """One line of ``log.jsonl``.

    Attributes
    ----------
    epoch
        0-based epoch index.
    train_loss, val_loss
        Mean loss over the epoch's training / validation batches.
    pseudo_dice
        Per foreground class Dice on the validation patches (accumulated over the epoch's batches).
    ema_pseudo_dice
        Smoothed mean of ``pseudo_dice`` (selects the best checkpoint).
    learning_rate
        At the end of the epoch.
    epoch_seconds, data_wait_seconds
        Wall time of the epoch, and the part of it spent waiting for batches.
    step_seconds
        Median wall time of one training step (batch wait included) in the epoch.
    total_epochs
        Planned number of epochs at the end of this epoch (a time budget may change it).
    """

    epoch: int
    train_loss: float
    val_loss: float
    pseudo_dice: tuple[float, ...]
    ema_pseudo_dice: float
    learning_rate: float
    epoch_seconds: float
    data_wait_seconds: float
    total_epochs: int
    step_seconds: float = float("nan")


@dataclass(frozen=True)
class TransferredTensor:
    """One tensor of a fine-tuned network: taken from the pretrained checkpoint, or left as initialised.

    Attributes
    ----------
    name
        State-dict name (``encoder.0.0.conv.weight`` ...).
    shape
        Its shape in the network being trained.
    source_shape
        Its shape in the pretrained network; ``None`` when that network has no tensor of this name.
    transferred
        Loaded from the checkpoint (name and shape match).
    """

    name: str
    shape: tuple[int, ...]
    source_shape: tuple[int, ...] | None
    transferred: bool


@dataclass(frozen=True)
class TransferReport:
    """What fine-tuning took from a pretrained model (``pretrained_transfer.json`` in the fold folder).

    Attributes
    ----------
    source
        The exported model (``model.zip``).
    configuration, fold
        Which of its checkpoints.
    tensors
        Every tensor of the network being trained, in state-dict order.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    source: str
    configuration: str
    fold: str
    tensors: tuple[TransferredTensor, ...]
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def loaded(self) -> list[str]:
        return [t.name for t in self.tensors if t.transferred]

    @property
    def skipped(self) -> list[str]:
        return [t.name for t in self.tensors if not t.transferred]
