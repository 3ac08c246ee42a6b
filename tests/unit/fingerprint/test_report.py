import dataclasses
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from autoseg.fingerprint.case import image_sha256, image_signature
from autoseg.fingerprint.dataset import check_and_fingerprint
from autoseg.fingerprint.report import dataset_report, find_duplicates, format_report
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.io.image import read_image, read_label, write_image
from autoseg.schema.base import load_json, save_json
from autoseg.schema.report import DatasetReport
from autoseg.synthetic import PRESETS, case_name, make_dataset

SHAPE = (1, 12, 16, 16)


def _smooth(seed, shape=SHAPE):
    """A smooth random image: distinct seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), (0, 2, 2, 2)).astype(np.float32) * 100 + 500


def _noisy(image, seed=99, sd=0.05):
    return image + np.random.default_rng(seed).normal(0, sd * image.std(), image.shape).astype(np.float32)


def _inputs(images):
    return ([f"c{i}" for i in range(len(images))], [image_sha256(im) for im in images],
            [image_signature(im) for im in images], [im.shape[1:] for im in images])


BASE = [_smooth(s) for s in range(3)]


@pytest.mark.parametrize("last, expected", [
    (BASE[0].copy(), [(("c0", "c3"), "identical")]),  # an exact copy under another id
    (_noisy(BASE[0]), [(("c0", "c3"), "near-identical")]),  # a copy with a little Gaussian noise
    (_smooth(3), []),  # another image
    # the same image at twice the slices: its signature matches (blocks scale with the image), its shape does not
    (ndi.zoom(BASE[0], (1, 2, 1, 1), order=1), []),
], ids=["exact", "noisy", "different", "other-shape"])
def test_find_duplicates_on_images(last, expected):
    groups = find_duplicates(*_inputs(BASE + [last]))
    assert [(g.case_ids, g.kind) for g in groups] == expected
    assert all(g.similarity > 0.995 for g in groups)


@pytest.mark.parametrize("shape_b, near", [
    ((12, 16, 16), True), ((13, 15, 16), True),  # within one voxel per axis
    ((12, 18, 16), False), ((12, 16), False),  # two voxels off; another dimensionality
])
def test_near_identical_needs_nearly_equal_shapes(shape_b, near):
    ids, hashes, sigs, shapes = _inputs(BASE + [_noisy(BASE[0])])
    shapes[3] = shape_b
    groups = find_duplicates(ids, hashes, sigs, shapes)
    assert [g.case_ids for g in groups] == ([("c0", "c3")] if near else [])


def test_find_duplicates_groups_chains_and_scales_in_chunks():
    rng = np.random.default_rng(0)
    n = 3000
    sigs = rng.normal(size=(n, 64))
    sigs[1500] = sigs[7] + rng.normal(0, 0.01, 64)  # 7 ~ 1500 ~ 2999: one group of three
    sigs[2999] = sigs[1500] + rng.normal(0, 0.01, 64)
    ids = [f"c{i}" for i in range(n)]
    hashes = [f"h{i}" for i in range(n)]
    hashes[42] = hashes[41]  # 41 = 42: identical
    shapes = [(10, 10, 10)] * n
    groups = find_duplicates(ids, hashes, [tuple(s) for s in sigs], shapes, chunk=256)
    assert [(g.case_ids, g.kind) for g in groups] == [(("c7", "c1500", "c2999"), "near-identical"),
                                                      (("c41", "c42"), "identical")]
    assert groups == find_duplicates(ids, hashes, [tuple(s) for s in sigs], shapes, chunk=n)


def test_find_duplicates_rejects_inputs_of_different_lengths():
    with pytest.raises(ValueError, match="2 ids, 1 hashes"):
        find_duplicates(["a", "b"], ["h"], [(0.0,)] * 2, [(1, 1, 1)] * 2)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 4-case synthetic dataset plus an exact copy of case 0, a noisy copy of case 1 and a label no case has."""
    syn = replace(PRESETS["tiny"], num_training=4, num_test=0)
    raw = make_dataset(tmp_path_factory.mktemp("raw") / "Task01_Tiny", syn)
    meta = json.loads((raw / "dataset.json").read_text())
    src = [case_name(syn, i) for i in range(2)]
    for name in ("tiny_copy", "tiny_noisy"):
        shutil.copy(raw / "labelsTr" / f"{src[name == 'tiny_noisy']}.nii.gz", raw / "labelsTr" / f"{name}.nii.gz")
        meta["training"].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    shutil.copy(raw / "imagesTr" / f"{src[0]}.nii.gz", raw / "imagesTr" / "tiny_copy.nii.gz")
    image, geometry = read_image([raw / "imagesTr" / f"{src[1]}.nii.gz"])
    write_image(_noisy(image)[0], geometry, raw / "imagesTr" / "tiny_noisy.nii.gz")
    meta["labels"]["3"] = "absent"
    meta["numTraining"] = len(meta["training"])
    (raw / "dataset.json").write_text(json.dumps(meta))
    spec = read_dataset_spec(raw)
    return raw, spec, check_and_fingerprint(raw, spec, 1, progress=False, source_sha256="x")


