import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from autoseg import synthetic
from autoseg.io.image import Geometry, read_image, write_image
from autoseg.preprocessing.case import (CaseProperties, derive_case, preprocess_case, preprocess_for_inference,
                                        preprocessing_sha256, revert_case)
from autoseg.schema.base import from_jsonable, load_json, save_json, to_jsonable
from autoseg.schema.plans import ChannelNormalization


def _aniso_case():
    spec = dataclasses.replace(synthetic.PRESETS["anisotropic"], shape=(14, 56, 56), oblique=True)
    return synthetic.make_case(spec, 0)


def _brain_case():
    spec = dataclasses.replace(synthetic.PRESETS["brats-like"], shape=(24, 30, 26), channels=("FLAIR", "T1"),
                               num_organs=2)
    return synthetic.make_case(spec, 1)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _near_boundary(label):
    """Voxels within one voxel (26-neighbourhood) of a label boundary."""
    size = (3, 3, 3)
    return (ndi.maximum_filter(label, size) != label) | (ndi.minimum_filter(label, size) != label)


def _check_round_trip(image, label, geometry, plans, config, tmp_path):
    num = len(plans.labels)
    case = preprocess_case(image, label, geometry, plans, config, "c0", np.random.default_rng(0))
    p = case.properties
    assert case.data.dtype == np.float32 and case.seg.dtype == np.int8 and case.seg.shape[0] == 1
    assert case.data.shape[1:] == case.seg.shape[1:] == p.shape_after_resampling
    assert sum(p.voxels_per_class) == (case.seg >= 0).sum()
    back = revert_case(case.seg[0], p, is_label=True)
    assert back.shape == label.shape
    for c in range(1, num):
        assert _dice(back == c, label == c) > 0.9, c
    wrong = back != label
    assert not (wrong & ~_near_boundary(label)).any(), "label changed away from a boundary"
    # probabilities take the same way back (linear, padded with background)
    onehot = np.stack([(case.seg[0] == c) for c in range(num)]).astype(np.float32)
    probs = revert_case(onehot, p, is_label=False)
    assert probs.shape == (num,) + label.shape
    assert (probs.argmax(0) == label).mean() > 0.97
    # the reverted array is written in the raw geometry
    write_image(back.astype(np.uint8), p.original_geometry, tmp_path / "back.nii.gz")
    arr, geom = read_image([tmp_path / "back.nii.gz"])
    np.testing.assert_allclose(geom.spacing, geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(geom.origin, geometry.origin, atol=1e-4)
    np.testing.assert_allclose(geom.direction, geometry.direction, atol=1e-6)
    assert arr.shape[1:] == label.shape
    return case


def test_anisotropic_round_trip_uses_separate_z(plans_factory, tmp_path):
    image, label, geometry = _aniso_case()
    assert max(geometry.spacing) / min(geometry.spacing) > 3
    sp = geometry.spacing
    plans = plans_factory((sp[0] * 0.8, sp[1] * 0.9, sp[2] * 0.9), labels=("bg", "a", "b", "c"), channels=("CT",),
                          norm=(ChannelNormalization("ct", clip_low=-100, clip_high=300, mean=50, std=80),))
    case = _check_round_trip(image, label, geometry, plans, "3d_fullres", tmp_path)
    # nearest neighbour across the thick slices: every preprocessed slice is an in-plane resampling of one raw slice
    assert case.properties.shape_after_resampling[0] > label.shape[0]
    assert set(np.unique(case.seg)) <= {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_brain_round_trip_with_crop_and_transpose(plans_factory, tmp_path, transpose):
    image, label, geometry = _brain_case()
    geometry = dataclasses.replace(geometry, spacing=(1.0, 1.1, 0.9))
    sp_t = [geometry.spacing[a] for a in transpose]
    plans = plans_factory(tuple(s * 0.8 for s in sp_t), channels=("FLAIR", "T1"), transpose=transpose)
    case = _check_round_trip(image, label, geometry, plans, "3d_fullres", tmp_path)
    p = case.properties
    assert p.transpose_forward == transpose
    assert p.shape_after_crop != tuple(label.shape[a] for a in transpose)  # the zero border was cropped
    assert (case.seg == -1).any()
    # z-score inside the nonzero mask, 0 outside
    inside = case.seg[0] >= 0
    assert abs(float(case.data[0][inside].mean())) < 0.1
    far_outside = ndi.distance_transform_edt(~inside) > 5  # cubic ringing decays ~0.27x per voxel
    assert far_outside.any() and np.abs(case.data[:, far_outside]).max() < 1e-2


def test_2d_configuration_keeps_the_case_spacing_on_axis_0(plans_factory):
    image, label, geometry = _brain_case()
    plans = plans_factory((3.0, 0.5, 0.5), channels=("FLAIR", "T1"))
    case = preprocess_case(image, label, geometry, plans, "2d", "c", np.random.default_rng(0))
    p = case.properties
    assert p.target_spacing == (geometry.spacing[0], 0.5, 0.5)
    assert p.shape_after_resampling[0] == p.shape_after_crop[0]


def test_class_locations_are_seeded_and_bounded(plans_factory):
    image, label, geometry = _brain_case()
    plans = plans_factory(geometry.spacing, channels=("FLAIR", "T1"))
    a = preprocess_case(image, label, geometry, plans, "3d_fullres", "c", np.random.default_rng(5), max_locations=50)
    b = preprocess_case(image, label, geometry, plans, "3d_fullres", "c", np.random.default_rng(5), max_locations=50)
    assert sorted(a.locations) == [1, 2]
    for c, locs in a.locations.items():
        assert locs.dtype == np.int32 and locs.shape == (min(50, a.properties.voxels_per_class[c]), 3)
        assert np.all(a.seg[0][tuple(locs.T)] == c)
        assert np.array_equal(locs, b.locations[c])


def test_properties_json_round_trip_and_inference(plans_factory, tmp_path):
    image, label, geometry = _brain_case()
    plans = plans_factory(geometry.spacing, channels=("FLAIR", "T1"))
    case = preprocess_case(image, label, geometry, plans, "3d_fullres", "c", np.random.default_rng(0))
    save_json(case.properties, tmp_path / "p.json")
    assert load_json(CaseProperties, tmp_path / "p.json") == case.properties
    assert from_jsonable(CaseProperties, to_jsonable(case.properties)).original_geometry == geometry
    data, props = preprocess_for_inference(image, geometry, plans, "3d_fullres", "c")
    assert np.array_equal(data, case.data) and props.voxels_per_class == ()
    derived = derive_case(case, plans, "2d", np.random.default_rng(1))
    assert derived.data is case.data and derived.properties.config == "2d"
    assert derived.properties.plans_sha256 == preprocessing_sha256(plans, "2d")


def test_preprocessing_hash_ignores_training_only_fields(plans_factory):
    plans = plans_factory((1.0, 1.0, 1.0))
    cfg = plans.configurations["3d_fullres"]
    bigger_batch = dataclasses.replace(plans, configurations={**plans.configurations,
                                                              "3d_fullres": dataclasses.replace(cfg, batch_size=9)})
    assert preprocessing_sha256(plans, "3d_fullres") == preprocessing_sha256(bigger_batch, "3d_fullres")
    other_spacing = dataclasses.replace(plans, configurations={
        **plans.configurations, "3d_fullres": dataclasses.replace(cfg, spacing=(2.0, 1.0, 1.0))})
    assert preprocessing_sha256(plans, "3d_fullres") != preprocessing_sha256(other_spacing, "3d_fullres")
    assert preprocessing_sha256(plans, "3d_fullres") != preprocessing_sha256(
        dataclasses.replace(plans, fingerprint_sha256="0" * 64), "3d_fullres")
