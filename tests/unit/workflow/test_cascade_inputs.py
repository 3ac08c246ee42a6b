"""A cascade's previous-stage inputs: one rule for validation, on-demand training inputs and prediction (regions
included), and only the main process of a torchrun run writes the missing ones."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import autoseg.inference.predictor as predictor_module
import autoseg.inference.run as run_module
from autoseg.data.sampling import one_hot_channels
from autoseg.errors import AutosegError
from autoseg.inference.cascade import CascadePredictor
from autoseg.io.image import Geometry
from autoseg.preprocessing.case import CaseProperties
from autoseg.schema.base import load_json
from autoseg.schema.dataset import Region
from autoseg.schema.plans import Plans
from autoseg.training.distributed import barrier
from autoseg.workflow.cascade import previous_stage_segmentations, save_next_stage
from autoseg.workspace import FoldPaths

BASE = load_json(Plans, Path(__file__).resolve().parents[3] / "plans" / "examples" / "large-lowres.plans.json")
# labels background, liver, spleen, kidney as three nested regions, written outermost first
REGION_PLANS = replace(BASE, regions=(Region("all", (1, 2, 3)), Region("inner", (2, 3)), Region("core", (3,))),
                       regions_class_order=(1, 2, 3))
GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
SHAPE = (4, 5, 6)
CASES = {"0": ["a", "b"], "1": ["c"]}  # fold -> validation cases


def _props(case_id: str) -> CaseProperties:
    sp = tuple(BASE.configurations["3d_cascade_fullres"].spacing)  # both stages on one grid, for simplicity
    return CaseProperties(case_id=case_id, original_geometry=GEOMETRY, original_shape=SHAPE,
                          transpose_forward=(0, 1, 2), bbox=tuple((0, s) for s in SHAPE), shape_after_crop=SHAPE,
                          spacing=sp, target_spacing=sp, shape_after_resampling=SHAPE, voxels_per_class=(),
                          config="3d_lowres", plans_sha256="x")


def _logits(plans: Plans, case_id: str) -> torch.Tensor:
    rng = np.random.default_rng(sum(map(ord, case_id)))
    return torch.as_tensor(rng.normal(0.0, 3.0, size=(plans.num_outputs, *SHAPE)).astype(np.float32))


class _Ctx:
    """The part of a DatasetContext the on-demand path reads; the low-res folds are "trained" (empty files)."""

    def __init__(self, root: Path, plans: Plans):
        self.root, self.plans, self.name, self.folds = root, plans, "Fake", list(CASES)
        self.raw_dir = root
        self.spec = SimpleNamespace(training=[SimpleNamespace(case_id=c, images=(f"{c}.nii.gz",))
                                              for ids in CASES.values() for c in ids])
        for k in CASES:
            self.fold("3d_lowres", k).root.mkdir(parents=True)
            self.fold("3d_lowres", k).final_checkpoint.touch()

    def fold(self, configuration, k):
        return FoldPaths(self.root / configuration / f"fold_{k}")

    def fold_cases(self, k):
        return [c for f, ids in CASES.items() if f != k for c in ids], list(CASES[k])


@pytest.fixture
def fake_low_res(monkeypatch):
    """The low-res networks: each case's logits are a fixed function of its id; counts predictor loads."""
    loads = []

    def from_checkpoints(plans, configuration, checkpoints, **kwargs):
        loads.append(checkpoints)
        return SimpleNamespace(plans=plans)

    def iter_logits(predictor, cases, desc="", progress=True):
        for case in cases:
            yield case, GEOMETRY, _props(case.case_id), _logits(predictor.plans, case.case_id)

    monkeypatch.setattr(predictor_module.Predictor, "from_checkpoints", staticmethod(from_checkpoints))
    monkeypatch.setattr(run_module, "iter_logits", iter_logits)
    return loads


