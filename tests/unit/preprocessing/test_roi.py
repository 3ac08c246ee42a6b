"""Region-of-interest masks through preprocessing and training: labels outside become IGNORE, which survives
resampling and augmentation, is left out of the loss and the pseudo-Dice, and random patches are centred inside."""

from __future__ import annotations

import numpy as np
import torch

from autoseg.data.augmentation import finalize_batch
from autoseg.data.sampling import SamplingConfig, sample_patch
from autoseg.data.spatial import SpatialParams, spatial_augment
from autoseg.io.image import Geometry
from autoseg.io.roi import apply_roi, apply_roi_to_probabilities
from autoseg.preprocessing.case import class_locations, preprocess_case
from autoseg.preprocessing.crop import IGNORE, OUTSIDE
from autoseg.training.losses import DiceCELoss
from autoseg.training.trainer import _confusion

from conftest import make_plans

G = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _case(rng):
    image = rng.random((1, 8, 24, 24)).astype(np.float32) + 1.0  # nonzero everywhere: no crop
    label = np.zeros((8, 24, 24), np.uint8)
    label[2:6, 8:14, 8:14] = 1
    roi = np.zeros((8, 24, 24), bool)
    roi[:, 4:20, 4:20] = True
    return image, label, roi


def test_labels_outside_the_roi_become_ignore_and_random_centres_fall_inside():
    rng = np.random.default_rng(0)
    image, label, roi = _case(rng)
    plans = make_plans((4.0, 1.5, 1.5), labels=("background", "a"))
    case = preprocess_case(image, label, G, plans, "3d_fullres", "c", rng, roi=roi)
    seg = case.seg[0]
    assert (seg == IGNORE).any() and (seg == 1).any() and not (seg == OUTSIDE).any()
    # voxels per class count only labelled voxels inside the region
    assert sum(case.properties.voxels_per_class) == int((seg >= 0).sum())
    inside = case.locations[0]
    assert len(inside) and (seg[tuple(inside.T)] != IGNORE).all()
    assert set(case.locations) == {0, 1}
    cfg = SamplingConfig(patch_size=(2, 4, 4), batch_size=1, oversample_foreground=0.0)
    for i in range(30):
        _, s = sample_patch(case.data, case.seg, case.locations, cfg, False, np.random.default_rng(i))
        assert s[0, 1, 2, 2] != IGNORE  # the patch centre is inside the region
    # a case without a mask has no key 0, and nothing ignored
    plain = preprocess_case(image, label, G, plans, "3d_fullres", "c", np.random.default_rng(0))
    assert 0 not in plain.locations and not (plain.seg == IGNORE).any()
    assert set(class_locations(plain.seg[0], 2, np.random.default_rng(0))) == {1}


def test_ignore_survives_rotation_and_scaling():
    seg = np.zeros((1, 1, 12, 12, 12), np.int8)
    seg[0, 0, :, :, :4] = IGNORE
    seg[0, 0, 4:8, 4:8, 6:10] = 1
    data = np.random.default_rng(0).random((1, 1, 12, 12, 12)).astype(np.float32)
    params = SpatialParams((8, 8, 8), 0.5, p_rotation=1.0, p_scaling=1.0)
    _, out = spatial_augment(data, seg, params, np.random.default_rng(3))
    assert set(np.unique(out)) <= {OUTSIDE, IGNORE, 0, 1} and (out == IGNORE).any()


def test_ignore_reaches_the_loss_as_a_negative_target_and_is_left_out():
    seg = np.array([[[[OUTSIDE, IGNORE, 1, 0]]]], np.int8)  # (B, S, 1, 4)
    batch = finalize_batch(np.zeros((1, 1, 1, 4), np.float32), seg)
    target = batch["target"][0]
    assert target.tolist() == [[[[0, IGNORE, 1, 0]]]]  # outside -> background, ignore stays negative
    t = torch.from_numpy(target)
    loss = DiceCELoss()
    logits = torch.zeros(1, 2, 1, 4)
    # whatever the network says where the label is ignored, the loss does not change
    other = logits.clone()
    other[0, 1, 0, 1] = 50.0
    assert torch.allclose(loss(logits, t.long()), loss(other, t.long()))
    counts = _confusion(other, t, 2)
    assert counts[1, 0] == 0  # the confident foreground at the ignored voxel is no false positive


def test_prediction_is_background_outside_the_roi():
    seg = np.array([[1, 2], [2, 1]], np.uint8)
    roi = np.array([[True, False], [False, True]])
    assert apply_roi(seg, roi).tolist() == [[1, 0], [0, 1]]
    assert apply_roi(seg, None) is seg
    p = np.full((3, 2, 2), 1 / 3, np.float32)
    apply_roi_to_probabilities(p, roi)
    assert p[:, 0, 1].tolist() == [1, 0, 0] and np.allclose(p[:, 0, 0], 1 / 3)
