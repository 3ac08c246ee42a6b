import pytest

from autoseg.planning.spacing import resampled_shape, target_spacing, transpose_axes


@pytest.mark.parametrize("spacings, shapes, expected", [
    # isotropic: per-axis median
    ([(1, 1, 1)] * 5, [(36, 50, 35)] * 5, (1.0, 1.0, 1.0)),
    ([(1, 0.5, 0.5), (2, 0.7, 0.7), (3, 0.9, 0.9)], [(40, 100, 100)] * 3, (2.0, 0.7, 0.7)),
    # anisotropic spacing AND few voxels on that axis: 10th percentile of the coarse axis
    ([(5, 0.8, 0.8), (4, 0.8, 0.8), (6, 0.8, 0.8), (3, 0.8, 0.8), (5, 0.8, 0.8)], [(24, 100, 100)] * 5,
     (3.4, 0.8, 0.8)),
    # anisotropic spacing but many voxels on that axis: median
    ([(5, 0.8, 0.8), (3, 0.8, 0.8), (6, 0.8, 0.8)], [(200, 100, 100)] * 3, (5.0, 0.8, 0.8)),
])
def test_target_spacing(spacings, shapes, expected):
    assert target_spacing(spacings, shapes) == pytest.approx(expected)


def test_target_spacing_floor_is_just_above_the_finest_other_axis():
    # median 4 > 3 * 1 and 10 * 3 < 100: the rule fires; the 10th percentile (0.5) is finer than 1.0
    got = target_spacing([(0.5, 1, 1)] * 2 + [(4, 1, 1)] * 8, [(10, 100, 100)] * 10)
    assert got[0] == pytest.approx(1.0 + 1e-5)


@pytest.mark.parametrize("spacing, forward, backward", [
    ((1, 1, 1), (0, 1, 2), (0, 1, 2)),
    ((0.8, 0.8, 5.0), (2, 0, 1), (1, 2, 0)),
    ((0.7, 3.0, 0.7), (1, 0, 2), (1, 0, 2)),
])
def test_transpose_axes(spacing, forward, backward):
    assert transpose_axes(spacing) == (forward, backward)


def test_resampled_shape():
    assert resampled_shape((10, 100, 100), (5, 0.8, 0.8), (2.5, 1.6, 1.6)) == (20, 50, 50)
