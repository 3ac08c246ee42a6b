"""Trainer callbacks: checkpoints, ``log.jsonl``, ``progress.png``, the console line. Only the main process gets
them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from autoseg.nn.checkpoint import save_checkpoint, to_json_field
from autoseg.schema.base import atomic_path, atomic_write_text, from_jsonable, to_jsonable
from autoseg.schema.training import EpochLog
from autoseg.training.trainer import Callback, Trainer, unwrap
from autoseg.workspace import FoldPaths


def checkpoint_payload(trainer: Trainer) -> dict:
    """Everything needed to resume: weights, optimiser, grad scaler, run state, config, plans hash.

    No random-generator state: training draws nothing from torch's global generator (initial weights are seeded
    from the config, every batch from its seeded stream at ``state.batches_drawn``), so a resumed run is
    bit-identical to an uninterrupted one without it.
    """
    payload = {
        "model": unwrap(trainer.model).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "grad_scaler": trainer.scaler.state_dict(),
        "state": to_json_field(trainer.state.to_dict()),
        "train_config": to_json_field(to_jsonable(trainer.config)),
        "plans_sha256": trainer.config.plans_sha256,
    }
    if trainer.semi is not None:
        payload["teacher"] = trainer.semi.state_dict()
    return payload


class CheckpointCallback(Callback):
    """``checkpoint_latest.pt`` every ``every`` epochs, ``checkpoint_best.pt`` when the smoothed pseudo-Dice
    improves, ``checkpoint_final.pt`` at the end."""

    def __init__(self, folder: FoldPaths, every: int):
        self.folder = folder
        self.every = max(1, every)

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        st = trainer.state
        if st.ema_pseudo_dice is not None and st.ema_pseudo_dice > st.best_ema_pseudo_dice:
            st.best_ema_pseudo_dice = st.ema_pseudo_dice
            save_checkpoint(self.folder.best_checkpoint, checkpoint_payload(trainer))
        if st.epoch % self.every == 0 and st.epoch < st.total_epochs:
            save_checkpoint(self.folder.latest_checkpoint, checkpoint_payload(trainer))

    def on_train_end(self, trainer: Trainer) -> None:
        save_checkpoint(self.folder.final_checkpoint, checkpoint_payload(trainer))
        # the final checkpoint supersedes the latest one (and is what an extension resumes from)
        self.folder.latest_checkpoint.unlink(missing_ok=True)


class JsonlLogCallback(Callback):
    """Appends one :class:`EpochLog` line per epoch to ``log.jsonl``.

    On resume, lines of epochs after the checkpoint (run again now) are dropped and the rest become the
    trainer's history.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_start(self, trainer: Trainer) -> None:
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = from_jsonable(EpochLog, json.loads(line))
                except (ValueError, TypeError, KeyError):
                    continue  # a line cut by a kill
                if entry.epoch < trainer.state.epoch:
                    kept.append(entry)
        trainer.history[:] = kept
        atomic_write_text(self.path, "".join(json.dumps(to_jsonable(e)) + "\n" for e in kept))

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        # appended, not rewritten: a line cut by a kill or a full disk is dropped when the run resumes
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(to_jsonable(log)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from e


class ProgressPlotCallback(Callback):
    """Redraws ``progress.png`` (losses, pseudo-Dice, learning rate, epoch time) after an epoch, and at the end.

    A redraw takes about a second (matplotlib); with epochs of a few seconds, as short budgeted runs have, drawing
    after every one took a third of the training time. So it redraws only once ``share`` of the time since the
    last drawing would pay for it (at most ~10% of the run by default), and always at the end.
    """

    def __init__(self, path: Path, share: float = 0.1):
        self.path = Path(path)
        self.share = share
        self._last_end: float | None = None
        self._last_cost = 0.0

    def _draw(self, trainer: Trainer) -> None:
        start = time.perf_counter()
        plot_progress(trainer.history, self.path)
        self._last_end = time.perf_counter()
        self._last_cost = self._last_end - start

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        if self._last_end is None or (time.perf_counter() - self._last_end) * self.share >= self._last_cost:
            self._draw(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self._draw(trainer)


def plot_progress(history: list[EpochLog], path: Path) -> None:
    """Draw the training curves to ``path`` (PNG, written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        return
    epochs = [h.epoch + 1 for h in history]
    fig = Figure(figsize=(10, 8), dpi=80)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    ax1.plot(epochs, [h.train_loss for h in history], label="train loss")
    ax1.plot(epochs, [h.val_loss for h in history], label="validation loss")
    ax1b = ax1.twinx()
    ax1b.plot(epochs, [h.ema_pseudo_dice for h in history], "g-", label="pseudo-Dice (smoothed)")
    for c in range(len(history[-1].pseudo_dice)):
        ax1b.plot(epochs, [h.pseudo_dice[c] if c < len(h.pseudo_dice) else float("nan") for h in history],
                  ":", label=f"pseudo-Dice class {c + 1}")
    ax1b.set_ylim(0, 1)
    ax1.set_ylabel("loss")
    ax1b.set_ylabel("pseudo-Dice")
    ax1.legend(loc="upper left")
    ax1b.legend(loc="upper right", fontsize=7)
    ax2.plot(epochs, [h.epoch_seconds for h in history], label="epoch time")
    ax2.plot(epochs, [h.data_wait_seconds for h in history], label="waiting for data")
    ax2.set_ylabel("s")
    ax2.legend()
    ax3.plot(epochs, [h.learning_rate for h in history])
    ax3.set_ylabel("learning rate")
    ax3.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(Path(path), keep_suffix=True) as tmp:
        fig.savefig(tmp)


class ConsoleCallback(Callback):
    """One line per epoch with losses, pseudo-Dice, times and the run's ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        if not self.enabled:
            return
        st = trainer.state
        per_epoch = st.train_seconds / max(1, st.epoch)
        eta = per_epoch * (st.total_epochs - st.epoch)
        dice = "/".join(f"{d:.3f}" for d in log.pseudo_dice)
        print(f"epoch {log.epoch + 1}/{st.total_epochs}: loss {log.train_loss:.4f} (val {log.val_loss:.4f}), "
              f"pseudo-Dice {dice} (smoothed {log.ema_pseudo_dice:.3f}), lr {log.learning_rate:.2e}, "
              f"{log.epoch_seconds:.1f} s (data wait {log.data_wait_seconds:.1f} s), ETA {hms(eta)}", flush=True)


def hms(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def fold_callbacks(folder: FoldPaths, checkpoint_every: int, progress: bool) -> list[Callback]:
    """What the main process of a fold's run records: checkpoints, ``log.jsonl``, ``progress.png``, the console."""
    return [CheckpointCallback(folder, checkpoint_every), JsonlLogCallback(folder.log),
            ProgressPlotCallback(folder.progress_plot), ConsoleCallback(progress)]
