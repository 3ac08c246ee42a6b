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


def test_fold_paths_name_every_file_of_a_fold_folder(tmp_path):
    fold = Workspace(tmp_path).dataset("D").fold("3d_fullres", 2)
    root = tmp_path / "D" / "models" / "3d_fullres" / "fold_2"
    assert fold.root == root and Workspace(tmp_path).dataset("D").models("3d_fullres") == root.parent
    assert fold.final_checkpoint == root / "checkpoint_final.pt" and fold.latest_checkpoint.name == "checkpoint_latest.pt"
    assert fold.validation_segmentation("c1", ".nii.gz") == root / "validation" / "c1.nii.gz"
    assert fold.validation_probabilities("c1") == root / "validation" / "c1.npz"
    assert fold.next_stage_segmentation("c1") == root / "next_stage" / "c1.npy"
    assert fold.relative(fold.overlay("c1")) == "overlays/c1.png"
    assert not fold.is_trained and Workspace(tmp_path).dataset("D").trained_folds("3d_fullres") == []
    fold.root.mkdir(parents=True)
    fold.final_checkpoint.write_bytes(b"x")
    assert fold.is_trained and Workspace(tmp_path).dataset("D").trained_folds("3d_fullres") == ["2"]
    with pytest.raises(ValueError, match="checkpoint kind"):
        fold.checkpoint("newest")
