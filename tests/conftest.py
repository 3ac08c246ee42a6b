"""Shared fixtures: a tiny synthetic MSD dataset, and the location of the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A tiny synthetic MSD dataset (read-only for tests: copy it before corrupting it)."""
    from autoseg.synthetic import PRESETS, make_dataset

    return make_dataset(tmp_path_factory.mktemp("raw") / "Task01_Tiny", PRESETS["tiny"])


def shared_dataset(name: str) -> Path:
    """Path of a dataset under ``../shared/data``; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not (path / "dataset.json").is_file():
        pytest.skip(f"{path} not present (shared real data is only beside the repository on dev/CI machines)")
    return path


@pytest.fixture(scope="session")
def hippocampus_raw() -> Path:
    """The shared Task04_Hippocampus folder (the test is skipped when it is absent)."""
    return shared_dataset("Task04_Hippocampus")
