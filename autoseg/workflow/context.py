"""A dataset's context: its paths, spec, plans and splits, loaded and checked once, then passed down.

:func:`load_context` is the one place that turns ``(workspace, dataset)`` into a :class:`DatasetContext`, and the one
place that raises "not planned" and "no such configuration". Everything below the workflow layer receives what it
needs from a context (paths, plans, a configuration's plan, a fold's cases) and never reads these files itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.errors import AutosegError
from autoseg.schema.base import load_json, sha256_of
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.plans import ConfigurationPlan, Plans
from autoseg.workspace import DatasetPaths, FoldPaths, Workspace

#: The fold trained on every training case (no validation cases).
ALL = "all"
#: ``autoseg predict -c best``: the configuration(s) of ``best.json`` with its postprocessing.
BEST = "best"
#: Configuration used for prediction when no ``best.json`` exists yet.
DEFAULT_CONFIGURATION = "3d_fullres"

Splits = tuple[dict[str, list[str]], ...]


@dataclass(frozen=True)
class DatasetContext:
    """Everything a workflow step needs to know about one planned dataset.

    Attributes
    ----------
    workspace
        The workspace it was loaded from.
    paths
        The dataset's files.
    spec
        ``dataset_spec.json``: channels, labels, cases, where the raw data are (``raw_dir`` is empty for an
        imported model).
    plans
        ``plans.json``.
    plans_sha256
        Hash of ``plans`` (what checkpoints record).
    splits
        Cross-validation folds (``splits.json``, checked against the training cases); ``None`` when the dataset
        has none (an imported model, or planned without preprocessing).
    """

    workspace: Workspace
    paths: DatasetPaths
    spec: DatasetSpec
    plans: Plans
    plans_sha256: str
    splits: Splits | None

    @property
    def name(self) -> str:
        return self.plans.dataset_name

    @property
    def raw_dir(self) -> Path:
        return Path(self.spec.raw_dir)

    @property
    def configurations(self) -> list[str]:
        """Planned configurations, in plans order (a low-res stage before its cascade)."""
        return list(self.plans.configurations)

    def check_configurations(self, names: Sequence[str]) -> None:
        """Raise one error naming every configuration of ``names`` that is not planned."""
        unknown = [c for c in names if c not in self.plans.configurations]
        if unknown:
            what = f"'{unknown[0]}'" if len(unknown) == 1 else ", ".join(unknown)
            raise AutosegError(f"{self.paths.plans}: no configuration {what} (planned: "
                               f"{', '.join(self.plans.configurations)})")

    def configuration(self, name: str) -> ConfigurationPlan:
        """The plan of a configuration (a clear error when it is not planned)."""
        self.check_configurations([name])
        return self.plans.configurations[name]

    def fold(self, configuration: str, fold: int | str) -> FoldPaths:
        return self.paths.fold(configuration, fold)

    def require_splits(self) -> Splits:
        if self.splits is None:
            raise AutosegError(f"{self.paths.splits}: no cross-validation splits; run "
                               f"`autoseg preprocess {self.name}`")
        return self.splits

    @property
    def folds(self) -> list[str]:
        """The cross-validation folds of ``splits.json`` (``"0"`` ... ``"n-1"``)."""
        return [str(k) for k in range(len(self.require_splits()))]

    def check_fold(self, fold: str) -> None:
        """``fold`` is a fold of the splits or ``"all"``."""
        if fold != ALL and fold not in self.folds:
            raise AutosegError(f"fold {fold}: must be one of {', '.join(self.folds + [ALL])} "
                               f"({self.paths.splits} has {len(self.folds)} folds)")

    def fold_cases(self, fold: str) -> tuple[list[str], list[str]]:
        """``(training cases, validation cases)`` of a fold; fold ``all`` trains and validates on every case."""
        if fold == ALL:
            ids = sorted(c.case_id for c in self.spec.training)
            return ids, ids
        self.check_fold(fold)
        split = self.require_splits()[int(fold)]
        return list(split["train"]), list(split["val"])

    def trained_folds(self, configuration: str) -> list[str]:
        """Folds of ``configuration`` with a final checkpoint, sorted."""
        return self.paths.trained_folds(configuration)


def load_context(workspace: Path, dataset: str, create_splits: bool = False) -> DatasetContext:
    """Load a planned dataset's context.

    Parameters
    ----------
    workspace
        Workspace root.
    dataset
        Dataset name (also its raw folder's name, see :meth:`autoseg.workspace.Workspace.dataset`).
    create_splits
        Make (and save) ``splits.json`` when it does not exist yet (training needs one; nnU-Net's folds, or those
        shipped with the raw data).

    Raises
    ------
    AutosegError
        Never planned (naming what is planned in the workspace), or an unreadable plans, spec or splits file.
    """
    from autoseg.data.splits import load_or_create_splits, read_splits

    ws = Workspace(Path(workspace))
    paths = ws.dataset(dataset)
    if not paths.plans.is_file():
        known = ws.datasets()
        raise AutosegError(f"{paths.plans}: no plans for dataset '{dataset}' ("
                           + (f"planned in {ws.root}: {', '.join(known)}" if known else f"nothing planned in {ws.root}")
                           + "); run `autoseg plan RAW_DIR` first")
    plans = load_json(Plans, paths.plans)
    spec = load_json(DatasetSpec, paths.dataset_spec)
    case_ids = [c.case_id for c in spec.training]
    if create_splits:
        groups = () if paths.splits.is_file() else _duplicate_groups(paths)
        splits = load_or_create_splits(paths, case_ids, Path(spec.raw_dir) if spec.raw_dir else None,
                                       groups=groups)
    else:
        splits = read_splits(paths, case_ids)
    return DatasetContext(ws, paths, spec, plans, sha256_of(plans),
                          None if splits is None else tuple(splits))


def _duplicate_groups(paths: DatasetPaths) -> tuple[tuple[str, ...], ...]:
    """The fingerprint's duplicate images, which new splits keep in one fold as at plan time (none without a
    readable fingerprint: an imported model, or one of an older autoseg, which the next plan replaces)."""
    from autoseg.data.splits import duplicate_groups
    from autoseg.schema.fingerprint import Fingerprint

    if not paths.fingerprint.is_file():
        return ()
    try:
        return duplicate_groups(load_json(Fingerprint, paths.fingerprint))
    except AutosegError:
        return ()
