"""autoseg's spatial transform: exact crops, exact right-angle rotations, agreement with scipy's interpolation."""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import map_coordinates

from autoseg.data.spatial import (SpatialParams, _Neighbours, draw_transform, resample_data, resample_labels,
                                  rotation_matrix, sample_coordinates, spatial_augment)


def _labels(rng, shape, n=3):
    return rng.integers(-1, n, size=shape).astype(np.int8)


def test_identity_is_the_centre_crop():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 2, 14, 16, 12)).astype(np.float32)
    seg = _labels(rng, (2, 1, 14, 16, 12))
    d, s = spatial_augment(data, seg, SpatialParams((8, 8, 8), 0.5, p_rotation=0, p_scaling=0), rng)
    np.testing.assert_array_equal(d, data[:, :, 3:11, 4:12, 2:10])
    np.testing.assert_array_equal(s, seg[:, :, 3:11, 4:12, 2:10])
    # the interpolating path with an identity matrix gives the same
    nb = _Neighbours(sample_coordinates(np.eye(3), (8, 8, 8), (14, 16, 12)), (14, 16, 12))
    assert nb.flat.shape[0] == 1
    np.testing.assert_array_equal(resample_data(data[0], nb, (8, 8, 8)), data[0, :, 3:11, 4:12, 2:10])
    np.testing.assert_array_equal(resample_labels(seg[0], nb, (8, 8, 8)), seg[0, :, 3:11, 4:12, 2:10])


def test_right_angle_rotation_is_exact():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 12, 12)).astype(np.float32)
    seg = _labels(rng, (1, 12, 12))
    m = rotation_matrix([math.pi / 2], 2)
    nb = _Neighbours(sample_coordinates(m, (8, 8), (12, 12)), (12, 12))
    d = resample_data(data, nb, (8, 8))
    s = resample_labels(seg, nb, (8, 8))
    centre = data[0, 2:10, 2:10]
    assert any(np.allclose(d[0], np.rot90(centre, k), atol=1e-5) for k in (1, 3))
    k = next(k for k in (1, 3) if np.allclose(d[0], np.rot90(centre, k), atol=1e-5))
    np.testing.assert_array_equal(s[0], np.rot90(seg[0, 2:10, 2:10], k))


def test_data_matches_scipy_linear_interpolation_inside():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(2, 20, 22, 18)).astype(np.float32)
    m = rotation_matrix([0.3, -0.2, 0.4], 3) * 0.9
    coords = sample_coordinates(m, (10, 12, 8), data.shape[1:])
    nb = _Neighbours(coords, data.shape[1:])
    ours = resample_data(data, nb, (10, 12, 8))
    for c in range(2):
        ref = map_coordinates(data[c].astype(np.float64), coords, order=1, mode="nearest")
        np.testing.assert_allclose(ours[c], ref, atol=1e-4)


def test_labels_are_argmax_of_interpolated_indicators():
    rng = np.random.default_rng(3)
    seg = np.zeros((1, 20, 22, 18), np.int8)
    seg[0, 5:15, 6:16, 4:12] = 1
    seg[0, 8:12, 9:13, 6:9] = 2
    m = rotation_matrix([0.31, -0.17, 0.43], 3) * 1.13
    coords = sample_coordinates(m, (10, 12, 8), seg.shape[1:])
    ours = resample_labels(seg, _Neighbours(coords, seg.shape[1:]), (10, 12, 8))
    scores = np.stack([map_coordinates((seg[0] == lab).astype(float), coords, order=1, mode="constant", cval=0)
                       for lab in (0, 1, 2)])
    clear = np.sort(scores, axis=0)[-1] - np.sort(scores, axis=0)[-2] > 1e-3  # no near-ties
    np.testing.assert_array_equal(ours[0][clear], np.argmax(scores, axis=0)[clear])
    assert set(np.unique(ours)) <= {-1, 0, 1, 2}


def test_outside_the_box_reads_fill_values():
    data = np.ones((1, 6, 6), np.float32)
    seg = np.ones((1, 6, 6), np.int8)
    m = np.eye(2) * 3.0  # zoom far out: most of the patch samples outside the box
    nb = _Neighbours(sample_coordinates(m, (6, 6), (6, 6)), (6, 6))
    d, s = resample_data(data, nb, (6, 6)), resample_labels(seg, nb, (6, 6))
    assert d[0, 0, 0] == 0 and s[0, 0, 0] == -1
    assert d[0, 3, 3] == 1 and s[0, 3, 3] == 1


def test_in_plane_only_keeps_slices_apart():
    rng = np.random.default_rng(4)
    data = np.broadcast_to(10.0 ** np.arange(6, dtype=np.float32)[:, None, None], (1, 6, 30, 30)).copy()
    params = SpatialParams((6, 16, 16), math.pi, in_plane_only=True, p_rotation=1.0, p_scaling=1.0)
    for _ in range(5):
        d, _ = spatial_augment(data[None], np.zeros((1, 1, 6, 30, 30), np.int8), params, rng)
        for z in range(6):  # slice z (value 10^z) mixed at most with the zero padding, never with other slices
            assert d[0, 0, z].max() <= 10.0 ** z * (1 + 1e-5)
            assert np.isclose(d[0, 0, z, 8, 8], 10.0 ** z, rtol=1e-5)


def test_draws_are_reproducible():
    p = SpatialParams((8, 8, 8), 0.5, p_rotation=0.5, p_scaling=0.5)
    a = [draw_transform(p, np.random.default_rng(9)) for _ in range(2)]
    assert (a[0] is None and a[1] is None) or np.array_equal(a[0], a[1])
    hits = sum(draw_transform(p, r) is not None for r in [np.random.default_rng(i) for i in range(400)])
    assert 250 < hits < 350  # 1 - 0.5 * 0.5 = 75% transformed
