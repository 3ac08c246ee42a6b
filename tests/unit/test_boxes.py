"""bounding_box: the one bounding-box rule (crop, evaluation, previous-stage perturbation)."""

import doctest

import numpy as np
import pytest

import autoseg.boxes
from autoseg.boxes import bounding_box


def _reference(mask, margin=0):
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return tuple(slice(max(0, int(a) - margin), min(n, int(b) + margin)) for a, b, n in zip(lo, hi, mask.shape))


def test_docstring_examples():
    assert doctest.testmod(autoseg.boxes).failed == 0


@pytest.mark.parametrize("shape", [(7,), (6, 9), (5, 8, 7), (3, 4, 5, 6)])
def test_matches_argwhere_for_any_layout_margin_and_dtype(shape):
    rng = np.random.default_rng(len(shape))
    for trial in range(20):
        mask = rng.random(shape) < rng.choice([0.0, 0.01, 0.1, 0.9])
        views = [mask, mask.T, mask[::-1], mask.astype(np.int8) * 3, np.asfortranarray(mask)]
        for view in views:
            for margin in (0, 1, 3):
                assert bounding_box(view, margin) == _reference(view, margin), (trial, margin)


def test_box_crops_to_the_nonzero_voxels():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:5, 3, 7:13] = True
    box = bounding_box(mask)
    assert box == (slice(2, 5), slice(3, 4), slice(7, 13))
    assert mask[box].sum() == mask.sum()
    assert bounding_box(mask, 2) == (slice(0, 7), slice(1, 6), slice(5, 14))  # clipped to the array
    assert bounding_box(np.zeros((4, 4, 4), bool)) is None
    assert bounding_box(np.ones((2, 3), bool)) == (slice(0, 2), slice(0, 3))
