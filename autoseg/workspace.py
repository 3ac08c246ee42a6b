"""Every on-disk path of a workspace, as methods. No other module spells a workspace file name.

Layout::

    WS/<dataset>/dataset_spec.json, fingerprint.json, plans.json, run_plan.json, splits.json
    WS/<dataset>/preprocessed/<config>/<case>.{npy,json}
    WS/<dataset>/models/<config>/fold_<k>/...          (FoldPaths)
    WS/<dataset>/crossval/..., best.json, postprocessing.json

An exported model zip mirrors this layout (its member names are these paths relative to the dataset folder), so
:class:`DatasetPaths` built on an empty root gives the member names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Configurations whose preprocessed data are those of another configuration (same spacing and normalisation).
SHARED_PREPROCESSED = {"3d_cascade_fullres": "3d_fullres"}


def segmentation_file(folder: Path, case_id: str, file_ending: str) -> Path:
    """A case's label map in a folder of predictions (fold validation, cross-validation, ``autoseg predict``)."""
    return Path(folder) / f"{case_id}{file_ending}"


def probabilities_file(folder: Path, case_id: str) -> Path:
    """A case's class probabilities (``.npz``) beside its label map."""
    return Path(folder) / f"{case_id}.npz"


def summary_file(folder: Path) -> Path:
    """The evaluation of a folder of predictions."""
    return Path(folder) / "summary.json"


#: Checkpoint kinds of a fold folder: ``latest`` (a run in progress), ``best`` (best smoothed pseudo-Dice),
#: ``final`` (the run finished; what prediction loads).
CHECKPOINT_KINDS = ("latest", "best", "final")


