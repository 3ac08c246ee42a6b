"""evaluate_folder on tiny NIfTI folders, its errors, api.evaluate and the `autoseg evaluate` CLI."""

import json
import math

import numpy as np
import pytest

from autoseg import api
from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.evaluation.folder import evaluate_folder
from autoseg.evaluation.metrics import label_metrics
from autoseg.io.image import Geometry, write_image
from autoseg.schema.base import load_json
from autoseg.schema.evaluation import EvaluationSummary

SPACING = (2.0, 0.8, 0.8)


def _geometry(spacing=SPACING) -> Geometry:
    return Geometry(tuple(spacing), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _case(seed: int):
    """Reference with labels 1 and 2 (case 2 has no label 2), prediction shifted by one voxel."""
    ref = np.zeros((10, 16, 14), dtype=np.uint8)
    ref[2:6, 3:10, 4:11] = 1
    if seed != 2:
        ref[6:9, 10:14, 2:6] = 2
    pred = np.roll(ref, seed % 2, axis=1)
    return pred, ref


@pytest.fixture()
def folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for i in range(3):
        pred, ref = _case(i)
        write_image(pred, _geometry(), pred_dir / f"case_{i}.nii.gz")
        write_image(ref, _geometry(), gt_dir / f"case_{i}.nii.gz")
    return pred_dir, gt_dir


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_folder_values_and_summary_file(folders, workers):
    pred_dir, gt_dir = folders
    summary = evaluate_folder(pred_dir, gt_dir, [1, 2], num_workers=workers, progress=False)
    assert summary.labels == (1, 2) and [c.case_id for c in summary.cases] == ["case_0", "case_1", "case_2"]
    for i, case in enumerate(summary.cases):
        pred, ref = _case(i)
        expected = label_metrics(pred, ref, [1, 2], SPACING)
        for v in (1, 2):
            got, want = case.classes[str(v)], expected[v]
            if math.isnan(want.dice):
                assert got.dice is None and got.hd95 is None and got.nsd is None
            else:
                assert got.dice == pytest.approx(want.dice) and got.hd95 == pytest.approx(want.hd95)
                assert got.iou == pytest.approx(want.iou) and got.nsd == pytest.approx(want.nsd)
            assert (got.tp, got.fp, got.fn, got.n_ref, got.n_pred) == (
                want.counts.tp, want.counts.fp, want.counts.fn, want.counts.n_ref, want.counts.n_pred)
    assert summary.cases[0].classes["1"].dice == 1.0
    assert summary.mean["2"].n_cases == 2  # undefined in case_2: left out of the mean
    dices2 = [c.classes["2"].dice for c in summary.cases[:2]]
    assert summary.mean["2"].dice == pytest.approx(np.mean(dices2))
    assert summary.foreground_mean_dice == pytest.approx((summary.mean["1"].dice + summary.mean["2"].dice) / 2)

    path = pred_dir / "summary.json"
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))  # null, not NaN
    assert load_json(EvaluationSummary, path) == summary


def test_labels_from_references_and_names(folders, tmp_path):
    pred_dir, gt_dir = folders
    out = tmp_path / "elsewhere" / "s.json"
    summary = evaluate_folder(pred_dir, gt_dir, None, num_workers=1, progress=False, output=out)
    assert summary.labels == (1, 2) and out.is_file() and not (pred_dir / "summary.json").exists()
    named = evaluate_folder(pred_dir, gt_dir, ["right", "1"], num_workers=1, progress=False,
                            label_names=("background", "left", "right"))
    assert named.labels == (2, 1) and named.label_names == {"2": "right", "1": "left"}
    with pytest.raises(AutosegError, match="'middle'"):
        evaluate_folder(pred_dir, gt_dir, ["middle"], label_names=("background", "left", "right"))


def test_geometry_mismatch_names_the_file(folders):
    pred_dir, gt_dir = folders
    pred, _ = _case(1)
    write_image(pred, _geometry((2.0, 0.8, 0.9)), pred_dir / "case_1.nii.gz")
    write_image(pred[:, :, :12], _geometry(), pred_dir / "case_2.nii.gz")
    with pytest.raises(AutosegError) as e:
        evaluate_folder(pred_dir, gt_dir, [1], num_workers=1, progress=False)
    assert len(e.value.problems) == 2
    assert str(pred_dir / "case_1.nii.gz") in e.value.problems[0] and "spacing" in e.value.problems[0]
    assert str(pred_dir / "case_2.nii.gz") in e.value.problems[1] and "size" in e.value.problems[1]
    assert not (pred_dir / "summary.json").exists()


def test_missing_predictions_are_named(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "case_0.nii.gz").unlink()
    (pred_dir / "case_2.nii.gz").unlink()
    with pytest.raises(AutosegError) as e:
        evaluate_folder(pred_dir, gt_dir, [1], num_workers=1, progress=False)
    assert [p.split(":")[0] for p in e.value.problems] == [str(pred_dir / "case_0.nii.gz"),
                                                          str(pred_dir / "case_2.nii.gz")]
    only = evaluate_folder(pred_dir, gt_dir, [1], num_workers=1, progress=False, case_ids=["case_1"])
    assert [c.case_id for c in only.cases] == ["case_1"]


def test_unreadable_prediction(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "case_1.nii.gz").write_bytes(b"not an image")
    with pytest.raises(AutosegError, match="case_1.nii.gz: cannot be read"):
        evaluate_folder(pred_dir, gt_dir, [1], num_workers=1, progress=False)


def test_api_needs_workspace_for_dataset(folders):
    pred_dir, gt_dir = folders
    with pytest.raises(AutosegError, match="workspace"):
        api.evaluate(pred_dir, gt_dir, dataset="Tiny")
    s = api.evaluate(pred_dir, gt_dir, labels=[1], num_workers=1, progress=False)
    assert s.labels == (1,)


def test_cli_evaluate_ok_and_errors(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    out = tmp_path / "summary.json"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--labels", "1", "2", "-j", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Dice" in printed and "foreground mean Dice" in printed and out.is_file()
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--dataset", "Nope", "-w", str(tmp_path)]) == 2
    assert "no plans" in capsys.readouterr().err
    (pred_dir / "case_0.nii.gz").unlink()
    assert main(["evaluate", str(pred_dir), str(gt_dir)]) == 2
    err = capsys.readouterr().err
    assert "case_0.nii.gz: prediction missing" in err
    assert main(["evaluate", str(tmp_path / "absent"), str(gt_dir)]) == 2


def test_api_and_cli_take_labels_from_the_planned_dataset(tiny_raw, tmp_path, capsys):
    ws = tmp_path / "ws"
    plans = api.plan(tiny_raw, ws, preprocess=False, progress=False).plans
    gt_dir = tiny_raw / "labelsTr"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for f in sorted(gt_dir.glob("*.nii.gz")):
        (pred_dir / f.name).write_bytes(f.read_bytes())
    s = api.evaluate(pred_dir, gt_dir, workspace=ws, dataset=plans.dataset_name, num_workers=1, progress=False)
    assert s.labels == tuple(range(1, len(plans.labels)))
    assert [s.label_names[str(v)] for v in s.labels] == list(plans.labels[1:])
    assert s.foreground_mean_dice == 1.0
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--dataset", plans.dataset_name, "-w", str(ws),
                 "--labels", plans.labels[1], "-j", "1"]) == 0
    assert plans.labels[1] in capsys.readouterr().out
