"""Experiment trackers as trainer callbacks: TensorBoard event files and MLflow runs, both optional.

``train --log tensorboard`` writes ``<fold folder>/tensorboard/`` (open it with ``tensorboard --logdir``);
``train --log mlflow`` logs to a local store in ``<workspace>/mlruns/``: an SQLite database ``mlflow.db`` and the
artifacts beside it (``mlflow ui --backend-store-uri sqlite:///<workspace>/mlruns/mlflow.db``); MLflow 3 refuses new
runs in its old plain-folder store. One run per fold named ``<dataset> <configuration> fold <k>``. Both record
per epoch the training and validation loss, the pseudo-Dice of every class (or region), the smoothed pseudo-Dice, the learning rate and the
epoch's seconds; the TrainConfig as parameters; ``progress.png`` at the end. The packages are the extras
``[tensorboard]`` and ``[mlflow]``, imported when a run asks for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autoseg.errors import AutosegError, require_extra
from autoseg.schema.base import to_jsonable
from autoseg.schema.training import EpochLog
from autoseg.training.trainer import Callback, Trainer

TRACKERS = ("tensorboard", "mlflow")


def _scalars(log: EpochLog, names: Sequence[str]) -> dict[str, float]:
    """The numbers of one epoch, by tracker key."""
    out = {"loss/train": log.train_loss, "loss/validation": log.val_loss,
           "pseudo_dice/smoothed": log.ema_pseudo_dice, "learning_rate": log.learning_rate,
           "time/epoch_seconds": log.epoch_seconds, "time/data_wait_seconds": log.data_wait_seconds}
    for name, dice in zip(names, log.pseudo_dice):
        out[f"pseudo_dice/{name}"] = dice
    return out


def _params(trainer: Trainer) -> dict[str, str]:
    return {k: str(v) for k, v in to_jsonable(trainer.config).items()}


class TensorBoardCallback(Callback):
    """TensorBoard event files in ``folder`` (``torch.utils.tensorboard``, needs the ``tensorboard`` package)."""

    def __init__(self, folder: Path, class_names: Sequence[str], progress_plot: Path | None = None):
        require_extra("tensorboard", "tensorboard", "train --log tensorboard")
        self.folder, self.names, self.plot = Path(folder), list(class_names), progress_plot
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run appends: TensorBoard shows the epochs it ran again as a second value at the same step
        self.writer = SummaryWriter(str(self.folder))
        if trainer.state.epoch == 0:
            self.writer.add_text("train_config", "\n".join(f"    {k}: {v}" for k, v in _params(trainer).items()))

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        for key, value in _scalars(log, self.names).items():
            self.writer.add_scalar(key, value, log.epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.plot is not None and self.plot.is_file():
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(self.plot).convert("RGB"))
            self.writer.add_image("progress", image, trainer.state.epoch, dataformats="HWC")
        self.writer.close()


class MlflowCallback(Callback):
    """An MLflow run per fold in the tracking store ``uri`` (needs the ``mlflow`` package).

    ``artifacts`` is where a new experiment keeps its artifacts (a ``file://`` URI); ``None`` leaves it to MLflow.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, class_names: Sequence[str],
                 progress_plot: Path | None = None, artifacts: str | None = None):
        self.mlflow = require_extra("mlflow", "mlflow", "train --log mlflow")
        if uri.startswith("sqlite:"):
            require_extra("sqlalchemy", "mlflow", "train --log mlflow")
        self.uri, self.experiment, self.run_name, self.artifacts = uri, experiment, run_name, artifacts
        self.names, self.plot = list(class_names), progress_plot
        self.run = None

    def on_train_start(self, trainer: Trainer) -> None:
        client = self.mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment(self.experiment, artifact_location=self.artifacts))
        self.client = client
        self.run = client.create_run(experiment_id, run_name=self.run_name)
        for key, value in _params(trainer).items():
            client.log_param(self.run.info.run_id, key, value[:500])

    def on_epoch_end(self, trainer: Trainer, log: EpochLog) -> None:
        run_id = self.run.info.run_id
        for key, value in _scalars(log, self.names).items():
            self.client.log_metric(run_id, key.replace("/", "_"), float(value), step=log.epoch)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.plot is not None and self.plot.is_file():
            self.client.log_artifact(self.run.info.run_id, str(self.plot))
        self.client.set_terminated(self.run.info.run_id)


def mlflow_store_uri(mlruns: Path) -> str:
    """The tracking URI of the local MLflow store in the folder ``mlruns``.

    Examples
    --------
    >>> mlflow_store_uri(Path("/tmp/ws/mlruns")).endswith("/tmp/ws/mlruns/mlflow.db")
    True
    """
    return "sqlite:///" + str(Path(mlruns).resolve() / "mlflow.db")


def tracker_callbacks(trackers: Sequence[str], fold_folder: Path, mlruns: Path, run_name: str,
                      class_names: Sequence[str], progress_plot: Path) -> list[Callback]:
    """The callbacks of ``trackers`` (names of :data:`TRACKERS`)."""
    unknown = [t for t in trackers if t not in TRACKERS]
    if unknown:
        raise AutosegError(f"tracker '{unknown[0]}': expected one of {', '.join(TRACKERS)}")
    out: list[Callback] = []
    if "tensorboard" in trackers:
        out.append(TensorBoardCallback(Path(fold_folder) / "tensorboard", class_names, progress_plot))
    if "mlflow" in trackers:
        Path(mlruns).mkdir(parents=True, exist_ok=True)  # SQLite makes the database file, not its folder
        out.append(MlflowCallback(mlflow_store_uri(mlruns), "autoseg", run_name, class_names, progress_plot,
                                  artifacts=(Path(mlruns).resolve() / "artifacts").as_uri()))
    return out
