"""Patch sampling: pre-augmentation box, padding, foreground oversampling, 2D slices, cascade hook."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _data_cases import ArraySource, make_case

from autoseg.data.sampling import (_choose_voxel, SamplingConfig, SampleError, crop_with_padding, forced_foreground,
                                   one_hot_channels, pre_augmentation_patch_size, sample_batch, sample_patch)
from autoseg.preprocessing.case import class_locations


def test_pre_augmentation_patch_known_values():
    assert pre_augmentation_patch_size((40, 56, 40), math.radians(30)) == (74, 82, 74)
    assert pre_augmentation_patch_size((56, 40), math.pi) == (82, 82)
    # 2D-style: axis 0 kept, in-plane rotation only
    assert pre_augmentation_patch_size((20, 320, 256), math.pi, keep_first_axis=True) == (20, 484, 484)
    # no rotation: only the scaling margin
    assert pre_augmentation_patch_size((32, 32), 0.0, (1.0, 1.0)) == (32, 32)


@pytest.mark.parametrize("patch", [(40, 56, 40), (16, 64, 48), (56, 40), (128, 24)])
def test_pre_augmentation_patch_contains_rotated_patch(patch):
    """Any single-plane rotation within range keeps the rotated final patch inside the box (scale 1)."""
    angle = math.radians(30 if len(patch) == 3 else 180)
    box = np.array(pre_augmentation_patch_size(patch, angle, (1.0, 1.0)))
    assert np.all((box - np.array(patch)) % 2 == 0)
    half = np.array(patch) / 2
    corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(len(patch), -1)
    planes = [(0, 1)] if len(patch) == 2 else [(0, 1), (0, 2), (1, 2)]
    for i, j in planes:
        for t in np.linspace(-angle, angle, 181):
            r = np.eye(len(patch))
            r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
            extent = 2 * np.abs(r @ corners).max(axis=1)
            assert np.all(extent <= box + 1e-6), (t, extent, box)


def test_forced_foreground_follows_nnunet_rule():
    assert forced_foreground(1, 0.33).tolist() == [False]
    assert forced_foreground(2, 0.33).tolist() == [False, True]
    assert forced_foreground(3, 0.33).tolist() == [False, False, True]
    assert forced_foreground(7, 0.33).sum() == 2 and forced_foreground(7, 0.33)[-2:].all()
    for b in range(2, 400):
        assert forced_foreground(b, 0.33).tolist() == [not i < round(b * (1 - 0.33)) for i in range(b)]


def test_crop_with_padding():
    a = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    out = crop_with_padding(a, (-1, 3), (3, 4), -7)
    assert out.shape == (2, 3, 4)
    assert (out[:, 0] == -7).all() and (out[:, :, 2:] == -7).all()
    np.testing.assert_array_equal(out[:, 1:, :2], a[:, :2, 3:5])
    assert (crop_with_padding(a, (10, 10), (2, 2), 5) == 5).all()


def test_case_smaller_than_patch_is_padded():
    rng = np.random.default_rng(1)
    data, seg, locs = make_case(rng, shape=(6, 9, 7), blobs=((1, 2),), outside_rows=1)
    cfg = SamplingConfig(patch_size=(8, 12, 10), sample_patch_size=(12, 16, 14), batch_size=4)
    for force in (False, True):
        for _ in range(20):
            d, s = sample_patch(data, seg, locs, cfg, force, rng)
            assert d.shape == (1, 12, 16, 14) and s.shape == (1, 12, 16, 14)
            assert d.dtype == np.float32 and s.dtype == np.int8
            # the whole case lies inside the final patch (the centred 8x12x10 of the box)
            inner_d, inner_s = d[:, 2:10, 2:14, 2:12], s[:, 2:10, 2:14, 2:12]
            assert np.isclose(inner_d.sum(), data.sum(), atol=1e-3)
            assert (inner_s == 1).sum() == (seg == 1).sum()
            assert (s == -1).sum() == s.size - seg.size + (seg == -1).sum()
            assert (d == 0).sum() >= d.size - data.size


def test_forced_samples_are_centred_on_foreground():
    rng = np.random.default_rng(2)
    data, seg, locs = make_case(rng, shape=(30, 40, 36), blobs=((1, 1), (2, 1)))
    cfg = SamplingConfig(patch_size=(8, 8, 8), sample_patch_size=(12, 12, 12))
    seen = set()
    for _ in range(60):
        _, s = sample_patch(data, seg, locs, cfg, True, rng)
        fg = np.unique(s[0, 2:10, 2:10, 2:10])
        labels = set(fg[fg > 0].tolist())
        assert len(labels) >= 1
        seen |= labels
    assert seen == {1, 2}  # both classes get picked


def test_region_oversampling_weighs_regions_not_labels():
    # labels 1-3 make the whole tumour, label 4 alone the enhancing region
    locs = {k: np.full((100 if k < 4 else 5, 3), k, np.int64) for k in (1, 2, 3, 4)}
    rng = np.random.default_rng(0)
    per_label = [int(_choose_voxel(locs, rng)[0]) for _ in range(4000)]
    regions = ((1, 2, 3, 4), (4,))
    per_region = [int(_choose_voxel(locs, rng, regions)[0]) for _ in range(4000)]
    assert per_label.count(4) / 4000 == pytest.approx(0.25, abs=0.03)
    # half the draws go to the enhancing region; the whole tumour's draws follow its voxels (5 of 305 are 4)
    assert per_region.count(4) / 4000 == pytest.approx(0.5 + 0.5 * 5 / 305, abs=0.03)
    assert {per_region.count(k) > 0 for k in (1, 2, 3)} == {True}
    # a region absent from the case is not drawn; none present: no centre
    assert {int(_choose_voxel({1: locs[1]}, rng, regions)[0]) for _ in range(20)} == {1}
    assert _choose_voxel({5: locs[1]}, rng, ((4,),)) is None


def test_case_without_foreground_falls_back_to_random():
    rng = np.random.default_rng(3)
    data, seg, _ = make_case(rng, blobs=())
    d, s = sample_patch(data, seg, {1: np.zeros((0, 3), np.int32)}, SamplingConfig((8, 8, 8)), True, rng)
    assert d.shape == (1, 8, 8, 8)


def test_2d_patches_are_slices_and_forced_slice_has_foreground():
    rng = np.random.default_rng(4)
    data, seg, locs = make_case(rng, shape=(20, 24, 22), channels=2, blobs=((1, 2),))
    data[0] = np.arange(1, 21, dtype=np.float32)[:, None, None]  # channel 0 holds slice index + 1
    src = ArraySource({"a": (data, seg, locs)})
    cfg = SamplingConfig(patch_size=(16, 12), sample_patch_size=(20, 16), batch_size=6)
    for _ in range(10):
        b = sample_batch(src, ["a"], cfg, rng)
        assert b["data"].shape == (6, 2, 20, 16) and b["seg"].shape == (6, 1, 20, 16)
        forced = forced_foreground(6, 0.33)
        for i in np.flatnonzero(forced):
            assert (b["seg"][i, 0, 2:18, 2:14] == 1).any()
        # every 2D patch is one slice of the volume; a forced patch is the slice of a foreground voxel
        for i in range(6):
            z = np.unique(b["data"][i, 0][b["data"][i, 0] != 0])
            assert len(z) == 1
            if forced[i]:
                assert (seg[0, int(z[0]) - 1] == 1).any()


def test_cascade_extra_seg_travels_as_second_channel_and_one_hot():
    rng = np.random.default_rng(5)
    data, seg, locs = make_case(rng)
    prev = np.where(seg > 0, 3 - seg, 0).astype(np.int8)  # a synthetic previous stage: labels swapped
    src = ArraySource({"a": (data, seg, locs)}, extra_segs={"a": prev})
    cfg = SamplingConfig((8, 8, 8), batch_size=3, num_extra_classes=3)
    b = sample_batch(src, ["a"], cfg, rng)
    assert b["seg"].shape == (3, 2, 8, 8, 8)
    s, p = b["seg"][:, 0], b["seg"][:, 1]
    assert np.array_equal(np.where(s > 0, 3 - s, 0), p)
    oh = one_hot_channels(p, 3)
    assert oh.shape == (3, 2, 8, 8, 8) and oh.dtype == np.float32
    assert np.array_equal(oh[:, 0], (p == 1).astype(np.float32))
    assert np.array_equal(oh[:, 1], (p == 2).astype(np.float32))


def test_cascade_extra_seg_of_another_grid_is_refused():
    rng = np.random.default_rng(6)
    data, seg, locs = make_case(rng)
    src = ArraySource({"a": (data, seg, locs)}, extra_segs={"a": seg[:, :-1]})
    with pytest.raises(SampleError, match="case 'a'.*previous-stage segmentation has shape"):
        sample_batch(src, ["a"], SamplingConfig((8, 8, 8), batch_size=2, num_extra_classes=3), rng)


def test_sampling_errors_name_the_case():
    class Broken(ArraySource):
        def load(self, case_id):
            raise OSError("disk on fire")

    with pytest.raises(SampleError, match="case 'x'.*OSError.*disk on fire"):
        sample_batch(Broken({"x": None}), ["x"], SamplingConfig((4, 4, 4)), np.random.default_rng(0))


def test_class_locations():
    seg = np.zeros((1, 4, 5, 6), np.int8)
    seg[0, 1, 2, 3] = 2
    seg[0, 0, 0, :4] = 1
    locs = class_locations(seg[0], 3, np.random.default_rng(0))
    assert sorted(locs) == [1, 2] and locs[2].tolist() == [[1, 2, 3]] and locs[1].dtype == np.int32
    sub = class_locations(seg[0], 3, np.random.default_rng(0), max_per_class=2)
    assert len(sub[1]) == 2
