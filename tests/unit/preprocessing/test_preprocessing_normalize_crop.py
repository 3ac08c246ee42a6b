import numpy as np
import pytest

from autoseg.preprocessing.crop import OUTSIDE, crop_to_nonzero, uncrop
from autoseg.preprocessing.normalize import normalization_problems, normalize, normalize_channel
from autoseg.schema.plans import ChannelNormalization as N


def _image():
    rng = np.random.default_rng(0)
    x = np.zeros((8, 10, 12), np.float32)
    x[2:6, 2:8, 3:10] = rng.normal(100, 15, (4, 6, 7))
    mask = x != 0
    return x, mask


@pytest.mark.parametrize("norm, check", [
    (N("zscore"), lambda x, m, y: np.isclose(y.mean(), 0, atol=1e-5) and np.isclose(y.std(), 1, atol=1e-4)),
    (N("zscore", use_nonzero_mask=True),
     lambda x, m, y: np.isclose(y[m].mean(), 0, atol=1e-5) and np.isclose(y[m].std(), 1, atol=1e-4)
     and np.all(y[~m] == 0)),
    (N("ct", clip_low=90, clip_high=110, mean=100, std=5),
     lambda x, m, y: np.allclose(y, (np.clip(x, 90, 110) - 100) / 5, atol=1e-5)),
    (N("ct", clip_low=0, clip_high=1, mean=0, std=0),  # std 0 -> divided by 1e-8, no crash, finite
     lambda x, m, y: np.all(np.isfinite(y))),
    (N("none"), lambda x, m, y: np.array_equal(x, y)),
    (N("rescale_0_1"), lambda x, m, y: np.isclose(y.min(), 0) and np.isclose(y.max(), 1)),
])
def test_normalization_schemes(norm, check):
    x, mask = _image()
    before = x.copy()
    y = normalize_channel(x, mask, norm)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert check(x, mask, y)
    assert np.array_equal(x, before)  # input untouched


def test_normalize_per_channel_and_problems():
    x, mask = _image()
    img = np.stack([x, 2 * x + 7])
    out = normalize(img, mask, (N("zscore", use_nonzero_mask=True), N("zscore", use_nonzero_mask=True)))
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)  # z-score removes the affine difference
    assert normalization_problems((N("zscore"),), 2) == ["1 normalization entries for 2 channel(s)"]
    assert "unknown normalization scheme" in normalization_problems((N("minmax"),), 1)[0]
    assert "needs clip_low" in normalization_problems((N("ct"),), 1)[0]
    with pytest.raises(ValueError):
        normalize_channel(x, mask, N("minmax"))


def test_crop_fills_holes_and_marks_outside():
    img = np.zeros((2, 10, 12, 14), np.float32)
    img[0, 2:8, 3:9, 4:12] = 1.0
    img[0, 4:6, 5:7, 6:9] = 0.0  # a hole: inside the mask after filling
    img[1, 1, 3, 4] = 5.0  # the second channel extends the box
    label = np.zeros((10, 12, 14), np.uint8)
    label[3:5, 4:6, 5:7] = 2
    res = crop_to_nonzero(img, label)
    assert res.bbox == (slice(1, 8), slice(3, 9), slice(4, 12))
    assert res.image.shape == (2, 7, 6, 8) and np.shares_memory(res.image, img)
    assert res.mask[3:5, 2:4, 2:5].all()  # hole filled
    assert res.label.dtype == np.int8
    assert (res.label == OUTSIDE).sum() == (~res.mask).sum()
    assert (res.label == 2).sum() == 8
    back = uncrop(res.label, tuple((s.start, s.stop) for s in res.bbox), label.shape, fill=0)
    assert np.array_equal(np.where(back == OUTSIDE, 0, back), label)
    multi = uncrop(np.ones((2, 7, 6, 8), np.float32), ((1, 8), (3, 9), (4, 12)), (10, 12, 14), fill=(1.0, 0.0))
    assert multi[0].min() == 1 and multi[1].sum() == 7 * 6 * 8


def test_crop_of_an_empty_image_keeps_everything():
    res = crop_to_nonzero(np.zeros((1, 4, 5, 6), np.float32), np.zeros((4, 5, 6), np.int16))
    assert res.image.shape == (1, 4, 5, 6) and not res.mask.any() and (res.label == OUTSIDE).all()
    y = normalize_channel(res.image[0], res.mask, N("zscore", use_nonzero_mask=True))
    assert np.all(y == 0)
