"""The low-res stage's prediction on the full-res grid, and the cascade predictor's extra input channels."""

from pathlib import Path

import numpy as np
import torch

from autoseg.inference.cascade import CascadePredictor, next_stage_segmentation
from autoseg.io.image import Geometry
from autoseg.preprocessing.case import CaseProperties
from autoseg.schema.base import load_json
from autoseg.schema.plans import Plans

PLANS = load_json(Plans, Path(__file__).resolve().parents[3] / "plans" / "examples" / "large-lowres.plans.json")

GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _props(shape_crop, spacing, target, shape_low) -> CaseProperties:
    return CaseProperties(case_id="c", original_geometry=GEOMETRY, original_shape=tuple(shape_crop),
                          transpose_forward=(0, 1, 2), bbox=tuple((0, s) for s in shape_crop),
                          shape_after_crop=tuple(shape_crop), spacing=spacing, target_spacing=target,
                          shape_after_resampling=tuple(shape_low), voxels_per_class=(), config="3d_lowres",
                          plans_sha256="x")


def _one_hot(seg, k):
    return np.stack([(seg == c).astype(np.float32) for c in range(k)])


def test_same_grid_is_the_argmax():
    full = PLANS.configurations["3d_cascade_fullres"]
    sp = tuple(full.spacing)
    seg = np.random.default_rng(0).integers(0, 4, size=(6, 7, 8))
    out = next_stage_segmentation(_one_hot(seg, 4), _props((6, 7, 8), sp, sp, (6, 7, 8)), full)
    assert out.dtype == np.int8 and np.array_equal(out, seg)


def test_coarse_prediction_lands_on_the_fine_grid():
    """A block at half resolution covers the same physical region on the full-res grid."""
    full = PLANS.configurations["3d_cascade_fullres"]
    sp = tuple(full.spacing)
    coarse = tuple(2 * s for s in sp)
    low = np.zeros((10, 10, 10), np.int64)
    low[3:7, 3:7, 3:7] = 2
    out = next_stage_segmentation(_one_hot(low, 3), _props((20, 20, 20), sp, coarse, (10, 10, 10)), full)
    assert out.shape == (20, 20, 20)
    assert out[8:12, 8:12, 8:12].min() == 2 and out[:4].max() == 0
    assert abs(int((out == 2).sum()) - 8 ** 3) <= 0.25 * 8 ** 3


class _Stage:
    """Predictor-like: remembers the data it was given, returns fixed logits."""

    def __init__(self, configuration, logits):
        self.configuration, self.plan = configuration, PLANS.configurations[configuration]
        self.plans, self.out, self.seen = PLANS, logits, None

    def prepare(self, image, geometry, case_id="case"):
        sp = tuple(PLANS.configurations["3d_cascade_fullres"].spacing)  # both stages on one grid, for simplicity
        return image.copy(), _props(image.shape[1:], sp, sp, image.shape[1:])

    def logits(self, data):
        self.seen = data
        return torch.as_tensor(self.out)


def test_cascade_appends_previous_stage_one_hot():
    k = len(PLANS.labels)
    image = np.random.default_rng(1).normal(size=(len(PLANS.channel_names), 4, 5, 6)).astype(np.float32)
    low_seg = np.random.default_rng(2).integers(0, k, size=(4, 5, 6))
    previous = _Stage("3d_lowres", 10 * _one_hot(low_seg, k))
    current = _Stage("3d_cascade_fullres", np.zeros((k, 4, 5, 6), np.float32))
    pred = CascadePredictor(previous, current).predict(image, GEOMETRY)
    seen = current.seen
    assert seen.shape == (image.shape[0] + k - 1, 4, 5, 6)
    assert np.array_equal(seen[:image.shape[0]], image)
    for c in range(1, k):
        assert np.array_equal(seen[image.shape[0] + c - 1], (low_seg == c).astype(np.float32))
    assert pred.segmentation.shape == (4, 5, 6)
