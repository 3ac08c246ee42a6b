"""A run plan on the tiny dataset: probes, the winner continued, a model on all cases, best.json kept current as
parts finish (anytime), predict with what the run selected, a second run trains nothing, a larger budget extends
the run plan instead of starting over."""

import json

import pytest

from autoseg import api
from autoseg.cli import main
from autoseg.schema.base import load_json, save_json
from autoseg.schema.run_plan import RunPart, RunPlan
from autoseg.training.automl import read_log


def _seed_calibration(ws, seconds_per_tmac):
    """A cached throughput for this machine's CPU (as tests/unit/test_api_plan.py does)."""
    import torch

    from autoseg.nn.device import resolve_precision
    from autoseg.training.calibration import CalibrationCache, Throughput, device_key
    from autoseg.workspace import Workspace

    cpu = torch.device("cpu")
    key = device_key(cpu, resolve_precision("auto", cpu))
    save_json(CalibrationCache({key: Throughput(key, "cpu", seconds_per_tmac, "2026-01-01T00:00:00+00:00")}),
              Workspace(ws).calibration)


def _part(kind, configuration, folds, minutes, validate, candidates=(), start=0.0):
    return RunPart(kind=kind, configuration=configuration, folds=folds, minutes=minutes, iterations=10,
                   seconds_per_iteration=0.2, validate=validate, validation_minutes=0.1 if validate else 0.0,
                   reason=f"test {kind}", candidates=candidates, start_minutes=start)


@pytest.mark.slow
def test_run_plan_probes_continue_all_anytime_predict_extend(tiny_raw, tmp_path, capsys):
    ws = tmp_path / "ws"
    api.plan(tiny_raw, ws, progress=False, num_workers=1)
    ctx = api.load_context(ws, "Tiny", create_splits=True)
    both = ("3d_fullres", "2d")
    # short parts, so the test runs in a couple of minutes: probes of both configurations, the winner's fold 0
    # continued (validated), then a model on all cases
    run = RunPlan(dataset="Tiny", budget_minutes=1.2, strategy="fold 0 + all",
                  parts=(_part("probe", "3d_fullres", ("0",), 0.08, False), _part("probe", "2d", ("0",), 0.08, False),
                         _part("continue", "", ("0",), 0.2, True, both, start=0.08),
                         _part("train", "", ("all",), 0.12, False, both)),
                  fold_minutes=0.2, selection="validation", selection_minutes=0.05, overhead_minutes=0.1, predict={},
                  device="cpu", seconds_per_tmac=30.0, target_iterations=10, plans_sha256=ctx.plans_sha256)
    save_json(run, ctx.paths.run_plan)

    assert main(["train", "Tiny", "-w", str(ws), "-j", "0"]) == 0
    out = capsys.readouterr().out
    (tmp_path / "train.out").write_text(out)
    assert "run plan for Tiny: fold 0 + all" in out and "== part 1/4 (probe)" in out and "ETA" in out
    assert "probe: stopped after epoch" in out
    after = load_json(RunPlan, ctx.paths.run_plan)
    winner = after.parts[2].configuration
    assert winner in both and after.parts[3].configuration == winner and after.predict == {winner: ("0", "all")}
    assert "-> " + winner + " continues" in out
    # both probes trained fold 0; the winner's fold 0 went on to the continue part's epochs and was validated
    for c in both:
        assert ctx.fold(c, "0").is_trained
    assert read_log(ctx.fold(winner, "0"))[-1].epoch + 1 == after.parts[2].epochs
    assert ctx.fold(winner, "0").validation_summary.is_file()
    assert ctx.fold(winner, "all").is_trained
    # anytime: best.json was written when fold 0 finished, before the model on all cases trained
    assert out.index(f"best.json: {winner} folds 0 (scored") < out.index("== part 4/4")
    best = json.loads(ctx.paths.best.read_text())
    assert best["chosen"] == [winner] and best["folds"] == {winner: ["0", "all"]}
    assert "fold(s) 0" in best["basis"] and (ctx.paths.postprocessing).is_file()

    # predict with what the run selected (best.json by default)
    pred = tmp_path / "pred"
    assert main(["predict", "Tiny", "-w", str(ws), "-i", str(tiny_raw / "imagesTs"), "-o", str(pred),
                 "--no-tta"]) == 0
    assert f"using best.json: {winner}" in capsys.readouterr().out
    assert len(list(pred.glob("*.nii.gz"))) == 2

    # a second run finds everything done: nothing is trained
    epochs = len(read_log(ctx.fold(winner, "0")))
    assert main(["train", "Tiny", "-w", str(ws), "-j", "0"]) == 0
    assert "== part" not in capsys.readouterr().out
    assert len(read_log(ctx.fold(winner, "0"))) == epochs

    # a larger budget extends the run plan: same plans, the trained folds kept, the chosen fold trained further
    _seed_calibration(ws, 30.0)  # a fixed throughput: nothing is measured
    assert main(["train", "Tiny", "-w", str(ws), "-j", "0", "--resume", "--budget", "2.5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "run plan extended to 2.5 minutes" in out and "continued to" in out
    extended = load_json(RunPlan, ctx.paths.run_plan)
    assert extended.plans_sha256 == ctx.plans_sha256 and extended.budget_minutes == 2.5
    assert extended.parts[0].kind == "continue" and extended.parts[0].configuration == winner
    assert len(read_log(ctx.fold(winner, "0"))) > epochs
