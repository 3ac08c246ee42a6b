import numpy as np
import pytest
from scipy import ndimage as ndi

from autoseg.planning.spacing import resampled_shape
from autoseg.preprocessing.resample import (axis_operator, resample_data, resample_labels, resample_to_shape,
                                            separate_z_axis)


def _smooth(rng, shape):
    return ndi.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("new_shape", [(13, 40, 9), (30, 17, 25)])
def test_separable_matrices_equal_scipy_zoom(order, new_shape):
    x = _smooth(np.random.default_rng(0), (20, 24, 18))
    ours = resample_data(x[None], new_shape, (1, 1, 1), (1, 1, 1), order=order)[0]
    ref = ndi.zoom(x.astype(np.float64), np.divide(new_shape, x.shape), order=order, mode="nearest",
                   grid_mode=True)
    if order == 3:  # resize(clip=True): the input range
        ref = np.clip(ref, x.min(), x.max())
    assert ours.dtype == np.float32 and ours.shape == new_shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("current, new, axis", [
    ((1, 1, 1), (1, 1, 1), None),
    ((3, 1, 1), (2, 1, 1), None),            # ratio 3 is not above the threshold
    ((5, 0.8, 0.8), (1, 1, 1), 0),           # the source decides
    ((1, 1, 1), (0.8, 4, 0.8), 1),           # then the target
    ((0.7, 5, 0.8), (2, 1, 1), 1),
    ((5, 5, 1), (1, 1, 1), None),            # two coarsest axes: no separate axis
])
def test_separate_z_axis(current, new, axis):
    assert separate_z_axis(current, new, 3.0) == axis


def test_anisotropic_spacing_resamples_the_coarse_axis_with_nearest_neighbour():
    rng = np.random.default_rng(1)
    x = _smooth(rng, (10, 30, 28))
    new_shape = (13, 36, 33)
    out = resample_data(x[None], new_shape, (5.0, 0.8, 0.8), (3.8, 0.66, 0.68), order=3)[0]
    # reference: in-plane cubic per slice, then nearest slice
    inplane = np.stack([ndi.zoom(s.astype(np.float64), np.divide(new_shape[1:], s.shape), order=3, mode="nearest",
                                 grid_mode=True) for s in x])
    idx = axis_operator(10, 13, 0)
    ref = np.clip(inplane[idx], x.min(), x.max())
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # every output slice is exactly an (interpolated) input slice: no mixing across the thick slices
    full3d = resample_data(x[None], new_shape, (1, 1, 1), (1, 1, 1), order=3)[0]
    assert np.abs(full3d - out).max() > 1e-3


def test_labels_one_hot_keep_outside_and_classes():
    seg = np.zeros((12, 30, 30), np.int8)
    seg[:, :, :4] = -1
    seg[3:9, 8:22, 8:22] = 1
    seg[5:7, 12:16, 12:16] = 2
    up = resample_labels(seg, (24, 60, 60), (2, 1, 1), (1, 0.5, 0.5))
    assert up.dtype == np.int8 and set(np.unique(up)) == {-1, 0, 1, 2}
    back = resample_labels(up, seg.shape, (1, 0.5, 0.5), (2, 1, 1))
    assert (back == seg).mean() > 0.99
    # nearest neighbour (order 0) is a plain lookup
    near = resample_labels(seg, (24, 60, 60), (2, 1, 1), (1, 0.5, 0.5), order=0)
    assert (near[::2, ::2, ::2] == seg).mean() > 0.97


def test_label_resampling_agrees_with_per_class_interpolation():
    rng = np.random.default_rng(3)
    seg = (ndi.gaussian_filter(rng.normal(size=(16, 20, 18)), 2) > 0).astype(np.int8)
    seg[ndi.gaussian_filter(rng.normal(size=seg.shape), 2) > 0.05] = 2
    new_shape = (21, 13, 25)
    ours = resample_labels(seg, new_shape, (1, 1, 1), (1, 1, 1))
    weights = np.stack([ndi.zoom((seg == v).astype(np.float64), np.divide(new_shape, seg.shape), order=1,
                                 mode="nearest", grid_mode=True) for v in (0, 1, 2)])
    ref = weights.argmax(0)
    clear = np.sort(weights, axis=0)[-1] - np.sort(weights, axis=0)[-2] > 1e-4  # ignore exact ties
    assert np.array_equal(ours[clear], ref[clear])


def test_unchanged_shape_is_a_no_op_and_helpers_agree():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)
    assert resample_data(x, (5, 6, 7), (1, 1, 1), (2, 2, 2)) is x
    shape = resampled_shape(x.shape[1:], (1, 1, 1), (0.5, 2, 1))  # as preprocessing computes it
    a = resample_to_shape(x, shape, (1, 1, 1), (0.5, 2, 1))
    b = resample_data(x, (10, 3, 7), (1, 1, 1), (0.5, 2, 1), 3)
    assert shape == (10, 3, 7) and a.shape == (2, 10, 3, 7) and np.array_equal(a, b)
    seg = (x[0] > 0).astype(np.int8)
    assert resample_to_shape(seg, shape, (1, 1, 1), (0.5, 2, 1), is_label=True).shape == (10, 3, 7)


def test_a_label_between_output_samples_may_vanish_without_error():
    seg = np.zeros((4, 40, 4), np.int8)
    seg[:, 3, :] = 1  # one thin sheet, downsampled 10x
    out = resample_labels(seg, (4, 4, 4), (1, 1, 1), (1, 10, 1))
    assert out.shape == (4, 4, 4)
