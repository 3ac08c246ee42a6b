"""Prediction with best.json: two configurations averaged in the raw geometry, then the chosen postprocessing
(dummy predictors instead of trained networks)."""

from pathlib import Path

import numpy as np
import pytest

from autoseg import api
from autoseg.inference.ensemble import EnsemblePredictor
from autoseg.inference.predictor import Prediction, Predictor
from autoseg.io.image import Geometry, read_label, write_image
from autoseg.schema.base import load_json, save_json
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.plans import Plans
from autoseg.schema.selection import BestChoice, Candidate, Postprocessing
from autoseg.workspace import Workspace

REPO = Path(__file__).resolve().parents[3]
GEOMETRY = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _image() -> np.ndarray:
    """Intensity 1: the organ (large) and a small look-alike far from it; 2: an ambiguous region."""
    img = np.zeros((6, 12, 12), np.float32)
    img[1:5, 1:6, 1:6] = 1
    img[0, 10:12, 10:12] = 1
    img[1:5, 8:10, 1:4] = 2
    return img


class Dummy:
    """Predictor-like: '2d' calls the ambiguous region label 2 (0.55), '3d_fullres' background (0.9)."""

    def __init__(self, plans, configuration):
        self.plans, self.configuration = plans, configuration

    def prepare(self, image, geometry, case_id="case"):
        return image[0], None

    def logits(self, data):
        return data

    def finish(self, logits, properties, probabilities=False):
        p = np.zeros((3,) + logits.shape, np.float32)
        p[0][logits == 0] = 1.0
        p[1][logits == 1] = 1.0
        amb = logits == 2
        p[0][amb], p[2][amb] = (0.45, 0.55) if self.configuration == "2d" else (0.9, 0.1)
        return Prediction(p.argmax(0).astype(np.uint8), p if probabilities else None)


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    paths = Workspace(ws).dataset("D")
    plans = load_json(Plans, REPO / "plans" / "examples" / "hippocampus.plans.json")
    save_json(plans, paths.plans)
    save_json(DatasetSpec("D", str(tmp_path), "msd", ("MRI",), tuple(plans.labels), ".nii.gz", ()),
              paths.dataset_spec)
    cand = Candidate("ensemble__2d__3d_fullres", ("2d", "3d_fullres"), 0.9, {"1": 0.9, "2": 0.9}, 5)
    save_json(BestChoice("D", (cand,), ("2d", "3d_fullres"), {"2d": ("0",), "3d_fullres": ("0", "1")},
                         "postprocessing.json"), paths.best)
    save_json(Postprocessing(True, (), {"1": 0.8, "2": 0.9}, {"1": 0.9, "2": 0.9}), paths.postprocessing)
    write_image(_image(), GEOMETRY, tmp_path / "images" / "img_001.nii.gz")
    loaded = []

    def fake_from_checkpoints(cls, plans, configuration, checkpoints, **kwargs):
        loaded.append((configuration, [Path(c).parent.name for c in checkpoints]))
        return Dummy(plans, configuration)

    monkeypatch.setattr(Predictor, "from_checkpoints", classmethod(fake_from_checkpoints))
    return ws, tmp_path, loaded


def test_predict_best_averages_configurations_and_postprocesses(workspace):
    ws, tmp, loaded = workspace
    assert api.default_configuration(ws, "D") == "best"
    assert "2d + 3d_fullres" in api.describe_configuration(ws, "D", None)
    api.predict(ws, "D", tmp / "images", tmp / "out", save_probabilities=True, progress=False)
    assert loaded == [("2d", ["fold_0"]), ("3d_fullres", ["fold_0", "fold_1"])]  # best.json's folds
    seg, geometry = read_label(tmp / "out" / "img_001.nii.gz")
    expected = np.zeros(seg.shape, np.uint8)
    expected[1:5, 1:6, 1:6] = 1  # look-alike removed by postprocessing; ambiguous region outvoted to background
    np.testing.assert_array_equal(seg, expected)
    assert geometry == GEOMETRY
    probs = np.load(tmp / "out" / "img_001.npz")["probabilities"]
    np.testing.assert_allclose(probs[2][1:5, 8:10, 1:4], (0.55 + 0.1) / 2, atol=1e-3)


def test_predict_one_configuration_skips_postprocessing(workspace):
    ws, tmp, _ = workspace
    api.predict(ws, "D", tmp / "images", tmp / "out", configuration="2d", folds=["0"], progress=False)
    seg, _ = read_label(tmp / "out" / "img_001.nii.gz")
    assert seg[0, 11, 11] == 1 and seg[2, 9, 2] == 2


def test_ensemble_predictor_interface():
    plans = load_json(Plans, REPO / "plans" / "examples" / "hippocampus.plans.json")
    ens = EnsemblePredictor([Dummy(plans, "2d"), Dummy(plans, "3d_fullres")])
    assert ens.configuration == "2d+3d_fullres"
    pred = ens.predict(_image()[None], GEOMETRY, probabilities=True)
    assert pred.segmentation[2, 9, 2] == 0 and pred.probabilities.shape == (3, 6, 12, 12)


def test_predictor_on_an_image_exactly_the_patch_size():
    """No padding path: the sliding window's result is an inference tensor and must not be modified in place."""
    import numpy as np
    import torch

    from autoseg.inference.predictor import Predictor
    from autoseg.planning.presets import load_preset
    from autoseg.planning.planner import make_plans
    from autoseg.schema.base import load_json
    from autoseg.schema.fingerprint import Fingerprint
    from pathlib import Path

    examples = Path(__file__).resolve().parents[3] / "plans" / "examples"
    plans = make_plans(load_json(Fingerprint, examples / "hippocampus.fingerprint.json"), load_preset("default"), 8)
    net = torch.nn.Conv3d(1, 3, 1)
    pred = Predictor(plans, "3d_fullres", [net, net], device="cpu", precision="fp32", mirror=False)
    data = np.random.default_rng(0).normal(size=(1, 40, 56, 40)).astype(np.float32)
    logits = pred.logits(data)
    assert logits.shape == (3, 40, 56, 40)
