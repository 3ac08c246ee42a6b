import json

import numpy as np
import pytest

from autoseg.data.splits import load_or_create_splits, make_splits
from autoseg.errors import AutosegError
from autoseg.workspace import Workspace

IDS = [f"case_{i:03d}" for i in range(23)]


def test_splits_are_deterministic_and_partition_the_cases():
    a = make_splits(IDS[::-1])
    assert a == make_splits(IDS) == make_splits(list(reversed(IDS)))
    assert len(a) == 5
    assert sorted(c for f in a for c in f["val"]) == IDS  # every case validated exactly once
    assert [len(f["val"]) for f in a] == [5, 5, 5, 4, 4]
    for f in a:
        assert f["train"] == sorted(f["train"]) and f["val"] == sorted(f["val"])
        assert sorted(f["train"] + f["val"]) == IDS
    assert make_splits(IDS, seed=1) != a


def test_splits_equal_nnunet_kfold():
    kfold = pytest.importorskip("sklearn.model_selection").KFold
    ids = np.sort(IDS)
    ref = [{"train": sorted(ids[tr]), "val": sorted(ids[va])}
           for tr, va in kfold(n_splits=5, shuffle=True, random_state=12345).split(ids)]
    assert make_splits(IDS) == ref


def test_too_few_cases():
    with pytest.raises(ValueError, match="cannot be split"):
        make_splits(IDS[:3])


def test_created_once_then_respected(tmp_path):
    paths = Workspace(tmp_path / "ws").dataset("D")
    first = load_or_create_splits(paths, IDS, tmp_path / "raw")
    assert json.loads(paths.splits.read_text()) == first
    custom = [{"train": IDS[:20], "val": IDS[20:]}]
    paths.splits.write_text(json.dumps(custom))
    assert load_or_create_splits(paths, IDS, tmp_path / "raw") == custom


@pytest.mark.parametrize("name", ["splits_final.json", "splits.json"])
def test_raw_folder_splits_are_used_and_copied(tmp_path, name):
    raw = tmp_path / "raw"
    raw.mkdir()
    custom = [{"train": IDS[5:], "val": IDS[:5]}, {"train": IDS[:5], "val": IDS[5:]}]
    (raw / name).write_text(json.dumps(custom))
    paths = Workspace(tmp_path / "ws").dataset("D")
    assert load_or_create_splits(paths, IDS, raw) == custom
    assert json.loads(paths.splits.read_text()) == custom


@pytest.mark.parametrize("content, message", [
    ([{"train": IDS[:20], "val": ["nope"]}], "unknown case"),
    ([{"train": IDS[:20], "val": IDS[19:]}], "both train and val"),
    ({"train": IDS}, "non-empty list"),
    ([{"train": IDS[:20]}], "fold 0 must be"),
    ([{"train": [], "val": IDS}], "empty train"),
])
def test_bad_user_splits_name_the_file(tmp_path, content, message):
    paths = Workspace(tmp_path / "ws").dataset("D")
    paths.root.mkdir(parents=True)
    paths.splits.write_text(json.dumps(content))
    with pytest.raises(AutosegError, match=message) as e:
        load_or_create_splits(paths, IDS, None)
    assert str(paths.splits) in e.value.problems[0]


def test_not_json_names_the_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "splits_final.json").write_text("[{")
    with pytest.raises(AutosegError, match="splits_final.json: not valid JSON"):
        load_or_create_splits(Workspace(tmp_path / "ws").dataset("D"), IDS, raw)


def _fold_of(splits):
    return {c: k for k, f in enumerate(splits) for c in f["val"]}


# (cases, folds, groups): duplicate images that must share a fold; the default split separates each of these
GROUPED = [
    pytest.param(IDS, 5, [("case_000", "case_001")], id="identical pair"),
    pytest.param(IDS, 5, [("case_000", "case_001"), ("case_001", "case_017")], id="groups sharing a case join"),
    pytest.param(IDS, 5, [("case_000", "case_001", "case_017"), ("case_002", "case_003")], id="two groups"),
    pytest.param(IDS, 5, [tuple(IDS[:8])], id="a group larger than a fold"),
    pytest.param(IDS, 5, [(IDS[i], IDS[i + 1]) for i in range(0, 16, 2)], id="many pairs"),
    pytest.param(IDS[:6], 5, [("case_000", "case_005")], id="as many units as folds"),
    pytest.param(IDS, 2, [("case_000", "case_001", "unknown")], id="unknown ids are ignored"),
]


@pytest.mark.parametrize("ids, n_folds, groups", GROUPED)
def test_duplicates_share_a_fold(ids, n_folds, groups):
    plain = _fold_of(make_splits(ids, n_folds))
    known = [[c for c in g if c in plain] for g in groups]
    assert any(len({plain[c] for c in g}) > 1 for g in known)  # the row tests something
    splits = make_splits(ids, n_folds, groups=groups)
    assert splits == make_splits(list(reversed(ids)), n_folds, groups=[tuple(reversed(g)) for g in groups])
    fold = _fold_of(splits)
    assert sorted(fold) == sorted(ids)  # every case validated exactly once
    assert all(len({fold[c] for c in g}) == 1 for g in known)
    for f in splits:
        assert f["val"] and f["train"] == sorted(set(ids) - set(f["val"])) and f["val"] == sorted(f["val"])
    # the folds stay near their sizes: each differs from its plain size by less than the cases grouped
    grouped = sum(len(g) for g in known)
    target = [len(f["val"]) for f in make_splits(ids, n_folds)]
    assert all(abs(len(f["val"]) - t) < grouped for f, t in zip(splits, target))
    assert make_splits(ids, n_folds, seed=1, groups=groups) != splits


@pytest.mark.parametrize("groups", [[], [("case_003",)], [("case_003", "not_a_case")], [("x", "y")]])
def test_without_duplicates_the_splits_are_nnunets(groups):
    for n in (5, 6, 23):
        assert make_splits(IDS[:n], groups=groups) == make_splits(IDS[:n])


def test_too_few_distinct_images():
    with pytest.raises(ValueError, match="6 case\\(s\\) in 4 groups of duplicates cannot be split into 5 folds"):
        make_splits(IDS[:6], groups=[("case_000", "case_001"), ("case_002", "case_003")])


def test_new_splits_keep_the_groups_given(tmp_path):
    paths = Workspace(tmp_path / "ws").dataset("D")
    splits = load_or_create_splits(paths, IDS, None, groups=[("case_000", "case_001")])
    assert json.loads(paths.splits.read_text()) == splits
    assert len({_fold_of(splits)[c] for c in ("case_000", "case_001")}) == 1