@dataclass(frozen=True)
class FoldPaths:
    """Files of one trained fold: ``WS/<dataset>/models/<config>/fold_<k>/``."""

    root: Path

    def checkpoint(self, kind: str) -> Path:
        """``checkpoint_<kind>.pt`` (see :data:`CHECKPOINT_KINDS`)."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind {kind!r}: one of {', '.join(CHECKPOINT_KINDS)}")
        return self.root / f"checkpoint_{kind}.pt"

    @property
    def final_checkpoint(self) -> Path:
        """A fold is trained when this file exists."""
        return self.checkpoint("final")

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoint("latest")

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint("best")

    @property
    def is_trained(self) -> bool:
        return self.final_checkpoint.is_file()

    @property
    def train_config(self) -> Path:
        return self.root / "train_config.json"

    @property
    def log(self) -> Path:
        """``log.jsonl``: one :class:`autoseg.schema.training.EpochLog` per line."""
        return self.root / "log.jsonl"

    @property
    def progress_plot(self) -> Path:
        return self.root / "progress.png"

    @property
    def validation(self) -> Path:
        """Folder of the final validation: label maps in the raw geometry, probabilities, ``summary.json``."""
        return self.root / "validation"

    @property
    def validation_summary(self) -> Path:
        return summary_file(self.validation)

    def validation_segmentation(self, case_id: str, file_ending: str) -> Path:
        return segmentation_file(self.validation, case_id, file_ending)

    def validation_probabilities(self, case_id: str) -> Path:
        return probabilities_file(self.validation, case_id)

    @property
    def next_stage(self) -> Path:
        """Folder of a cascade's low-res fold holding its validation cases' segmentations on the next stage's grid
        (``<case>.npy``), the extra input the next stage trains on."""
        return self.root / "next_stage"

    def next_stage_segmentation(self, case_id: str) -> Path:
        return self.next_stage / f"{case_id}.npy"

    @property
    def transfer_report(self) -> Path:
        """What fine-tuning took from a pretrained model (:class:`autoseg.schema.training.TransferReport`)."""
        return self.root / "pretrained_transfer.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def dice_boxplot(self) -> Path:
        return self.root / "dice_boxplot.png"

    def overlay(self, case_id: str) -> Path:
        return self.root / "overlays" / f"{case_id}.png"

    def relative(self, path: Path) -> str:
        """``path`` relative to the fold folder, ``/``-separated (how the report links its figures)."""
        return Path(path).relative_to(self.root).as_posix()

    @property
    def onnx(self) -> Path:
        """The fold's network as ONNX (``autoseg export --format onnx``, or made by ``predict --runtime
        onnxruntime``), carrying the hash of the weights it was made from."""
        return self.root / "network.onnx"

    @property
    def exported_files(self) -> tuple[Path, ...]:
        """Files an exported model carries besides the checkpoint, when present (no patient images: validation
        predictions and overlays stay behind)."""
        return (self.train_config, self.log, self.progress_plot, self.validation_summary)


@dataclass(frozen=True)
class DatasetPaths:
    """Paths of one dataset inside a workspace."""

    root: Path

    @property
    def dataset_spec(self) -> Path:
        return self.root / "dataset_spec.json"

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def dataset_report(self) -> Path:
        """What ``autoseg plan`` reports about the dataset (:class:`autoseg.schema.report.DatasetReport`)."""
        return self.root / "dataset_report.json"

    @property
    def plans(self) -> Path:
        return self.root / "plans.json"

    def superseded_plans(self, sha256: str) -> Path:
        """Where a replaced ``plans.json`` is kept (models trained on it still name its hash)."""
        return self.root / f"plans.{sha256[:12]}.json"

    @property
    def run_plan(self) -> Path:
        """How a budget for the whole training run is spent (:class:`autoseg.schema.run_plan.RunPlan`)."""
        return self.root / "run_plan.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    def preprocessed(self, config: str) -> Path:
        """Folder of a configuration's preprocessed cases.

        ``3d_cascade_fullres`` shares the ``3d_fullres`` folder: both use the same spacing and normalisation, so its
        data are stored once (the case store's key, a hash of the preprocessing-relevant plan entries, is the same).
        """
        return self.root / "preprocessed" / SHARED_PREPROCESSED.get(config, config)

    def models(self, config: str) -> Path:
        """Folder of a configuration's fold folders."""
        return self.root / "models" / config

    def fold(self, config: str, fold: int | str) -> FoldPaths:
        return FoldPaths(self.models(config) / f"fold_{fold}")

    def trained_folds(self, config: str) -> list[str]:
        """Folds of ``config`` with a final checkpoint, sorted (``"0"`` ... ``"4"``, ``"all"``)."""
        root = self.models(config)
        if not root.is_dir():
            return []
        return sorted(p.name[len("fold_"):] for p in root.iterdir()
                      if p.name.startswith("fold_") and FoldPaths(p).is_trained)

    @property
    def crossval(self) -> Path:
        return self.root / "crossval"

    def crossval_candidate(self, name: str) -> Path:
        """Merged cross-validation predictions of a configuration or an ensemble (``crossval/<name>/``)."""
        return self.crossval / name

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def inference_spec(self) -> Path:
        """``inference.json``: what running the exported ONNX networks needs, for runtimes without autoseg."""
        return self.root / "inference.json"

    @property
    def postprocessing(self) -> Path:
        return self.root / "postprocessing.json"


@dataclass(frozen=True)
class Workspace:
    """A folder holding the derived data of any number of datasets."""

    root: Path

    @property
    def mlruns(self) -> Path:
        """The local MLflow tracking store of ``train --log mlflow``."""
        return Path(self.root) / "mlruns"

    @property
    def calibration(self) -> Path:
        """The devices' measured training throughput (:mod:`autoseg.training.calibration`), shared by datasets."""
        return Path(self.root) / "calibration.json"

    def dataset(self, name: str) -> DatasetPaths:
        """A dataset's folder. The raw folder's name works too: ``Task04_Hippocampus`` (MSD) or
        ``Dataset004_Hippocampus`` (nnU-Net v2) finds ``Hippocampus`` when only that one exists."""
        root = Path(self.root)
        match = re.fullmatch(r"(?:Task\d+|Dataset\d+)_(.+)", name)
        if match and not (root / name).exists() and (root / match.group(1)).is_dir():
            name = match.group(1)
        return DatasetPaths(root / name)

    def datasets(self) -> list[str]:
        """Names of the planned datasets in this workspace."""
        root = Path(self.root)
        return sorted(p.name for p in root.iterdir() if (p / "plans.json").is_file()) if root.is_dir() else []
