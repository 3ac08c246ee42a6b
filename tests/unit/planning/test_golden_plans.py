"""The planner reproduces the golden plans in plans/examples from their fingerprints.

The golden plans were checked against nnU-Net v2.8.1's planner (benchmarks/planner_vs_nnunet.py); a change here is
a change of behaviour, to be justified against nnU-Net, not a fixture to refresh.
"""

from dataclasses import replace
from pathlib import Path

import pytest

from autoseg.planning.planner import make_plans
from autoseg.planning.presets import load_preset
from autoseg.schema.base import load_json
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import Plans

EXAMPLES = Path(__file__).resolve().parents[3] / "plans" / "examples"
NAMES = sorted(p.name.split(".")[0] for p in EXAMPLES.glob("*.fingerprint.json"))


@pytest.mark.parametrize("name", NAMES)
def test_golden_plans(name):
    fp = load_json(Fingerprint, EXAMPLES / f"{name}.fingerprint.json")
    golden = load_json(Plans, EXAMPLES / f"{name}.plans.json")
    plans = make_plans(fp, load_preset(golden.preset), golden.memory_target_gb)
    assert replace(plans, autoseg_version=golden.autoseg_version) == golden


def _plans(name):
    fp = load_json(Fingerprint, EXAMPLES / f"{name}.fingerprint.json")
    return make_plans(fp, load_preset("default"), 8.0)


def test_hippocampus_reference():
    plans = _plans("hippocampus")
    full = plans.configurations["3d_fullres"]
    assert full.spacing == (1.0, 1.0, 1.0)
    assert full.patch_size == (40, 56, 40)
    assert full.architecture.poolings_per_axis == (3, 3, 3)
    assert full.batch_size == 7  # nnU-Net v2.8.1 plans the same
    assert plans.configurations["2d"].batch_size > 100
    assert plans.configurations["2d"].patch_size == (56, 40)
    assert "3d_lowres" not in plans.configurations


def test_large_dataset_gets_a_cascade():
    plans = _plans("large-lowres")
    low, full = plans.configurations["3d_lowres"], plans.configurations["3d_cascade_fullres"]
    assert low.next_stage == "3d_cascade_fullres" and full.previous_stage == "3d_lowres"
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing))
    # the low-res stage must shrink the median case at least 2x
    import numpy as np
    assert np.prod(full.median_shape) / np.prod(low.median_shape) >= 2


def test_anisotropic_plans_keep_the_coarse_axis_first():
    plans = _plans("anisotropic-ct")
    full = plans.configurations["3d_fullres"]
    assert full.spacing[0] > 3 * full.spacing[1]
    assert full.architecture.kernel_sizes[0][0] == 1  # no convolution across the coarse axis at full resolution
    assert full.normalization[0].scheme == "ct" and full.normalization[0].clip_low < full.normalization[0].clip_high


@pytest.mark.parametrize("preset, gb", [("resenc-m", 8), ("resenc-l", 24), ("resenc-xl", 40)])
def test_resenc_presets_grow_with_memory(preset, gb):
    fp = load_json(Fingerprint, EXAMPLES / "brats-like.fingerprint.json")
    p = load_preset(preset)
    plans = make_plans(fp, p, gb)
    assert plans.configurations["3d_fullres"].architecture.network == "resenc_unet"
    assert plans.configurations["3d_fullres"].estimated_memory_gb <= gb * 1.05
