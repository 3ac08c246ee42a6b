"""Workspace paths: a dataset is found by its raw folder's name too; unplanned names get a helpful error."""

import pytest

from autoseg import api
from autoseg.errors import AutosegError
from autoseg.workspace import Workspace


def test_raw_folder_names_find_the_dataset(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "Hippocampus").mkdir()
    (tmp_path / "Hippocampus" / "plans.json").write_text("{}")
    for name in ("Hippocampus", "Task04_Hippocampus", "Dataset004_Hippocampus"):
        assert ws.dataset(name).root == tmp_path / "Hippocampus"
    assert ws.dataset("Task05_Prostate").root == tmp_path / "Task05_Prostate"  # nothing to map to: unchanged
    (tmp_path / "Task04_Hippocampus").mkdir()
    assert ws.dataset("Task04_Hippocampus").root == tmp_path / "Task04_Hippocampus"  # an exact name wins
    assert ws.datasets() == ["Hippocampus"]


def test_unplanned_dataset_error_lists_the_planned_ones(tmp_path):
    (tmp_path / "Hippocampus").mkdir()
    (tmp_path / "Hippocampus" / "plans.json").write_text("{}")
    with pytest.raises(AutosegError, match="no plans for dataset 'Prostate' .planned in .*: Hippocampus"):
        api.load_plans(tmp_path, "Prostate")
    with pytest.raises(AutosegError, match="nothing planned in"):
        api.load_plans(tmp_path / "empty", "Prostate")
