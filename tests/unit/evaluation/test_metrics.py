"""Per-class metrics on hand-made masks: known values, anisotropic distances, empty masks."""

import math

import numpy as np
import pytest

from autoseg.evaluation.metrics import (class_metrics, counts, dice, hd95, image_diagonal, iou, label_metrics,
                                        normalized_surface_dice, surface, surface_distances)


def _cube(shape=(30, 30, 30), start=(10, 10, 10), size=10):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def test_known_dice_iou_counts():
    ref = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros_like(ref)
    ref[0, :2] = True  # 8 voxels
    pred[0, 1:3] = True  # 8 voxels, 4 shared
    c = counts(pred, ref)
    assert (c.tp, c.fp, c.fn, c.n_ref, c.n_pred) == (4, 4, 4, 8, 8)
    assert dice(c) == pytest.approx(0.5) and iou(c) == pytest.approx(1 / 3)
    r = class_metrics(pred, ref, (1, 1, 1))
    assert r.dice == pytest.approx(0.5) and r.iou == pytest.approx(1 / 3) and r.counts == c


@pytest.mark.parametrize("axis,shift", [(0, 2), (1, 3), (2, 1), (0, 4)])
def test_hd95_of_shifted_cubes_is_the_shift_in_mm(axis, shift):
    spacing = (3.0, 0.5, 0.8)
    ref = _cube()
    pred = np.roll(ref, shift, axis=axis)
    assert hd95(pred, ref, spacing) == pytest.approx(shift * spacing[axis])
    assert hd95(ref, pred, spacing) == pytest.approx(shift * spacing[axis])


def test_identical_masks():
    ref = _cube()
    r = class_metrics(ref, ref, (2.0, 1.0, 0.5))
    assert (r.dice, r.iou, r.hd95, r.nsd) == (1.0, 1.0, 0.0, 1.0)


def test_nsd_tolerance_in_mm():
    spacing = (3.0, 0.5, 0.8)
    ref = _cube()
    fine = np.roll(ref, 1, axis=1)  # 0.5 mm shift: every surface voxel within 1 mm
    assert normalized_surface_dice(fine, ref, spacing, 1.0) == pytest.approx(1.0)
    coarse = np.roll(ref, 1, axis=0)  # 3 mm shift: the two shifted faces are out of tolerance
    nsd = normalized_surface_dice(coarse, ref, spacing, 1.0)
    assert 0.5 < nsd < 1.0
    assert normalized_surface_dice(coarse, ref, spacing, 3.0) == pytest.approx(1.0)
    # against a brute-force search over all surface voxel pairs
    d = _brute_force(coarse, ref, spacing)
    assert nsd == pytest.approx(((d.min(axis=1) <= 1).sum() + (d.min(axis=0) <= 1).sum()) / sum(d.shape))


def _brute_force(pred, ref, spacing):
    """Distances (mm) between every surface voxel of ``pred`` (rows) and of ``ref`` (columns)."""
    pts_p = np.argwhere(surface(pred)) * spacing
    pts_r = np.argwhere(surface(ref)) * spacing
    return np.linalg.norm(pts_p[:, None] - pts_r[None], axis=-1)


def test_surface_distances_match_brute_force():
    """The bounding-box crop gives the distances of a brute-force search over all surface voxel pairs."""
    rng = np.random.default_rng(0)
    spacing = (2.5, 0.7, 1.1)
    pred = np.zeros((12, 15, 14), dtype=bool)
    ref = np.zeros_like(pred)
    pred[2:7, 3:12, 0:6] = True
    pred[rng.random(pred.shape) < 0.03] = True
    ref[4:10, 5:14, 3:10] = True
    a, b = surface_distances(pred, ref, spacing)
    d = _brute_force(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(a), np.sort(d.min(axis=1)), rtol=1e-9)
    np.testing.assert_allclose(np.sort(b), np.sort(d.min(axis=0)), rtol=1e-9)


def test_surface_touching_the_image_border():
    m = np.ones((3, 4, 5), dtype=bool)
    assert surface(m).sum() == m.size - 1 * 2 * 3  # interior voxels (1, 1..2, 1..3) are not surface


def test_empty_masks_are_nan_safe():
    empty = np.zeros((10, 10, 10), dtype=bool)
    both = class_metrics(empty, empty, (1, 1, 1))
    assert all(math.isnan(x) for x in (both.dice, both.iou, both.hd95, both.nsd))
    assert (both.counts.tp, both.counts.fp, both.counts.fn) == (0, 0, 0)
    ref = _cube((10, 10, 10), (2, 2, 2), 3)
    spacing = (2.0, 1.0, 1.0)
    for pred, r in ((empty, ref), (ref, empty)):
        m = class_metrics(pred, r, spacing)
        assert (m.dice, m.iou, m.nsd) == (0.0, 0.0, 0.0)
        assert m.hd95 == pytest.approx(image_diagonal((10, 10, 10), spacing)) == pytest.approx(math.sqrt(600))
    assert math.isnan(hd95(empty, empty, spacing)) and math.isnan(normalized_surface_dice(empty, empty, spacing))


def test_label_maps_and_argument_checks():
    ref = np.zeros((8, 8, 8), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[1:4, 1:4, 1:4] = 1
    pred[1:4, 1:4, 1:4] = 1
    ref[5:7, 5:7, 5:7] = 2
    res = label_metrics(pred, ref, [1, 2, 3], (1, 1, 1))
    assert res[1].dice == 1.0 and res[2].dice == 0.0 and math.isnan(res[3].dice)
    with pytest.raises(ValueError, match="shape"):
        class_metrics(pred[:4], ref, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        class_metrics(pred, ref, (1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(pred, ref, (1, 1, 1), -1)
