"""Connected-component postprocessing and nnU-Net's rule for choosing it."""

import subprocess
import sys

import numpy as np
import pytest

from autoseg.io.image import Geometry, write_image
from autoseg.postprocessing.components import (apply_postprocessing, choose_postprocessing, choose_region_postprocessing,
                                               describe_postprocessing, keep_largest_component,
                                               largest_component_mask)
from autoseg.schema.base import load_json, save_json
from autoseg.schema.selection import Postprocessing

GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_corner_neighbours_are_connected_and_ties_are_all_kept():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # touch by a corner only: one component (26-connectivity)
    m[3, 3, 3] = True
    np.testing.assert_array_equal(largest_component_mask(m), m & ~np.pad(np.ones((1, 1, 1), bool), ((3, 0),) * 3))
    tie = np.zeros((5, 5), bool)
    tie[0, 0] = tie[4, 4] = True
    np.testing.assert_array_equal(largest_component_mask(tie), tie)
    assert not largest_component_mask(np.zeros((3, 3), bool)).any()


def test_keep_largest_component_of_labels():
    seg = np.zeros((3, 10), np.uint8)
    seg[1, 0:4] = 1
    seg[1, 4:6] = 2      # touches label 1: with it, one foreground component
    seg[1, 8] = 1        # a lone label-1 voxel
    seg[1, 9] = 2
    assert keep_largest_component(seg, None)[1].tolist() == [1, 1, 1, 1, 2, 2, 0, 0, 0, 0]
    assert keep_largest_component(seg, 1)[1].tolist() == [1, 1, 1, 1, 2, 2, 0, 0, 0, 2]
    assert keep_largest_component(seg, 2)[1].tolist() == [1, 1, 1, 1, 2, 2, 0, 0, 1, 0]
    assert keep_largest_component(seg, [1, 2])[1].tolist() == [1, 1, 1, 1, 2, 2, 0, 0, 0, 0]
    assert seg[1, 8] == 1  # the input is not modified


def _folders(tmp_path, refs, preds):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i, (r, p) in enumerate(zip(refs, preds)):
        write_image(r.astype(np.uint8), GEOMETRY, gt / f"c{i}.nii.gz")
        write_image(p.astype(np.uint8), GEOMETRY, pred / f"c{i}.nii.gz")
    return pred, gt


