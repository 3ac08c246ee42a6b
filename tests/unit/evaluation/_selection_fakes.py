"""A tiny fake workspace with cross-validation outputs (no training): hand-made references, validation label maps
and probability ``.npz`` files of three configurations.

Every case's reference holds a block of label 1 touching a block of label 2. Each configuration predicts with
probability 0.9 for the true class, plus a spurious 8-voxel blob of label 1 far from the blocks. ``2d`` is unsure
and wrong (background 0.6) on half of label 1, ``3d_fullres`` on half of label 2: averaged, they are right
everywhere. ``3d_lowres`` is trained on folds 0-2 only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from autoseg.data.splits import make_splits
from autoseg.io.image import Geometry, write_image
from autoseg.schema.base import load_json, save_json
from autoseg.inference.outputs import to_segmentation
from autoseg.schema.dataset import CaseSpec, DatasetSpec, Region
from autoseg.schema.plans import Plans
from autoseg.workspace import Workspace

REPO = Path(__file__).resolve().parents[3]
GEOMETRY = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
SHAPE = (8, 12, 12)
LABELS = ("background", "Anterior", "Posterior")
R1 = np.s_[2:6, 2:4, 2:6]   # half of label 1
R2 = np.s_[2:6, 8:10, 2:6]  # half of label 2
SPURIOUS = np.s_[0:2, 0:2, 10:12]
WEAK = {"2d": R1, "3d_fullres": R2, "3d_lowres": None}
DATASET = "Fake"


def reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[2:6, 6:10, 2:6] = 2
    return ref


def probabilities(config: str) -> np.ndarray:
    ref = reference()
    p = np.full((3,) + SHAPE, 0.05, np.float32)
    for k in range(3):
        p[k][ref == k] = 0.9
    weak = WEAK[config]
    if weak is not None:
        true = int(ref[weak].max())
        p[:, weak[0], weak[1], weak[2]] = 0.05
        p[0][weak], p[true][weak] = 0.6, 0.35
    p[:, SPURIOUS[0], SPURIOUS[1], SPURIOUS[2]] = 0.05
    p[1][SPURIOUS] = 0.9
    return p


#: ``make_workspace(regions=True)``: label 1 and 2 together are the whole region, label 2 alone the core
REGIONS = (Region("whole", (1, 2)), Region("core", (2,)))


def region_probabilities(config: str) -> np.ndarray:
    """Sigmoid outputs ``(2, z, y, x)`` of the two regions from the label probabilities: each region's
    probability is the sum of its labels'."""
    p = probabilities(config)
    return np.stack([p[1] + p[2], p[2]]).clip(0, 1)


def make_workspace(tmp_path: Path, n_cases: int = 10, regions: bool = False) -> tuple[Path, list[str]]:
    """Returns the workspace root and the case ids. ``regions``: a region-based dataset (:data:`REGIONS`,
    class order 1, 2) whose configurations output region probabilities."""
    raw = tmp_path / "raw" / DATASET
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text("{}")
    ids = [f"case_{i:03d}" for i in range(n_cases)]
    for cid in ids:
        write_image(reference(), GEOMETRY, raw / "labelsTr" / f"{cid}.nii.gz")
    ws = tmp_path / "ws"
    paths = Workspace(ws).dataset(DATASET)
    spec = DatasetSpec(DATASET, str(raw), "msd", ("MRI",), LABELS, ".nii.gz",
                       tuple(CaseSpec(c, (f"imagesTr/{c}.nii.gz",), f"labelsTr/{c}.nii.gz") for c in ids))
    order = (1, 2)
    if regions:
        spec = replace(spec, regions=REGIONS, regions_class_order=order)
    save_json(spec, paths.dataset_spec)
    plans = load_json(Plans, REPO / "plans" / "examples" / "hippocampus.plans.json")
    configs = dict(plans.configurations)
    configs["3d_lowres"] = configs["3d_fullres"]
    plans = replace(plans, dataset_name=DATASET, labels=LABELS, configurations=configs)
    if regions:
        plans = replace(plans, regions=REGIONS, regions_class_order=order)
    save_json(plans, paths.plans)
    splits = make_splits(ids, 5)
    paths.splits.write_text(json.dumps(splits))
    for config in WEAK:
        probs = region_probabilities(config) if regions else probabilities(config)
        seg = to_segmentation(probs, order if regions else None).astype(np.uint8)
        for k, fold in enumerate(splits):
            if config == "3d_lowres" and k > 2:
                continue
            folder = paths.fold(config, k).root
            (folder / "validation").mkdir(parents=True)
            (folder / "checkpoint_final.pt").write_bytes(b"")
            for cid in fold["val"]:
                write_image(seg, GEOMETRY, folder / "validation" / f"{cid}.nii.gz")
                np.savez_compressed(folder / "validation" / f"{cid}.npz", probabilities=probs.astype(np.float16))
    return ws, ids


def remove_fold(ws: Path, config: str, fold: int) -> None:
    shutil.rmtree(Workspace(ws).dataset(DATASET).fold(config, fold).root)
