"""Random damage to the cascade's previous-stage input: exact ball morphology, component removal, one-hot kept."""

import numpy as np
import pytest
from scipy import ndimage

from autoseg.data.previous_stage import morphology, perturb_previous_stage, remove_random_component


def _ball(radius: float, ndim: int = 3) -> np.ndarray:
    r = int(np.floor(radius))
    grid = np.indices((2 * r + 1,) * ndim) - r
    return (grid ** 2).sum(0) <= radius ** 2


@pytest.mark.parametrize("operation, reference", [
    ("dilate", ndimage.binary_dilation), ("close", ndimage.binary_closing)])
@pytest.mark.parametrize("radius", [1.0, 2.5, 4.0])
def test_growing_operations_equal_scipy_with_a_ball(operation, reference, radius):
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 30, 30), bool)
    mask[10:20, 8:22, 12:18] = True
    mask[tuple(rng.integers(6, 24, (3, 40)))] = True  # away from the border, where the two differ by design
    pad = int(radius) + 1
    expected = reference(np.pad(mask, pad), structure=_ball(radius))[pad:-pad, pad:-pad, pad:-pad]
    np.testing.assert_array_equal(morphology(mask, operation, radius), expected)


@pytest.mark.parametrize("radius", [1.0, 3.0])
def test_erosion_and_opening_equal_scipy_away_from_the_border(radius):
    mask = np.zeros((32, 32, 32), bool)
    mask[8:24, 6:26, 10:22] = True
    mask[12:14, 2:30, 15:17] = True  # a thin bar opening removes
    ball = _ball(radius)
    np.testing.assert_array_equal(morphology(mask, "erode", radius), ndimage.binary_erosion(mask, ball))
    np.testing.assert_array_equal(morphology(mask, "open", radius), ndimage.binary_opening(mask, ball))


def test_no_erosion_from_the_patch_border_and_empty_masks_stay_empty():
    full = np.ones((8, 8, 8), bool)
    assert morphology(full, "erode", 2).all()
    edge = np.zeros((8, 8, 8), bool)
    edge[:4] = True
    assert morphology(edge, "erode", 1.0)[:3].all() and not morphology(edge, "erode", 1.0)[3].any()
    for op in ("dilate", "erode", "open", "close"):
        assert not morphology(np.zeros((5, 5), bool), op, 2).any()


def test_remove_random_component_spares_large_ones():
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # 4 voxels
    mask[10:19, 10:19] = True  # 81 voxels
    out = remove_random_component(mask, max_voxels=50, rng=np.random.default_rng(0))
    assert not out[1:3, 1:3].any() and out[10:19, 10:19].all()
    assert np.array_equal(remove_random_component(mask, max_voxels=4, rng=np.random.default_rng(0)), mask)


def test_perturbation_keeps_channels_exclusive_and_is_reproducible():
    seg = np.zeros((4, 24, 24, 24), np.int64)
    seg[:, 4:12, 4:12, 4:12] = 1
    seg[:, 12:20, 6:14, 6:14] = 2
    seg[:, 2:4, 18:20, 18:20] = 2
    one_hot = np.stack([(seg == 1), (seg == 2)], axis=1).astype(np.float32)
    a = perturb_previous_stage(one_hot.copy(), np.random.default_rng(3), p_morphology=1.0, p_remove_component=1.0)
    b = perturb_previous_stage(one_hot.copy(), np.random.default_rng(3), p_morphology=1.0, p_remove_component=1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, one_hot)
    assert a.max() <= 1 and (a.sum(1) <= 1).all()  # at most one label per voxel
    untouched = perturb_previous_stage(one_hot.copy(), np.random.default_rng(3), p_morphology=0.0,
                                       p_remove_component=0.0)
    np.testing.assert_array_equal(untouched, one_hot)
