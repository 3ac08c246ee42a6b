"""The command line's surface: durations, one vocabulary across commands (old spellings still accepted), help on
every option with its default, and input checks before any message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.cli.options import parse_duration
from autoseg.cli.parser import build_parser

sys.path.insert(0, str(Path(__file__).parent / "evaluation"))
from _selection_fakes import DATASET, GEOMETRY, make_workspace, reference  # noqa: E402


@pytest.mark.parametrize("text, minutes", [
    ("90", 90.0), ("90m", 90.0), ("90min", 90.0), ("1.5h", 90.0), ("2h", 120.0), ("2h30m", 150.0), ("2H 30M", 150.0),
    ("45s", 0.75), ("1h0m30s", 60.5), ("0.5", 0.5),
])
def test_durations(text, minutes):
    assert parse_duration(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "h", "2x", "-5", "0", "1h-5m", "m30", "two hours"])
def test_bad_durations_say_what_is_accepted(text):
    with pytest.raises(argparse.ArgumentTypeError, match="90m, 1.5h, 2h30m|must be positive"):
        parse_duration(text)


def test_bad_budget_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "X", "--budget", "2x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "90m, 1.5h, 2h30m" in err and "_positive_float" not in err and "parse_duration" not in err


def _subparsers():
    p = build_parser()
    return [a for a in p._actions if isinstance(a, argparse._SubParsersAction)][0].choices


def test_every_option_has_help_and_shows_its_default():
    for name, sp in _subparsers().items():
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"autoseg {name} {action.option_strings or action.dest}: no help"
        text = sp.format_help()
        assert "%(default)" not in text
    assert "(default: 0.5)" in " ".join(_subparsers()["predict"].format_help().split())  # --step


def test_one_vocabulary_and_old_spellings_kept():
    sub = _subparsers()
    for name in ("train", "predict", "find-best", "export", "preprocess"):
        assert any("--config" in a.option_strings and a.nargs == "+" for a in sub[name]._actions), name
    for name in ("train", "predict"):
        assert any("--fold" in a.option_strings and a.nargs == "+" for a in sub[name]._actions), name
    precisions = {name: next(a.choices for a in sub[name]._actions if a.dest == "precision")
                  for name in ("train", "predict")}
    assert set(precisions["train"]) == set(precisions["predict"])
    p = build_parser()
    old = p.parse_args(["predict", "D", "-i", "in", "-o", "out", "--folds", "0", "1"])
    new = p.parse_args(["predict", "D", "-i", "in", "-o", "out", "-f", "0", "1"])
    assert old.fold == new.fold == ["0", "1"]
    assert p.parse_args(["find-best", "D", "--configs", "2d"]).config == ["2d"]
    assert "--folds" not in sub["predict"].format_help() and "--configs" not in sub["find-best"].format_help()


def test_predict_checks_its_inputs_before_saying_anything(tmp_path, capsys):
    ws, ids = make_workspace(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", DATASET, "-w", str(ws), "-i", str(tmp_path / "missing"), "-o", str(out),
                 "-c", "3d_lowres"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "missing: input folder not found" in captured.err
    images = tmp_path / "images"
    from autoseg.io.image import write_image

    write_image(reference().astype("float32"), GEOMETRY, images / "a.nii.gz")
    assert main(["predict", DATASET, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "3d_lowres",
                 "-f", "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "fold 4 of 3d_lowres is not trained (trained: 0, 1, 2)" in captured.err
    assert main(["predict", DATASET, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "cascade"]) == 2
    assert capsys.readouterr().out == ""
    assert not out.exists()


def test_demo_kinds_are_the_synthetic_presets():
    from autoseg.cli.options import SYNTHETIC_KINDS
    from autoseg.synthetic import PRESETS

    assert SYNTHETIC_KINDS == tuple(PRESETS)


@pytest.mark.parametrize("argv, forwarded", [
    ([], []),
    (["--epochs", "3", "--deterministic", "--no-validation-tta", "-j", "0", "--device", "cpu"],
     ["--epochs", "3", "--deterministic", "--device", "cpu", "--workers", "0", "--no-validation-tta"]),
    (["--budget", "20", "--log", "tensorboard", "mlflow", "--seed", "7"],  # the budget chooses the jobs
     ["--seed", "7", "--log", "tensorboard", "mlflow"]),
])
def test_a_cluster_runs_jobs_get_the_training_options_given(argv, forwarded):
    from autoseg.cli.commands import _forwarded_training_flags
    from autoseg.cli.options import TRAINING_OPTIONS

    args = build_parser().parse_args(["train", "D", "-c", "2d", "-f", "0", "--cluster", "local", *argv])
    assert _forwarded_training_flags(args) == forwarded
    # spelled back, they mean the same to the fold job's parser
    again = build_parser().parse_args(["train", "D", *forwarded])
    for option in TRAINING_OPTIONS:
        if option.forwarded:
            assert getattr(again, option.dest) == getattr(args, option.dest), option.flags
