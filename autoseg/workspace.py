"""Every on-disk path of a workspace, as methods. No other module builds workspace paths from strings.

Layout::

    WS/<dataset>/dataset_spec.json, fingerprint.json, plans.json, splits.json
    WS/<dataset>/preprocessed/<config>/<case>.{npy,json}
    WS/<dataset>/models/<config>/fold_<k>/...
    WS/<dataset>/crossval/..., best.json, postprocessing.json
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = Path("autoseg_workspace")

#: Configurations whose preprocessed data are those of another configuration (same spacing and normalisation).
SHARED_PREPROCESSED = {"3d_cascade_fullres": "3d_fullres"}


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
    def plans(self) -> Path:
        return self.root / "plans.json"

    def superseded_plans(self, sha256: str) -> Path:
        """Where a replaced ``plans.json`` is kept (models trained on it still name its hash)."""
        return self.root / f"plans.{sha256[:12]}.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    def preprocessed(self, config: str) -> Path:
        """Folder of a configuration's preprocessed cases.

        ``3d_cascade_fullres`` shares the ``3d_fullres`` folder: both use the same spacing and normalisation, so its
        data are stored once (the case store's key, a hash of the preprocessing-relevant plan entries, is the same).
        """
        return self.root / "preprocessed" / SHARED_PREPROCESSED.get(config, config)

    def model(self, config: str, fold: int | str) -> Path:
        return self.root / "models" / config / f"fold_{fold}"

    def final_checkpoint(self, config: str, fold: int | str) -> Path:
        """A fold is trained when this file exists."""
        return self.model(config, fold) / "checkpoint_final.pt"

    def trained_folds(self, config: str) -> list[str]:
        """Folds of ``config`` with a final checkpoint, sorted (``"0"`` ... ``"4"``, ``"all"``)."""
        root = self.root / "models" / config
        if not root.is_dir():
            return []
        return sorted(p.name[len("fold_"):] for p in root.iterdir()
                      if p.name.startswith("fold_") and (p / "checkpoint_final.pt").is_file())

    def next_stage(self, config: str, fold: int | str) -> Path:
        """Folder of a cascade's low-res fold holding its validation cases' segmentations on the next stage's grid
        (``<case>.npy``), the extra input the next stage trains on."""
        return self.model(config, fold) / "next_stage"

    @property
    def crossval(self) -> Path:
        return self.root / "crossval"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def postprocessing(self) -> Path:
        return self.root / "postprocessing.json"


@dataclass(frozen=True)
class Workspace:
    """A folder holding the derived data of any number of datasets."""

    root: Path

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