def test_report_finds_planted_duplicates_absent_class_and_shares(planted):
    raw, spec, fp = planted
    report = dataset_report(fp)
    assert report.num_cases == 6 and report.channel_names == ("MRI",)
    assert [(g.case_ids, g.kind) for g in report.duplicates] == [(("tiny_000", "tiny_copy"), "identical"),
                                                                 (("tiny_001", "tiny_noisy"), "near-identical")]
    assert report.duplicates[1].similarity > 0.995
    counts = np.array([np.bincount(read_label(raw / c.label)[0].ravel(), minlength=4) for c in spec.training])
    total = counts.sum(axis=0)
    assert [c.name for c in report.classes] == list(spec.labels)
    assert [c.voxel_share for c in report.classes] == pytest.approx(total / total.sum())
    assert [c.foreground_share for c in report.classes[1:]] == pytest.approx(total[1:] / total[1:].sum())
    assert [c.case_fraction for c in report.classes] == [1.0, 1.0, 1.0, 0.0]
    assert report.cases_without_foreground == () and report.notes == ()
    assert any("class 3 'absent' occurs in no training case" in w for w in report.warnings)
    assert sum("identical images" in w for w in report.warnings) == 2
    assert report.shape_min <= report.shape_max and report.spacing_min == report.spacing_max == (1.0, 1.0, 1.0)
    text = format_report(report)
    assert "tiny_000, tiny_copy" in text and "3 absent" in text


def test_report_of_an_old_fingerprint_says_what_it_cannot_tell(planted):
    _, _, fp = planted
    old_cases = tuple(dataclasses.replace(c, class_voxels=None, image_sha256=None, image_signature=None)
                      for c in fp.cases)
    report = dataset_report(dataclasses.replace(fp, cases=old_cases))
    assert report.duplicates is None
    assert all(c.voxel_share is None and c.case_fraction is None for c in report.classes)
    assert "no duplicate check: fingerprint made before autoseg measured image hashes" in report.notes
    assert report.warnings == ()
    assert "no duplicate check" in format_report(report)


def test_report_warns_about_cases_without_foreground_and_small_classes(planted):
    _, _, fp = planted
    cases = list(fp.cases)
    cases[2] = dataclasses.replace(cases[2], foreground_voxels=0, class_voxels=(1000, 0, 0, 0))
    cases[3] = dataclasses.replace(cases[3], class_voxels=(10 ** 6, 10 ** 5, 10, 0))
    report = dataset_report(dataclasses.replace(fp, cases=tuple(cases)))
    assert report.cases_without_foreground == (cases[2].case_id,)
    assert f"1 of 6 cases have no foreground: {cases[2].case_id}" in report.warnings
    assert any("class 2" in w and "of the foreground voxels" in w for w in report.warnings)


def test_dataset_report_round_trips_through_json(planted, tmp_path):
    report = dataset_report(planted[2])
    save_json(report, tmp_path / "dataset_report.json")
    assert load_json(DatasetReport, tmp_path / "dataset_report.json") == report
