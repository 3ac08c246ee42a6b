import numpy as np
import pytest

from autoseg.fingerprint.case import analyze_case, nonzero_bbox


@pytest.mark.parametrize("nonzero, expected", [
    ((slice(2, 5), slice(1, 3), slice(0, 6)), (slice(2, 5), slice(1, 3), slice(0, 6))),
    ((slice(0, 8), slice(0, 6), slice(0, 6)), (slice(0, 8), slice(0, 6), slice(0, 6))),
    (None, (slice(0, 8), slice(0, 6), slice(0, 6))),  # all zero: keep everything
])
def test_nonzero_bbox(nonzero, expected):
    img = np.zeros((2, 8, 6, 6), np.float32)
    if nonzero is not None:
        img[(1,) + nonzero] = 1.0  # only the second channel is nonzero there: any channel counts
    assert nonzero_bbox(img) == expected
    assert nonzero_bbox(img, np.any(img != 0, axis=0)) == expected  # the mask given (the crop's call)


def test_analyze_case_crop_and_exact_statistics():
    img = np.zeros((1, 10, 10, 10), np.float32)
    img[0, 2:8, 2:8, 2:8] = 5.0
    lab = np.zeros((10, 10, 10), np.int16)
    lab[3:5, 3:5, 3:5] = 1
    img[0, 3:5, 3:5, 3:5] = np.arange(8).reshape(2, 2, 2) + 10
    fp, inten = analyze_case("c", img, lab, (2.0, 1.0, 1.0), max_samples=3, rng=np.random.default_rng(0))
    assert fp.shape_before_crop == (10, 10, 10) and fp.shape_after_crop == (6, 6, 6)
    assert fp.relative_size_after_crop == pytest.approx(216 / 1000)
    assert fp.foreground_voxels == 8 and fp.spacing == (2.0, 1.0, 1.0)
    assert inten.mean[0] == pytest.approx(13.5) and inten.min[0] == 10 and inten.max[0] == 17
    assert inten.samples.shape == (1, 3)  # subsampled, but the moments are exact


def test_analyze_case_without_foreground():
    fp, inten = analyze_case("c", np.ones((1, 4, 4, 4), np.float32), np.zeros((4, 4, 4), np.int16), (1, 1, 1),
                             10, np.random.default_rng(0))
    assert inten is None and fp.foreground_voxels == 0
