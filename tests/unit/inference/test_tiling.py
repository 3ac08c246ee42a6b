"""Tile starts, Gaussian importance weights and padding (numpy only)."""

import itertools
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from autoseg.inference.tiling import gaussian_importance, num_tiles, pad_to_patch, tile_slices, tile_starts


@pytest.mark.parametrize("shape,patch,step", [
    ((36, 50, 35), (40, 56, 40), 0.5),  # smaller than the patch: padded first below
    ((110,), (64,), 0.5),
    ((64, 64), (64, 64), 0.5),
    ((37, 101, 65), (16, 32, 24), 0.5),
    ((37, 101, 65), (16, 32, 24), 1.0),
    ((37, 101, 65), (16, 32, 24), 0.33),
    ((9, 200), (9, 7), 0.25),
])
def test_tiles_cover_every_voxel_and_stay_inside(shape, patch, step):
    shape = tuple(max(n, p) for n, p in zip(shape, patch))
    starts = tile_starts(shape, patch, step)
    for n, p, s in zip(shape, patch, starts):
        assert s == sorted(s) and s[0] == 0 and s[-1] == n - p
        assert len(s) == math.ceil((n - p) / (p * step)) + 1
        assert all(b - a <= p * step + 1 for a, b in zip(s, s[1:]))  # evenly spaced, at most one step apart
    cover = np.zeros(shape, dtype=int)
    tiles = list(tile_slices(shape, patch, step))
    for t in tiles:
        assert cover[t].shape == tuple(patch)
        cover[t] += 1
    assert cover.min() >= 1
    assert len(tiles) == num_tiles(shape, patch, step) == math.prod(len(s) for s in starts)


def test_nnunet_example_and_errors():
    assert tile_starts((110,), (64,), 0.5) == [[0, 23, 46]]
    assert tile_starts((64,), (64,), 0.5) == [[0]]
    with pytest.raises(ValueError, match="pad"):
        tile_starts((30, 60), (40, 56))
    with pytest.raises(ValueError, match="step"):
        tile_starts((100,), (10,), 0)
    with pytest.raises(ValueError, match="length"):
        tile_starts((100, 100), (10,))


def test_pad_small_image_centred_and_undo():
    img = np.random.default_rng(0).random((2, 36, 50, 35)).astype(np.float32)
    padded, unpad = pad_to_patch(img, (40, 56, 40))
    assert padded.shape == (2, 40, 56, 40)
    assert np.array_equal(padded[unpad], img)
    assert unpad[1:] == (slice(2, 38), slice(3, 53), slice(2, 37))  # centred: missing // 2 before
    assert padded.sum() == pytest.approx(img.sum(), rel=1e-5)  # zeros around
    logits = np.zeros((3, 40, 56, 40))
    assert logits[unpad].shape == (3, 36, 50, 35)  # the slicer also undoes padding of class logits


def test_pad_only_short_axes_and_no_copy_when_large_enough():
    img = np.ones((1, 50, 20))
    padded, unpad = pad_to_patch(img, (40, 32))
    assert padded.shape == (1, 50, 32) and np.array_equal(padded[unpad], img)
    same, unpad = pad_to_patch(img, (8, 8))
    assert same is img and img[unpad].shape == img.shape


@pytest.mark.parametrize("patch", [(40, 56, 40), (7, 9, 5), (64, 64), (1, 12), (5,)])
def test_gaussian_shape_peak_symmetry_no_zeros(patch):
    g = gaussian_importance(patch)
    assert g.shape == patch and g.dtype == np.float32
    assert g.max() == pytest.approx(10.0) and g.min() > 0
    centre = tuple(p // 2 for p in patch)
    assert g[centre] == g.max()
    for axis, p in enumerate(patch):  # symmetric around the centre voxel n // 2
        inner = tuple(slice(1, None) if (a == axis and p % 2 == 0) else slice(None) for a in range(len(patch)))
        sub = g[inner]
        assert np.allclose(sub, np.flip(sub, axis))


def test_gaussian_matches_filtered_impulse():
    """The weights are a Gaussian filter of a unit impulse (4-sigma truncation), peak-normalised."""
    for patch in [(40, 56, 40), (24, 7)]:
        impulse = np.zeros(patch)
        impulse[tuple(p // 2 for p in patch)] = 1
        ref = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
        ref = ref / ref.max() * 10
        ref[ref == 0] = ref[ref > 0].min()
        assert np.allclose(gaussian_importance(patch), ref, rtol=1e-5, atol=1e-6)
    g = gaussian_importance((16, 16), sigma_scale=0.25, value_scaling=1.0)
    assert g.max() == pytest.approx(1.0) and g.min() > 0


def test_tile_slices_c_order():
    tiles = list(tile_slices((12, 12), (8, 8), 0.5))
    starts = [(t[0].start, t[1].start) for t in tiles]
    assert starts == list(itertools.product([0, 4], [0, 4]))
