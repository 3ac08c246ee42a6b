"""Tests of autoseg.synthetic: determinism, anatomy, intensities, layouts and geometry round trips."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from autoseg.io.image import read_image, read_label
from autoseg.synthetic import PRESETS, SyntheticSpec, case_name, label_names, make_case, make_dataset

# Big presets shrunk so every test stays in seconds; the anatomy code is the same at any size.
SMALL = {name: (replace(spec, shape=(40, 40, 40)) if name == "large" else spec) for name, spec in PRESETS.items()}
MRI_PRESETS = [n for n, s in PRESETS.items()
               if not any(c.upper() == "CT" for c in s.channels) and s.anatomy != "fundus"]
TINY = PRESETS["tiny"]


def _all_cases(spec):
    return [make_case(spec, i) for i in range(spec.num_training + spec.num_test)]


def test_presets_exist_with_intended_settings():
    assert {"tiny", "demo", "anisotropic", "multichannel", "ct", "large", "brats-like"} <= set(PRESETS)
    assert PRESETS["anisotropic"].spacing[0] / PRESETS["anisotropic"].spacing[1] > 3
    assert PRESETS["multichannel"].channels == ("T1", "T2")
    assert PRESETS["ct"].channels == ("CT",)
    large = PRESETS["large"]
    assert large.spacing == (1.0, 1.0, 1.0) and np.prod(large.shape) >= 256 ** 3
    assert 4 <= large.num_training + large.num_test <= 6
    brats = PRESETS["brats-like"]
    assert 2 <= len(brats.channels) <= 4 and brats.num_organs == 4 and brats.anatomy == "brain"


def test_same_spec_and_index_give_identical_arrays():
    a_img, a_lab, a_geo = make_case(TINY, 3)
    b_img, b_lab, b_geo = make_case(TINY, 3)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert a_geo == b_geo


def test_different_seed_or_index_gives_different_cases():
    img, lab, _ = make_case(TINY, 3)
    other_seed = make_case(replace(TINY, seed=1), 3)
    other_index = make_case(TINY, 4)
    for o_img, o_lab, _ in (other_seed, other_index):
        assert o_img.shape != img.shape or not np.array_equal(o_img, img)


def test_case_independent_of_dataset_size():
    a = make_case(TINY, 5)
    b = make_case(replace(TINY, num_training=30, num_test=7), 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_global_numpy_rng_untouched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    make_case(PRESETS["ct"], 0)
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_structure_present_in_every_case(name):
    spec = SMALL[name]
    for img, lab, geo in _all_cases(spec):
        assert lab.dtype == np.uint8 and img.dtype == np.float32
        assert img.shape == (len(spec.channels),) + lab.shape
        assert len(geo.spacing) == 3
        counts = np.bincount(lab.ravel(), minlength=spec.num_organs + 1)
        assert len(counts) == spec.num_organs + 1, "label value out of range"
        assert np.all(counts > 0), counts


def test_case_shapes_vary_around_median():
    spec = PRESETS["demo"]
    shapes = np.array([make_case(spec, i)[1].shape for i in range(spec.num_training)])
    assert np.all(shapes >= np.floor(0.85 * np.array(spec.shape)))
    assert np.all(shapes <= np.ceil(1.15 * np.array(spec.shape)))
    assert len({tuple(s) for s in shapes}) > 1
    assert np.all(np.abs(np.median(shapes, 0) / spec.shape - 1) < 0.1)


def test_body_organs_have_clearly_different_sizes():
    counts = np.array([np.bincount(lab.ravel(), minlength=3)[1:] for _, lab, _ in _all_cases(PRESETS["demo"])])
    assert np.all(counts[:, 0] > 3 * counts[:, 1])


@pytest.mark.parametrize("name", MRI_PRESETS)
def test_mri_zero_outside_body_and_cropping_shrinks(name):
    spec = SMALL[name]
    ratios = []
    for img, lab, _ in _all_cases(spec)[:4]:
        nonzero = np.any(img != 0, axis=0)
        # One solid body: no zeros inside it, and every label inside it.
        assert np.array_equal(ndi.binary_fill_holes(nonzero), nonzero)
        assert ndi.label(nonzero)[1] == 1
        assert np.all(nonzero[lab > 0])
        assert np.all(img >= 0)
        box = ndi.find_objects(nonzero.astype(np.uint8))[0]
        ratios.append(np.prod([s.stop - s.start for s in box]) / nonzero.size)
        assert np.all(img[:, ~nonzero] == 0)
    assert np.median(ratios) < 0.75  # crop-to-nonzero shrinks by >= 25 % (nnU-Net's mask-normalisation rule)


def test_ct_intensities_hounsfield_like():
    spec = PRESETS["ct"]
    img, lab, _ = make_case(spec, 0)
    ct = img[0]
    assert ct.min() >= -1024 and ct.max() <= 3071
    assert np.array_equal(ct, np.rint(ct))
    corners = ct[[0, 0, -1, -1], [0, -1, 0, -1], [0, -1, -1, 0]]
    assert np.all(np.abs(corners + 1000) < 80)  # air
    assert ct.max() > 500  # bone
    tissue = ct[(lab == 0) & (ct > -300) & (ct < 300)]
    assert 20 < np.median(tissue) < 60
    for k in range(1, spec.num_organs + 1):
        assert 40 < np.median(ct[ndi.binary_erosion(lab == k)]) < 230


def test_mri_organ_contrast_distinct_but_overlapping():
    img, lab, _ = make_case(PRESETS["demo"], 0)
    body = img[0] > 0
    tissue = img[0][body & (lab == 0) & ndi.binary_erosion(body, iterations=3)]
    for k in (1, 2):
        organ = img[0][ndi.binary_erosion(lab == k)]
        assert abs(np.mean(organ) - np.mean(tissue)) > 1.0 * np.std(tissue)
        lo, hi = np.percentile(organ, [1, 99])
        assert np.any((tissue > lo) & (tissue < hi)), "no overlap: too easy"
    assert np.std(tissue) > 0.05 * np.mean(tissue)  # textured, not flat


def test_brain_classes_nested_with_margin():
    spec = PRESETS["brats-like"]
    cross = ndi.generate_binary_structure(3, 1)
    for _, lab, _ in _all_cases(spec)[:6]:
        for k in range(2, spec.num_organs + 1):
            grown = ndi.binary_dilation(lab >= k, cross)
            assert np.all(lab[grown] >= k - 1)


def test_multichannel_contrasts_differ():
    img, lab, _ = make_case(PRESETS["multichannel"], 0)
    body = img[0] > 0
    z = [(c - c[body].mean()) / c[body].std() for c in img]
    signs = [np.sign(np.mean(c[lab == 1]) - np.mean(c[body & (lab == 0)])) for c in z]
    assert np.array_equal(body, img[1] > 0)  # same anatomy
    assert signs[0] != signs[1]  # different contrast of organ 1


def test_anisotropic_spacing_spread():
    spec = PRESETS["anisotropic"]
    sp = np.array([make_case(spec, i)[2].spacing for i in range(spec.num_training)])
    assert np.all(np.abs(sp[:, 0] / 5.0 - 1) <= spec.spacing_jitter + 1e-6)
    assert np.all(np.abs(sp[:, 1:] / 0.8 - 1) <= spec.spacing_jitter + 1e-6)
    assert np.array_equal(sp[:, 1], sp[:, 2])
    med = np.median(sp, 0)
    assert med[0] / med[1] > 3
    assert np.percentile(sp[:, 0], 10) < med[0]  # the 10th-percentile rule picks a finer z than the median


def test_no_jitter_gives_exact_spacing():
    spec = replace(TINY, spacing=(2.5, 0.7, 0.7), spacing_jitter=0.0)
    assert make_case(spec, 0)[2].spacing == (2.5, 0.7, 0.7)


def test_msd_layout_round_trip(tmp_path):
    out = make_dataset(tmp_path / "Task01_Tiny", TINY)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", **{str(i + 1): n for i, n in enumerate(label_names(TINY))}}
    assert meta["numTraining"] == len(meta["training"]) == TINY.num_training
    assert meta["numTest"] == len(meta["test"]) == TINY.num_test
    for entry in meta["training"]:
        assert (out / entry["image"]).is_file() and (out / entry["label"]).is_file()
    for entry in meta["test"]:
        assert (out / entry).is_file()
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{case_name(TINY, i)}.nii.gz" for i in range(8)]
    img, lab, geo = make_case(TINY, 1)
    r_img, r_geo = read_image([out / "imagesTr" / f"{case_name(TINY, 1)}.nii.gz"])
    r_lab, _ = read_label(out / "labelsTr" / f"{case_name(TINY, 1)}.nii.gz")
    assert np.array_equal(r_img, img) and np.array_equal(r_lab, lab) and r_lab.dtype == np.uint8
    assert np.allclose(r_geo.spacing, geo.spacing)


def test_multichannel_msd_writes_4d_file(tmp_path):
    spec = replace(PRESETS["multichannel"], num_training=2, num_test=1, shape=(16, 20, 20))
    out = make_dataset(tmp_path / "mc", spec)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "4D" and meta["modality"] == {"0": "T1", "1": "T2"}
    img, _, _ = make_case(spec, 0)
    r_img, _ = read_image([out / meta["training"][0]["image"]])
    assert r_img.shape == img.shape and r_img.shape[0] == 2
    assert np.array_equal(r_img, img)


def test_nnunetv2_layout(tmp_path):
    spec = replace(PRESETS["multichannel"], num_training=3, num_test=1, shape=(16, 20, 20), layout="nnunetv2")
    out = make_dataset(tmp_path / "Dataset001_Mc", spec)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, **{n: i + 1 for i, n in enumerate(label_names(spec))}}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert "training" not in meta and "modality" not in meta
    cases = [case_name(spec, i) for i in range(3)]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(
        f"{c}_{ch:04d}.nii.gz" for c in cases for ch in range(2))
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        f"{case_name(spec, 3)}_{ch:04d}.nii.gz" for ch in range(2)]
    img, _, _ = make_case(spec, 0)
    r_img, _ = read_image([out / "imagesTr" / f"{cases[0]}_{ch:04d}.nii.gz" for ch in range(2)])
    assert np.array_equal(r_img, img)


def test_ct_written_as_integers_reads_back_equal(tmp_path):
    spec = replace(PRESETS["ct"], num_training=1, num_test=0, shape=(12, 20, 20))
    out = make_dataset(tmp_path / "ct", spec)
    img, _, _ = make_case(spec, 0)
    r_img, _ = read_image([out / "imagesTr" / f"{case_name(spec, 0)}.nii.gz"])
    assert np.array_equal(r_img, img)


@pytest.mark.parametrize("channels", [("MRI",), ("T1", "T2")])
def test_oblique_geometry_round_trips(tmp_path, channels):
    spec = replace(TINY, num_training=2, num_test=0, oblique=True, channels=channels, spacing_jitter=0.1)
    out = make_dataset(tmp_path / "obl", spec)
    for i in range(2):
        _, _, geo = make_case(spec, i)
        d = np.array(geo.direction).reshape(3, 3)
        assert np.allclose(d @ d.T, np.eye(3)) and not np.allclose(d, np.eye(3))
        assert np.linalg.norm(geo.origin) > 1
        _, r_geo = read_image([out / "imagesTr" / f"{case_name(spec, i)}.nii.gz"])
        _, l_geo = read_label(out / "labelsTr" / f"{case_name(spec, i)}.nii.gz")
        for g in (r_geo, l_geo):
            assert np.allclose(g.spacing, geo.spacing, rtol=1e-5)
            assert np.allclose(g.origin, geo.origin, atol=1e-3)
            assert np.allclose(g.direction, geo.direction, atol=1e-5)


def test_non_oblique_geometry_is_identity():
    geo = make_case(TINY, 0)[2]
    assert geo.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) and geo.origin == (0.0, 0.0, 0.0)


def test_make_dataset_refuses_non_empty_folder(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        make_dataset(target, TINY)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError):
        make_dataset(a_file, TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_dataset(empty, replace(TINY, num_training=1, num_test=0)) == empty


@pytest.mark.parametrize("bad", [dict(layout="nifti"), dict(num_organs=0), dict(num_organs=9),
                                 dict(anatomy="brain", num_organs=5), dict(shape=(4, 20, 20)),
                                 dict(spacing=(0.0, 1.0, 1.0)), dict(channels=()), dict(num_training=0),
                                 dict(spacing_jitter=0.7), dict(anatomy="leg")])
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        SyntheticSpec(**bad)


def test_import_has_no_torch():
    code = "import sys, autoseg.synthetic; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fundus_preset_is_2d_rgb_with_vessels_inside_the_field_of_view(tmp_path):
    from autoseg.io.dataset_json import read_dataset_spec
    from autoseg.synthetic import fundus_case

    spec = PRESETS["2d-rgb"]
    image, label, geometry, roi = fundus_case(spec, 0)
    assert image.shape[:2] == (3, 1) and label.shape == roi.shape == image.shape[1:]
    assert image.min() >= 0 and image.max() <= 255 and np.array_equal(image, np.round(image))
    assert (label == 1).any() and not label[roi == 0].any()
    assert np.array_equal(fundus_case(spec, 0)[0], image)  # deterministic
    ds = read_dataset_spec(make_dataset(tmp_path / "f", replace(spec, num_training=3, num_test=1)))
    assert ds.channel_names == ("R", "G", "B") and ds.file_ending == ".png" and ds.has_roi
