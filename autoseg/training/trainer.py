"""The training loop: a short loop over injected parts (model, loss, optimiser, batches, callbacks).

Everything configurable is a :class:`~autoseg.schema.training.TrainConfig` field or an injected object; there is
nothing to subclass.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg.progress import bar as progress_bar
from autoseg.schema.training import EpochLog, TrainConfig
from autoseg.training.distributed import check_replicas
from autoseg.training.losses import region_targets
from autoseg.training.schedule import epochs_that_fit, learning_rate, plan_budget
from autoseg.training.semi_supervised import SemiSupervision

#: Training steps timed before a time budget fixes the epoch length (the first is discarded as warm-up).
CALIBRATION_STEPS = 4


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint so a killed run resumes exactly there.

    Attributes
    ----------
    epoch
        Epochs finished.
    total_epochs, iterations_per_epoch, validation_iterations
        Current plan of the run (a time budget can change them).
    batches_drawn, val_batches_drawn
        Position in the seeded training / validation batch streams.
    ema_pseudo_dice, best_ema_pseudo_dice
        Smoothed validation pseudo-Dice and its best value so far.
    train_seconds
        Wall time spent in the training loop so far (counts against a budget across resumes).
    calibrated
        A time budget has measured the step time and fixed the epoch length.
    best_epoch, best_epoch_dice
        Epochs finished when the smoothed pseudo-Dice last improved, and its value then (early stopping).
    stop_reason
        Why the run stopped before its planned length (early stopping), ``None`` otherwise.
    """

    total_epochs: int
    iterations_per_epoch: int
    validation_iterations: int
    epoch: int = 0
    batches_drawn: int = 0
    val_batches_drawn: int = 0
    ema_pseudo_dice: float | None = None
    best_ema_pseudo_dice: float = -1.0
    train_seconds: float = 0.0
    calibrated: bool = False
    best_epoch: int = 0
    best_epoch_dice: float | None = None
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


class Callback:
    """Hooks called by :class:`Trainer`; every method is optional."""

    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", log: EpochLog) -> None:
        pass

    def on_train_end(self, trainer: "Trainer") -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the smoothed validation pseudo-Dice has not improved for ``patience`` epochs.

    Runs on every rank (the pseudo-Dice is all-reduced, so every rank decides alike). The run then ends as if its
    planned length were reached: the final checkpoint is saved as usual, and ``state.stop_reason`` says why.
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, trainer: "Trainer", log: EpochLog) -> None:
        st = trainer.state  # the best so far lives in the state: a resumed run, on any rank, continues the count
        if st.ema_pseudo_dice is None:
            return
        if st.best_epoch_dice is None or st.ema_pseudo_dice > st.best_epoch_dice + self.min_delta:
            st.best_epoch_dice, st.best_epoch = st.ema_pseudo_dice, st.epoch
        elif st.epoch - st.best_epoch >= self.patience and st.epoch < st.total_epochs:
            st.stop_reason = (f"early stop after epoch {st.epoch}: the smoothed pseudo-Dice peaked at "
                              f"{st.best_epoch_dice:.4f} after epoch {st.best_epoch} and did not improve for "
                              f"{self.patience} epochs (of {st.total_epochs} planned)")
            st.total_epochs = st.epoch