class _Stage:
    """Predictor-like: remembers the data it was given, returns fixed logits."""

    def __init__(self, plans, configuration, logits):
        self.configuration, self.plan, self.plans, self.out, self.seen = (
            configuration, plans.configurations[configuration], plans, logits, None)

    def prepare(self, image, geometry, case_id="case"):
        return image.copy(), _props(case_id)

    def logits(self, data):
        self.seen = data
        return self.out


def _predictor_input(plans: Plans, case_id: str) -> np.ndarray:
    """The previous-stage one-hot channels the cascade predictor gives the second network."""
    previous = _Stage(plans, "3d_lowres", _logits(plans, case_id))
    current = _Stage(plans, "3d_cascade_fullres", torch.zeros(plans.num_outputs, *SHAPE))
    image = np.zeros((len(plans.channel_names), *SHAPE), np.float32)
    CascadePredictor(previous, current).predict(image, GEOMETRY, case_id)
    return current.seen[len(plans.channel_names):]


@pytest.mark.parametrize("plans", [BASE, REGION_PLANS], ids=["labels", "regions"])
def test_on_demand_and_validation_inputs_equal_the_predictors(tmp_path, fake_low_res, plans):
    ctx = _Ctx(tmp_path, plans)
    segs = previous_stage_segmentations(ctx, "3d_cascade_fullres", progress=False)
    assert len(fake_low_res) == 2 and set(segs.files) == {"a", "b", "c"}
    for case_id in segs.files:
        expected = _predictor_input(plans, case_id)
        on_demand = one_hot_channels(np.asarray(segs(case_id)), len(plans.labels))[0]
        assert np.array_equal(on_demand, expected), case_id
        path = tmp_path / f"validation_{case_id}.npy"  # what a low-res fold's validation writes
        save_next_stage(path, _logits(plans, case_id), _props(case_id), plans, "3d_cascade_fullres")
        assert np.array_equal(np.load(path), np.load(segs.files[case_id]))
    if plans.regions:  # the nested regions: every label appears (argmax of sigmoids would shift them)
        assert set(np.unique(np.load(segs.files["a"]))) == {0, 1, 2, 3}


def test_only_the_main_process_writes_missing_inputs(tmp_path, fake_low_res):
    ctx = _Ctx(tmp_path, BASE)
    events = []

    def other_rank_barrier():  # another rank: rank 0 writes while this one waits
        events.append("barrier")
        assert not list(tmp_path.rglob("*.npy")), "a non-main rank wrote before the barrier"
        previous_stage_segmentations(ctx, "3d_cascade_fullres", progress=False,
                                     barrier=lambda: events.append("main barrier"))

    segs = previous_stage_segmentations(ctx, "3d_cascade_fullres", progress=False, is_main=False,
                                        barrier=other_rank_barrier)
    assert events == ["barrier", "main barrier"] and len(fake_low_res) == 2  # loaded by the main process only
    assert all(p.is_file() for p in segs.files.values())
    # every rank reaches the barrier even when nothing is missing (another rank may have looked earlier)
    previous_stage_segmentations(ctx, "3d_cascade_fullres", progress=False, is_main=False,
                                 barrier=lambda: events.append("again"))
    assert events[-1] == "again" and len(fake_low_res) == 2


def test_a_rank_left_without_inputs_says_so_and_rank_0_still_reaches_the_barrier(tmp_path, fake_low_res,
                                                                                 monkeypatch):
    ctx = _Ctx(tmp_path, BASE)
    with pytest.raises(AutosegError, match="missing after the main process"):
        previous_stage_segmentations(ctx, "3d_cascade_fullres", progress=False, is_main=False,
                                     barrier=lambda: None)
    assert not list(tmp_path.rglob("*.npy"))

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(predictor_module.Predictor, "from_checkpoints", staticmethod(broken))
    reached = []
    with pytest.raises(RuntimeError, match="out of memory"):
        previous_stage_segmentations(ctx, "3d_cascade_fullres", progress=False, barrier=lambda: reached.append(1))
    assert reached == [1]


def test_the_barrier_is_a_no_op_outside_a_distributed_run():
    barrier()
