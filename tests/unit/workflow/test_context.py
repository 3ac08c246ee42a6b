"""The dataset context: loaded once, every "not planned / unknown configuration / unknown fold" error from here."""

import json

import pytest

from autoseg import api
from autoseg.errors import AutosegError
from autoseg.workflow.context import load_context


@pytest.fixture(scope="module")
def planned(tiny_raw, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    api.plan(tiny_raw, ws, num_workers=1, progress=False, preprocess=False)
    return ws


def test_context_holds_what_the_steps_need(planned):
    ctx = load_context(planned, "Tiny")
    assert ctx.name == "Tiny" and ctx.paths.root == planned / "Tiny" and ctx.splits is None
    assert ctx.configurations == list(ctx.plans.configurations) and ctx.plans_sha256
    assert ctx.configuration("3d_fullres") is ctx.plans.configurations["3d_fullres"]
    assert load_context(planned, "Task01_Tiny").paths == ctx.paths  # the raw folder's name works too
    with pytest.raises(AutosegError, match=r"no cross-validation splits; run `autoseg preprocess Tiny`"):
        ctx.fold_cases("0")
    train, val = ctx.fold_cases("all")  # needs no splits: every case
    assert train == val == sorted(c.case_id for c in ctx.spec.training)


def test_splits_are_made_once_for_training_and_then_read(planned):
    ctx = load_context(planned, "Tiny", create_splits=True)
    assert ctx.folds == ["0", "1", "2", "3", "4"] and ctx.paths.splits.is_file()
    again = load_context(planned, "Tiny")
    assert again.splits == ctx.splits
    train, val = again.fold_cases("3")
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(c.case_id for c in again.spec.training)


def test_errors_name_the_file_and_what_exists(planned, tmp_path):
    ctx = load_context(planned, "Tiny", create_splits=True)
    with pytest.raises(AutosegError, match=r"plans.json: no configuration '3d_nope' \(planned: 2d, 3d_fullres"):
        ctx.configuration("3d_nope")
    with pytest.raises(AutosegError, match=r"no configuration a, b \(planned"):
        ctx.check_configurations(["2d", "a", "b"])
    with pytest.raises(AutosegError, match=r"fold 7: must be one of 0, 1, 2, 3, 4, all"):
        ctx.check_fold("7")
    with pytest.raises(AutosegError, match=r"no plans for dataset 'Other' \(planned in .*: Tiny\)"):
        load_context(planned, "Other")
    bad = tmp_path / "ws"
    (bad / "Tiny").mkdir(parents=True)
    (bad / "Tiny" / "plans.json").write_text((planned / "Tiny" / "plans.json").read_text())
    (bad / "Tiny" / "dataset_spec.json").write_text((planned / "Tiny" / "dataset_spec.json").read_text())
    (bad / "Tiny" / "splits.json").write_text(json.dumps([{"train": ["nope"], "val": []}]))
    with pytest.raises(AutosegError, match=r"splits.json: fold 0 names unknown case\(s\) nope"):
        load_context(bad, "Tiny")