def _region_confusion(logits: torch.Tensor, target: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """(3, regions) true positives, false positives, false negatives of each region (predicted: logit > 0, i.e.
    sigmoid > 0.5); voxels whose target is negative are ignored."""
    valid, t = region_targets(target, regions)
    pred = (logits > 0) & valid
    t = t.bool()
    axes = [0] + list(range(2, logits.ndim))
    return torch.stack([(pred & t).sum(axes), (pred & ~t).sum(axes), (~pred & t).sum(axes)]).double()


def _confusion(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(3, num_classes - 1) true positives, false positives, false negatives of the foreground classes.

    Voxels whose target is negative (outside the imaged region) are ignored.
    """
    pred = logits.argmax(1)
    tgt = target[:, 0].long()
    valid = tgt >= 0
    out = torch.zeros(3, num_classes - 1, dtype=torch.float64, device=logits.device)  # summed where they are made
    for c in range(1, num_classes):
        p, t = (pred == c) & valid, (tgt == c) & valid
        out[0, c - 1] = (p & t).sum()
        out[1, c - 1] = (p & ~t).sum()
        out[2, c - 1] = (~p & t).sum()
    return out


@dataclass
class Trainer:
    """Runs epochs of training steps and a patch-based validation, then calls the callbacks.

    Attributes
    ----------
    model
        The network (possibly wrapped in DistributedDataParallel); returns a list of logits with deep
        supervision, a tensor otherwise.
    loss
        ``loss(output, targets) -> scalar tensor``; ``targets`` is the list of per-scale targets.
    optimizer
        A torch optimiser whose learning rate the trainer sets every epoch.
    train_batches, val_batches
        Iterators of ``{"data": (B, C, *patch) float32, "target": [(B, 1, *scale) ...]}`` batches of numpy
        arrays or CPU tensors (pinned ones are copied to the device asynchronously).
    config
        The run's numbers.
    state
        Where the run is (fresh or from a checkpoint).
    device, precision, channels_last
        Where and how to compute (``precision``: ``fp32``, ``bf16`` or ``fp16``).
    num_classes
        Output classes including background.
    callbacks
        Checkpointing, logging, plotting ... (see :mod:`autoseg.training.callbacks`).
    autocast
        ``autocast(device, precision)`` context factory.
    all_reduce
        Sums a tensor over distributed ranks (identity when training on one process); the trainer's tensors are
        on ``device`` (an NCCL group reduces CUDA tensors only).
    check_replicas
        Called on every rank with the model after the last epoch, before the final callbacks (which write the final
        checkpoint); raises when the ranks' weights differ, returns their digest (``None`` on one process).
    progress
        Show a bar per epoch on a terminal (training, then validation iterations).
    frozen
        Parameter names not updated during the first ``config.freeze_encoder_epochs`` epochs (the epoch decides,
        so a resumed run freezes exactly as an uninterrupted one).
    regions
        Region-based training: the label values of every output channel; the pseudo-Dice is then per region.
    semi
        Semi-supervised training: the unlabelled batches, their teacher and how they join each step
        (:mod:`autoseg.training.semi_supervised`); ``None`` trains on the labelled batches only.
    replica_sha256
        Set by :meth:`fit`: the digest ``check_replicas`` returned.
    """

    model: torch.nn.Module
    loss: Callable[[Any, list[torch.Tensor]], torch.Tensor]
    optimizer: torch.optim.Optimizer
    train_batches: Iterator[dict]
    val_batches: Iterator[dict]
    config: TrainConfig
    state: TrainState
    device: torch.device
    precision: str
    channels_last: bool
    num_classes: int
    autocast: Callable[[torch.device, str], Any]
    callbacks: Sequence[Callback] = ()
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    check_replicas: Callable[[torch.nn.Module], str | None] = check_replicas
    progress: bool = True
    frozen: tuple[str, ...] = ()
    regions: tuple[tuple[int, ...], ...] | None = None
    semi: SemiSupervision | None = None
    history: list[EpochLog] = field(default_factory=list)
    replica_sha256: str | None = None
    #: when the last epoch's steps ended: its callbacks' time (checkpoints, plot, log) counts against a budget too
    _previous_epoch_end: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # -- steps ----------------------------------------------------------------------------------------------
    def _on_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A batch array on the device. The loader's pinned host tensors (training on CUDA) are copied
        asynchronously, so the copy overlaps the work queued before it; a numpy array (pageable memory) is copied
        synchronously, non_blocking or not."""
        t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
        return t.to(self.device, non_blocking=True)

    def _in_layout(self, data: torch.Tensor) -> torch.Tensor:
        if self.channels_last and data.ndim in (4, 5):
            return data.contiguous(memory_format=torch.channels_last if data.ndim == 4 else torch.channels_last_3d)
        return data

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        data = self._in_layout(self._on_device(batch["data"]))
        targets = [self._on_device(t) for t in batch["target"]]
        return data, targets

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimisation step; returns the loss, a 0-dim tensor on the device (reading its value waits for
        the step to finish). With :attr:`semi`, the step's unlabelled batch and its teacher targets join it."""
        data, targets = self._to_device(batch)
        terms = None
        if self.semi is not None:
            unlabelled = self._on_device(next(self.semi.batches)["data"])
            data, terms = self.semi.step(data, targets, unlabelled, self.state.batches_drawn,
                                         lambda: self.autocast(self.device, self.precision))
            data = self._in_layout(data)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast(self.device, self.precision):
            output = self.model(data)
            if terms is None:
                loss = self.loss(output, targets)
            else:
                loss = self.semi.loss(self.loss, output, terms, self._progress())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.semi is not None:
            self.semi.update_teacher(unwrap(self.model))
        return loss.detach()

    def _progress(self) -> float:
        """Share of the planned run done before this epoch (0 .. 1; per epoch, so a resumed run agrees)."""
        return min(1.0, self.state.epoch / max(1, self.state.total_epochs))

    @torch.inference_mode()
    def val_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and foreground confusion counts ``(3, scored)`` on one validation batch, both on the device."""
        data, targets = self._to_device(batch)
        with self.autocast(self.device, self.precision):
            output = self.model(data)
            loss = self.loss(output, targets)
        full_res = output[0] if isinstance(output, (list, tuple)) else output
        if self.regions:
            return loss.detach(), _region_confusion(full_res.float(), targets[0], self.regions)
        return loss.detach(), _confusion(full_res.float(), targets[0], self.num_classes)

    # -- epochs ---------------------------------------------------------------------------------------------
    def _calibrate(self, step_seconds: list[float]) -> None:
        st, cfg = self.state, self.config
        step = self._mean_over_ranks(statistics.median(step_seconds[1:]))
        remaining = cfg.budget_minutes * 60.0 - st.train_seconds
        plan = plan_budget(remaining, step, step / 3.0, cfg.iterations_per_epoch, cfg.validation_iterations)
        st.iterations_per_epoch = max(plan.iterations_per_epoch, len(step_seconds))
        st.validation_iterations = plan.validation_iterations
        st.total_epochs = st.epoch + plan.epochs
        st.calibrated = True

    def _mean_over_ranks(self, seconds: float) -> float:
        """The ranks' mean of a measured time (``seconds`` itself on one process).

        A time budget plans the run from measured times; each rank measures its own, and ranks that planned
        different numbers of iterations or epochs would wait for each other's collectives. The mean is the same
        number on every rank. The tensor is made on the model's device: an NCCL group reduces CUDA tensors only.
        """
        total = self.all_reduce(torch.tensor([seconds, 1.0], dtype=torch.float64, device=self.device))
        return float(total[0] / total[1])

    def _set_learning_rate(self) -> float:
        st, cfg = self.state, self.config
        lr = learning_rate(cfg.learning_rate, st.epoch, st.total_epochs, cfg.poly_exponent, cfg.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _freeze(self, frozen: bool) -> None:
        names = set(self.frozen)
        for name, p in self.model.named_parameters():
            if name in names:
                p.requires_grad_(not frozen)  # no gradient: SGD leaves the tensor and its momentum alone

    def run_epoch(self) -> EpochLog:
        st, cfg = self.state, self.config
        if self.frozen:
            self._freeze(st.epoch < cfg.freeze_encoder_epochs)
        lr = self._set_learning_rate()
        self.model.train()
        start = time.perf_counter()
        # the previous epoch's callbacks ran since it ended: with short epochs (2 s on Hippocampus) a checkpoint and
        # a plot an epoch took more time than the steps, and a budget counting only the steps overran by half
        between = 0.0 if self._previous_epoch_end is None else start - self._previous_epoch_end
        wait, losses, step_times, shown = 0.0, [], [], float("nan")
        # on a terminal a bar per epoch; in a log file only the line printed per epoch
        bar = progress_bar(st.iterations_per_epoch, f"epoch {st.epoch + 1}/{st.total_epochs}", "it", self.progress,
                           leave=False, lines=False)
        it = 0
        while it < st.iterations_per_epoch:
            t0 = time.perf_counter()
            batch = next(self.train_batches)
            wait += time.perf_counter() - t0
            losses.append(self.train_step(batch))
            if len(losses) > 1:
                # the previous step's loss: waits for that step, not for the one just queued, so the host prepares
                # the next batch while the device works and runs at most one step ahead (step times stay the
                # device's)
                shown = float(losses[-2])
            step_times.append(time.perf_counter() - t0)
            st.batches_drawn += 1
            it += 1
            if cfg.budget_minutes is not None and not st.calibrated and it == CALIBRATION_STEPS:
                self._calibrate(step_times)
                lr = self._set_learning_rate()  # the schedule now knows the run's length
                bar.total = st.iterations_per_epoch
                bar.set_description(f"epoch {st.epoch + 1}/{st.total_epochs}")
            bar.set_postfix(loss=f"{shown:.3f}", lr=f"{lr:.2e}")
            bar.update()
        bar.close()

        self.model.eval()
        scored = len(self.regions) if self.regions else self.num_classes - 1
        # on the model's device: the region counts are made there, and an NCCL group reduces CUDA tensors only
        val_losses, counts = [], torch.zeros(3, scored, dtype=torch.float64, device=self.device)
        bar = progress_bar(st.validation_iterations, f"epoch {st.epoch + 1} validation", "it", self.progress,
                           leave=False, lines=False)
        for _ in range(st.validation_iterations):
            t0 = time.perf_counter()
            batch = next(self.val_batches)
            wait += time.perf_counter() - t0
            vl, c = self.val_step(batch)
            val_losses.append(vl)
            counts += c
            st.val_batches_drawn += 1
            bar.update()
        bar.close()
        counts = self.all_reduce(counts)
        tp, fp, fn = counts
        dice = tuple((2 * tp / torch.clamp(2 * tp + fp + fn, min=1)).tolist())
        mean_dice = float(np.mean(dice)) if dice else 0.0
        m = cfg.ema_momentum
        st.ema_pseudo_dice = mean_dice if st.ema_pseudo_dice is None else m * st.ema_pseudo_dice + (1 - m) * mean_dice

        end = time.perf_counter()
        epoch_seconds = end - start
        st.train_seconds += self._mean_over_ranks(epoch_seconds + between)
        self._previous_epoch_end = end
        st.epoch += 1
        if cfg.budget_minutes is not None:
            st.total_epochs = max(st.epoch, epochs_that_fit(st.epoch, st.train_seconds, cfg.budget_minutes * 60.0))
        log = EpochLog(epoch=st.epoch - 1, train_loss=float(torch.stack(losses).double().mean()),
                       val_loss=float(torch.stack(val_losses).double().mean()) if val_losses else float("nan"),
                       pseudo_dice=dice, ema_pseudo_dice=float(st.ema_pseudo_dice), learning_rate=lr,
                       epoch_seconds=epoch_seconds, data_wait_seconds=wait, total_epochs=st.total_epochs,
                       step_seconds=float(np.median(step_times)))
        self.history.append(log)
        return log

    def fit(self) -> TrainState:
        """Train until ``state.total_epochs``; callbacks see every epoch."""
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.state.epoch < self.state.total_epochs:
            log = self.run_epoch()
            for cb in self.callbacks:
                cb.on_epoch_end(self, log)
        # before the final checkpoint: a diverged distributed run must not leave a "finished" fold behind
        self.replica_sha256 = self.check_replicas(self.model)
        if self.replica_sha256 is not None and self.progress:
            print(f"weights identical on all ranks: sha256 {self.replica_sha256}", flush=True)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.state
