"""find-best on a fake cross-validated workspace, best.json round trip, the CLI table."""

import pytest

from _selection_fakes import DATASET, make_workspace, remove_fold
from autoseg import api
from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.evaluation.selection import selection_table
from autoseg.schema.base import load_json, save_json
from autoseg.schema.selection import BestChoice, Candidate, Postprocessing
from autoseg.workspace import Workspace


def test_find_best_ranks_and_writes_both_files(tmp_path):
    ws, ids = make_workspace(tmp_path)
    paths = Workspace(ws).dataset(DATASET)
    best = api.find_best(ws, DATASET, num_workers=2, progress=False)
    # each configuration is unsure where it errs, so their average is right everywhere
    assert [c.name for c in best.candidates] == ["ensemble__2d__3d_fullres", "2d", "3d_fullres"]
    assert best.chosen == ("2d", "3d_fullres")
    assert best.folds == {"2d": ("0", "1", "2", "3", "4"), "3d_fullres": ("0", "1", "2", "3", "4")}
    assert best.skipped == {"3d_lowres": "fold(s) 3, 4 of 5 not trained"}
    top = best.candidates[0]
    assert top.n_cases == len(ids) and top.dice_per_class["2"] == pytest.approx(1.0)
    assert top.mean_foreground_dice == pytest.approx((128 / 136 + 1) / 2)  # the spurious blob remains
    assert best.candidates[1].mean_foreground_dice == pytest.approx((64 / 104 + 1) / 2)

    assert load_json(BestChoice, paths.best) == best
    pp = load_json(Postprocessing, paths.root / best.postprocessing_file)
    assert pp.keep_largest_foreground and pp.keep_largest_per_class == ()
    assert pp.dice_after == {"1": 1.0, "2": 1.0}
    assert (paths.crossval / "ensemble__2d__3d_fullres" / "summary.json").is_file()

    table = selection_table(best, pp)
    assert "* ensemble__2d__3d_fullres" in table and "  2d " in table
    assert "keep the largest foreground component" in table and "skipped 3d_lowres" in table
    assert api.default_configuration(ws, DATASET) == "best"


def test_find_best_on_regions_scores_regions_and_chooses_their_postprocessing(tmp_path):
    ws, ids = make_workspace(tmp_path, regions=True)
    paths = Workspace(ws).dataset(DATASET)
    best = api.find_best(ws, DATASET, num_workers=1, progress=False)
    assert best.chosen == ("2d", "3d_fullres")  # sigmoid probabilities averaged: right everywhere
    assert best.labels == {"1": "whole", "2": "core"} and best.regions == {"1": (1, 2), "2": (2,)}
    assert best.candidates[0].dice_per_class["2"] == pytest.approx(1.0)
    pp = load_json(Postprocessing, paths.root / best.postprocessing_file)
    # the spurious blob is whole-tumour only: the foreground rule removes it, no region rule is needed
    assert pp.keep_largest_foreground and pp.keep_largest_per_region == ()
    assert pp.dice_after == {"1": 1.0, "2": 1.0} and pp.dice_before["1"] < 1.0
    assert load_json(BestChoice, paths.best) == best
    table = selection_table(best, pp)
    assert "whole" in table and "core" in table and "keep the largest foreground component" in table


def test_find_best_errors(tmp_path):
    ws, _ = make_workspace(tmp_path)
    with pytest.raises(AutosegError, match="fold 3 of 3d_lowres not trained"):
        api.find_best(ws, DATASET, configurations=["2d", "3d_lowres"], progress=False)
    for c in ("2d", "3d_fullres"):
        remove_fold(ws, c, 0)
    with pytest.raises(AutosegError, match="no configuration has all 5 folds trained"):
        api.find_best(ws, DATASET, progress=False)
    assert not Workspace(ws).dataset(DATASET).best.exists()
    assert api.default_configuration(ws, DATASET) == "3d_fullres"


def test_cli_find_best_prints_the_table(tmp_path, capsys):
    ws, _ = make_workspace(tmp_path)
    assert main(["find-best", DATASET, "-w", str(ws), "-c", "2d", "-j", "1"]) == 0
    out = capsys.readouterr().out
    assert "* 2d" in out and "Anterior" in out and "postprocessing: keep the largest foreground component" in out
    assert main(["find-best", "Nope", "-w", str(ws)]) == 2
    assert "no plans for dataset 'Nope'" in capsys.readouterr().err


def test_best_choice_round_trips(tmp_path):
    cand = Candidate("ensemble__2d__3d_fullres", ("2d", "3d_fullres"), 0.8, {"1": 0.9, "2": None}, 7)
    best = BestChoice("D", (cand,), ("2d", "3d_fullres"), {"2d": ("0", "1"), "3d_fullres": ("0", "1")},
                      "postprocessing.json", {"1": "a", "2": "b"}, {"3d_lowres": "fold(s) 4 of 5 not trained"})
    save_json(best, tmp_path / "best.json")
    assert load_json(BestChoice, tmp_path / "best.json") == best
    assert best.best is cand
