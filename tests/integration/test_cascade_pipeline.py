"""The cascade through the CLI: 3d_lowres folds -> their predictions as extra input -> 3d_cascade_fullres ->
predict (low-res first) -> export with both stages."""

import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.preprocessing.store import CaseStore

# slow: the cascade: five low-res folds, then the second stage with its validation (minutes)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FAST = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "-j", "0", "--no-validation-tta"]


@pytest.fixture(scope="module")
def cascade_raw(tmp_path_factory):
    from autoseg.synthetic import PRESETS, make_dataset

    return make_dataset(tmp_path_factory.mktemp("raw") / "Task09_Cascade", PRESETS["cascade"])


def test_cascade_train_predict_export(cascade_raw, tmp_path, capsys):
    ws = str(tmp_path / "ws")
    ds = tmp_path / "ws" / "Cascade"
    # a small memory target makes the full-res patch small against the cases: the planner adds the cascade
    assert main(["plan", str(cascade_raw), "-w", ws, "--gpu-memory", "0.02", "-j", "2"]) == 0
    assert "3d_cascade_fullres <- 3d_lowres" in capsys.readouterr().out

    # the second stage needs every low-res fold's cross-validation predictions
    assert main(["train", "Cascade", "-w", ws, "-c", "3d_cascade_fullres", "-f", "0", *FAST]) == 2
    err = capsys.readouterr().err
    assert "3d_lowres" in err and "not trained" in err and len(err.strip().splitlines()) == 1

    # fold 0 validates (and writes its validation cases on the next stage's grid); the others skip validation
    assert main(["train", "Cascade", "-w", ws, "-c", "3d_lowres", "-f", "0", *FAST]) == 0
    written = sorted((ds / "models" / "3d_lowres" / "fold_0" / "next_stage").glob("*.npy"))
    assert len(written) == 2
    stamps = {p: p.stat().st_mtime_ns for p in written}
    assert main(["train", "Cascade", "-w", ws, "-c", "3d_lowres", "-f", "1", "2", "3", "4", "--no-validation",
                 *FAST]) == 0
    assert not (ds / "models" / "3d_lowres" / "fold_1" / "next_stage").exists()

    # training the cascade predicts the missing cases first: every training case, on the full-res grid
    assert main(["train", "Cascade", "-w", ws, "-c", "3d_cascade_fullres", "-f", "0", *FAST]) == 0
    files = sorted((ds / "models" / "3d_lowres").glob("fold_*/next_stage/*.npy"))
    assert len(files) == 10
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # existing ones were reused
    store = CaseStore(ds / "preprocessed" / "3d_fullres")
    labels = set()
    for f in files:
        seg = np.load(f)
        data = store.load(f.stem)[0]
        assert seg.shape == data.shape[1:] and seg.dtype == np.int8
        labels |= set(np.unique(seg).tolist())
    assert labels <= {0, 1, 2, 3}
    assert (ds / "models" / "3d_cascade_fullres" / "fold_0" / "validation" / "summary.json").is_file()

    # prediction runs the low-res stage first; outputs keep the inputs' geometry
    pred = tmp_path / "pred"
    assert main(["predict", "Cascade", "-w", ws, "-c", "3d_cascade_fullres", "-i", str(cascade_raw / "imagesTs"),
                 "-o", str(pred), "--no-tta"]) == 0
    outputs = sorted(pred.glob("*.nii.gz"))
    assert len(outputs) == 2
    for out in outputs:
        ref = sitk.ReadImage(str(cascade_raw / "imagesTs" / out.name))
        img = sitk.ReadImage(str(out))
        assert img.GetSize() == ref.GetSize() and img.GetSpacing() == ref.GetSpacing()
        assert img.GetOrigin() == ref.GetOrigin() and img.GetDirection() == ref.GetDirection()

    # an exported cascade carries its low-res stage
    model = tmp_path / "model.zip"
    assert main(["export", "Cascade", "-w", ws, "-o", str(model), "-c", "3d_cascade_fullres"]) == 0
    names = set(zipfile.ZipFile(model).namelist())
    assert "models/3d_cascade_fullres/fold_0/checkpoint_final.pt" in names
    assert {f"models/3d_lowres/fold_{k}/checkpoint_final.pt" for k in range(5)} <= names

    # ... and predicts in a workspace that never saw the data
    ws2 = str(tmp_path / "ws2")
    assert main(["import", str(model), "-w", ws2]) == 0
    pred2 = tmp_path / "pred2"
    assert main(["predict", "Cascade", "-w", ws2, "-c", "3d_cascade_fullres", "-i", str(cascade_raw / "imagesTs"),
                 "-o", str(pred2), "--no-tta"]) == 0
    for out in outputs:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        assert np.array_equal(a, sitk.GetArrayFromImage(sitk.ReadImage(str(pred2 / out.name))))