def _blocks():
    ref = np.zeros((6, 12, 12), np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    ref[1:5, 5:9, 1:5] = 2
    return ref


def test_chosen_when_a_spurious_component_exists(tmp_path):
    refs = [_blocks() for _ in range(4)]
    preds = [r.copy() for r in refs]
    for p in preds[:2]:
        p[0, 10:12, 10:12] = 1
    pred, gt = _folders(tmp_path, refs, preds)
    pp = choose_postprocessing(pred, gt, [1, 2], num_workers=2, progress=False)
    assert pp.keep_largest_foreground and pp.keep_largest_per_class == ()
    assert pp.dice_after == {"1": 1.0, "2": 1.0}
    assert pp.dice_before["1"] == pytest.approx((128 / (128 + 4) * 2 + 2) / 4)
    assert pp.mean_dice_after > pp.mean_dice_before
    np.testing.assert_array_equal(apply_postprocessing(preds[0], pp), refs[0])


def test_rejected_when_removing_components_hurts_a_class(tmp_path):
    ref = np.zeros((6, 12, 12), np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    ref[1:4, 8:11, 8:11] = 1  # a second, smaller, real component of label 1 (e.g. left and right organ)
    ref[1:5, 5:8, 1:5] = 2
    pred, gt = _folders(tmp_path, [ref] * 3, [ref] * 3)
    pp = choose_postprocessing(pred, gt, [1, 2], num_workers=1, progress=False)
    assert not pp.keep_largest_foreground and pp.keep_largest_per_class == ()
    assert pp.is_identity and pp.dice_after == pp.dice_before == {"1": 1.0, "2": 1.0}
    assert apply_postprocessing(ref, pp) is ref


def test_per_class_rule_where_the_foreground_rule_would_hurt(tmp_path):
    ref = np.zeros((6, 14, 14), np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    ref[1:4, 8:11, 8:11] = 2   # apart from (larger) label 1: the foreground rule would delete label 2
    pred = ref.copy()
    pred[0, 0, 13] = 2          # a spurious voxel of label 2
    pred_dir, gt = _folders(tmp_path, [ref] * 3, [pred] * 3)
    pp = choose_postprocessing(pred_dir, gt, [1, 2], num_workers=1, progress=False)
    assert not pp.keep_largest_foreground
    assert pp.keep_largest_per_class == (2,)
    assert pp.dice_after["2"] == 1.0 and pp.dice_after["1"] == pp.dice_before["1"] == 1.0
    np.testing.assert_array_equal(apply_postprocessing(pred, pp), ref)


def test_postprocessing_round_trips(tmp_path):
    pp = Postprocessing(True, (2,), {"1": 0.5, "2": None}, {"1": 0.75, "2": None})
    save_json(pp, tmp_path / "postprocessing.json")
    assert load_json(Postprocessing, tmp_path / "postprocessing.json") == pp
    assert pp.mean_dice_before == 0.5 and pp.mean_dice_after == 0.75


def test_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\nimport autoseg.postprocessing.components\n"
            "import autoseg.evaluation.selection\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _nested():
    """Whole tumour = labels {1, 2}, core = {2}: a label map as region prediction writes it (class order 1, 2)."""
    ref = np.zeros((8, 16, 16), np.uint8)
    ref[1:7, 1:7, 1:7] = 1
    ref[2:5, 2:5, 2:5] = 2
    return ref


REGIONS = [(1, 2), (2,)]


def test_region_rule_rejected_when_it_would_punch_a_hole_in_an_outer_region(tmp_path):
    ref = _nested()
    pred = ref.copy()
    pred[6, 6, 6] = 2  # a core island inside the whole tumour, apart from the core: removing it (to background) makes a WT hole
    pred_dir, gt = _folders(tmp_path, [ref] * 3, [pred] * 3)
    pp = choose_region_postprocessing(pred_dir, gt, REGIONS, num_workers=1, progress=False)
    assert not pp.keep_largest_foreground and pp.keep_largest_per_region == ()
    assert pp.dice_before["1"] == 1.0 and pp.dice_before["2"] < 1.0
    assert pp.dice_after == pp.dice_before and pp.is_identity
    # the rule on its own would help the core: it is refused for what it does to the whole tumour
    alone = apply_postprocessing(pred, Postprocessing(False, (), {}, {}, keep_largest_per_region=((2,),)))
    assert alone[6, 6, 6] == 0 and (alone == 2).sum() == (ref == 2).sum()


def test_region_rule_kept_where_the_foreground_rule_would_delete_a_real_component(tmp_path):
    ref = _nested()
    ref[1:3, 11:14, 11:14] = 1  # a second, real, whole-tumour component
    pred = ref.copy()
    pred[7, 15, 0] = 2           # a spurious, isolated core voxel
    pred_dir, gt = _folders(tmp_path, [ref] * 3, [pred] * 3)
    pp = choose_region_postprocessing(pred_dir, gt, REGIONS, num_workers=1, progress=False)
    assert not pp.keep_largest_foreground  # would delete the real second component
    assert pp.keep_largest_per_region == ((2,),)
    assert pp.dice_after == {"1": 1.0, "2": 1.0} and pp.dice_before["2"] < 1.0
    np.testing.assert_array_equal(apply_postprocessing(pred, pp), ref)
    assert "region core" in describe_postprocessing(pp, region_names={(2,): "core"})
    save_json(pp, tmp_path / "pp.json")
    assert load_json(Postprocessing, tmp_path / "pp.json") == pp


def test_label_postprocessing_json_has_no_region_field(tmp_path):
    save_json(Postprocessing(True, (), {}, {}), tmp_path / "pp.json")
    assert "keep_largest_per_region" not in (tmp_path / "pp.json").read_text()
