"""The augmentation pipeline: shapes, dtypes, labels, reproducibility, the global-RNG contract."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest
from _data_cases import ArraySource, make_source

from autoseg.data.augmentation import (TrainingAugmentation, ValidationTransforms, deep_supervision_scales,
                                       downsample_seg_nearest, finalize_batch, legacy_rng_seeded,
                                       needs_2d_style_augmentation, training_params)
from autoseg.data.sampling import SamplingConfig, one_hot_channels, sample_batch

STRIDES_3D = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def _batch(params, batch_size=4, num_extra_classes=0, seed=0, source=None):
    src = source or make_source(seed=seed)
    cfg = SamplingConfig(params.patch_size, params.pre_patch_size, batch_size,
                         num_extra_classes=num_extra_classes)
    return sample_batch(src, src.case_ids(), cfg, np.random.default_rng(seed))


def test_deep_supervision_scales_and_downsampling():
    scales = deep_supervision_scales([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert scales == ((1, 1, 1), (1, 0.5, 0.5), (0.5, 0.25, 0.25))
    seg = np.arange(2 * 8 * 8, dtype=np.int8).reshape(1, 1, 2, 8, 8)
    small = downsample_seg_nearest(seg, (1, 0.5, 0.5))
    assert small.shape == (1, 1, 2, 4, 4)
    np.testing.assert_array_equal(small, seg[:, :, :, 1::2, 1::2])


def test_2d_style_decision():
    assert not needs_2d_style_augmentation((40, 56, 40))
    assert needs_2d_style_augmentation((20, 320, 256))  # nnU-Net: voxel counts
    assert not needs_2d_style_augmentation((20, 320, 256), spacing=(3.6, 0.62, 0.62))  # 72 vs 198 mm
    assert not needs_2d_style_augmentation((56, 40))
    p = training_params((12, 64, 48), STRIDES_3D)
    assert p.do_2d_style and p.pre_patch_size[0] == 12 and p.max_rotation == pytest.approx(math.pi)
    assert not training_params((16, 16, 16)).do_2d_style
    assert training_params((16, 16, 16)).max_rotation == pytest.approx(math.radians(30))


@pytest.mark.parametrize("patch,strides", [((16, 20, 16), STRIDES_3D), ((24, 20), [[1, 1], [2, 2], [2, 2]]),
                                           ((6, 24, 20), [[1, 1, 1], [1, 2, 2], [1, 2, 2]])])
def test_training_augmentation_shapes_and_labels(patch, strides):
    params = training_params(patch, strides)
    aug = TrainingAugmentation(params)
    out = aug(_batch(params), np.random.default_rng(1))
    assert out["data"].shape == (4, 1, *patch) and out["data"].dtype == np.float32
    assert out["data"].flags.c_contiguous and np.isfinite(out["data"]).all()
    assert len(out["target"]) == len(strides) - 1
    for t, s in zip(out["target"], deep_supervision_scales(strides)):
        assert t.dtype == np.int8 and t.shape == (4, 1, *[round(p * f) for p, f in zip(patch, s)])
        assert set(np.unique(t)) <= {0, 1, 2}
    assert len(out["keys"]) == 4


def test_augmentation_is_reproducible_and_leaves_global_rng_alone():
    params = training_params((16, 20, 16), STRIDES_3D)
    aug = TrainingAugmentation(params)
    np.random.seed(123)
    random.seed(456)
    np_before, py_before = np.random.get_state(), random.getstate()
    outs = [aug(_batch(params, 6), np.random.default_rng(s)) for s in (7, 7, 8)]
    np_after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(np_before[1:], np_after[1:])) and np_before[0] == np_after[0]
    assert random.getstate() == py_before
    assert np.array_equal(outs[0]["data"], outs[1]["data"])
    assert all(np.array_equal(a, b) for a, b in zip(outs[0]["target"], outs[1]["target"]))
    assert not np.array_equal(outs[0]["data"], outs[2]["data"])


def test_legacy_rng_restored_after_an_exception():
    before = np.random.get_state()[1].copy()
    with pytest.raises(RuntimeError):
        with legacy_rng_seeded(np.random.default_rng(0)):
            np.random.uniform()
            raise RuntimeError("boom")
    assert np.array_equal(np.random.get_state()[1], before)


def test_augmentation_actually_augments():
    """Over a few batches, some samples differ from the plain centre crop (spatial or intensity change)."""
    params = training_params((16, 20, 16), STRIDES_3D)
    batch = _batch(params, 8)
    plain = ValidationTransforms()({"data": batch["data"][:, :, 4:20, 6:26, 4:20],
                                    "seg": batch["seg"][:, :, 4:20, 6:26, 4:20]})
    changed = 0
    for s in range(4):
        out = TrainingAugmentation(params)(dict(batch), np.random.default_rng(s))
        changed += sum(not np.allclose(out["data"][i], plain["data"][i]) for i in range(8))
    assert changed > 8


def test_cascade_one_hot_follows_the_augmented_segmentation():
    """With the previous stage equal to the label map, its one-hot channels equal the augmented target's."""
    src = make_source(seed=3)
    cases = {k: src.load(k) for k in src.case_ids()}
    casc = ArraySource(cases, extra_segs={k: v[1] for k, v in cases.items()})
    # the random damage to the previous stage (tested on its own) is off here
    params = replace(training_params((16, 20, 16), STRIDES_3D, num_extra_classes=3), p_previous_morphology=0.0,
                     p_previous_remove_component=0.0)
    batch = _batch(params, 6, 3, source=casc)
    out = TrainingAugmentation(params)(batch, np.random.default_rng(0))
    assert out["data"].shape == (6, 3, 16, 20, 16)
    np.testing.assert_array_equal(out["data"][:, 1:], one_hot_channels(out["target"][0][:, 0], 3))
    # with it on, some samples' previous-stage channels differ from the target, and stay one-hot
    damaged = replace(params, p_previous_morphology=1.0, p_previous_remove_component=1.0)
    out = TrainingAugmentation(damaged)(batch, np.random.default_rng(0))
    assert not np.array_equal(out["data"][:, 1:], one_hot_channels(out["target"][0][:, 0], 3))
    assert set(np.unique(out["data"][:, 1:])) <= {0.0, 1.0} and out["data"][:, 1:].sum(1).max() <= 1


def test_finalize_masks_removes_minus_one_and_requires_extra_seg():
    data = np.ones((1, 2, 4, 4), np.float32)
    seg = np.zeros((1, 1, 4, 4), np.int8)
    seg[0, 0, 0] = -1
    out = finalize_batch(data, seg, mask_channels=(1,))
    assert (out["data"][0, 1, 0] == 0).all() and (out["data"][0, 0] == 1).all()
    assert out["target"][0].min() == 0
    with pytest.raises(ValueError, match="previous-stage"):
        finalize_batch(data, seg, num_extra_classes=3)
