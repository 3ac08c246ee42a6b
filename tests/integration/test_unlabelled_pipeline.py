"""Unlabelled training images end to end on tiny synthetic sets: found in imagesTrUnlabelled/, verified before
anything is trained, preprocessed beside the labelled cases but kept out of the fingerprint and the folds, and
actually learnt from (the model depends on what they hold); resume is bit-exact with the teacher; 2D, regions and
the ignore label train too."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg import api
from autoseg.cli import main
from autoseg.errors import DatasetError
from autoseg.io.image import read_image, write_image
from autoseg.nn.checkpoint import load_checkpoint
from autoseg.preprocessing.store import CaseStore
from autoseg.schema.dataset import IGNORE
from autoseg.synthetic import PRESETS, make_dataset
from autoseg.training.trainer import Callback
from autoseg.workflow.context import load_context
from autoseg.workflow.fold import run_fold, train_fold
from autoseg.training.run import make_config, RunStart

UNLABELLED = 3  # of tiny's 8 training cases, the last 3 lose their labels
SHORT = dict(epochs=2, iterations_per_epoch=2, validation_iterations=1, num_workers=0, deterministic=True)


def with_unlabelled(raw: Path, dest: Path, count: int = UNLABELLED) -> Path:
    """A copy of an MSD raw folder whose last ``count`` training cases are unlabelled images."""
    shutil.copytree(raw, dest)
    meta = json.loads((dest / "dataset.json").read_text())
    (dest / "imagesTrUnlabelled").mkdir()
    for entry in meta["training"][-count:]:
        shutil.move(dest / entry["image"], dest / "imagesTrUnlabelled" / Path(entry["image"]).name)
        (dest / entry["label"]).unlink()
    meta["training"] = meta["training"][:-count]
    meta["numTraining"] = len(meta["training"])
    (dest / "dataset.json").write_text(json.dumps(meta))
    return dest


def weights(folder: Path, which: str = "model") -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(folder) / "checkpoint_final.pt")[which]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def semi_raw(tiny_raw, tmp_path_factory) -> Path:
    return with_unlabelled(tiny_raw, tmp_path_factory.mktemp("semi") / "Task01_Tiny")


@pytest.fixture(scope="module")
def planned(semi_raw, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("semi_ws") / "ws"
    api.plan(semi_raw, ws, progress=False, num_workers=1)
    return ws


def _train(template: Path, dest: Path, configuration: str = "3d_fullres", **overrides):
    ws = shutil.copytree(template, dest, symlinks=True)
    return api.train(ws, "Tiny", configuration, "0", progress=False, validate=False, **{**SHORT, **overrides})


def test_unlabelled_images_are_preprocessed_but_not_fingerprinted_nor_in_any_fold(planned, semi_raw, capsys):
    assert main(["verify", str(semi_raw), "-j", "1"]) == 0
    assert f"5 training, {UNLABELLED} unlabelled training, 2 test cases" in capsys.readouterr().out
    ctx = load_context(planned, "Tiny")
    unlabelled = sorted(c.case_id for c in ctx.spec.unlabelled_cases)
    labelled = sorted(c.case_id for c in ctx.spec.training)
    assert len(unlabelled) == UNLABELLED and len(labelled) == 8 - UNLABELLED
    assert all(c.images[0].startswith("imagesTrUnlabelled/") and c.label is None for c in ctx.spec.unlabelled_cases)
    fingerprint = json.loads(ctx.paths.fingerprint.read_text())
    assert sorted(c["case_id"] for c in fingerprint["cases"]) == labelled  # plans and normalisation: labelled only
    for split in ctx.require_splits():
        assert not set(split["train"] + split["val"]) & set(unlabelled)
    assert sorted(sum((s["val"] for s in ctx.require_splits()), [])) == labelled
    store = CaseStore(ctx.paths.preprocessed("3d_fullres"))
    from autoseg.workflow.fold import _preprocessed_fold_cases

    assert _preprocessed_fold_cases(ctx, "3d_fullres", "all", store.case_ids()) == (labelled, labelled)
    _, seg, locs, _ = store.load(unlabelled[0])
    assert (np.asarray(seg) == IGNORE).all() and locs == {}


def test_the_unlabelled_images_change_the_model_and_off_ignores_them(planned, tiny_raw, semi_raw, tmp_path, capsys):
    off = _train(planned, tmp_path / "off", semi_supervised="off")
    assert json.loads((Path(off.folder) / "train_config.json").read_text())["semi_supervised"] == "off"
    # a short run by default leaves them out (it learns more from its labelled cases in the same time), and says so
    ws = shutil.copytree(planned, tmp_path / "short_cli", symlinks=True)
    assert main(["train", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "0", "--epochs", "1",
                 "--iterations-per-epoch", "1", "-j", "0", "--no-validation"]) == 0
    assert f"{UNLABELLED} unlabelled training images left out: a short run" in capsys.readouterr().out
    short = _train(planned, tmp_path / "short")
    assert json.loads((Path(short.folder) / "train_config.json").read_text())["semi_supervised"] == "off"
    assert same(weights(off.folder), weights(short.folder))
    auto = _train(planned, tmp_path / "auto", semi_supervised="copy_paste")
    pseudo = _train(planned, tmp_path / "pseudo", semi_supervised="pseudo_label")
    assert not same(weights(off.folder), weights(auto.folder))
    assert not same(weights(off.folder), weights(pseudo.folder))
    assert not same(weights(auto.folder), weights(pseudo.folder))
    assert "teacher" in load_checkpoint(Path(auto.folder) / "checkpoint_final.pt")
    assert "teacher" not in load_checkpoint(Path(off.folder) / "checkpoint_final.pt")

    # the same labelled cases with other unlabelled images (mirrored copies): another model, so what the images
    # hold is learnt from, not just their presence
    other = tmp_path / "other_raw"
    shutil.copytree(semi_raw, other)
    for f in sorted((other / "imagesTrUnlabelled").iterdir()):
        image, geometry = read_image([f])
        write_image(np.ascontiguousarray(image[0, :, ::-1]), geometry, f)
    api.plan(other, tmp_path / "other_ws", progress=False, num_workers=1)
    assert plans_of(tmp_path / "other_ws") == plans_of(planned)  # planned from the labelled cases alone
    other_auto = _train(tmp_path / "other_ws", tmp_path / "other_auto", semi_supervised="copy_paste")
    assert not same(weights(auto.folder), weights(other_auto.folder))

    # off with unlabelled images present trains exactly what the labelled cases alone train
    api.plan(tiny_raw_without_unlabelled(semi_raw, tmp_path / "labelled_only"), tmp_path / "lo_ws", progress=False,
             num_workers=1)
    assert plans_of(tmp_path / "lo_ws") == plans_of(planned)
    labelled_only = _train(tmp_path / "lo_ws", tmp_path / "lo", semi_supervised="off")
    assert json.loads((Path(labelled_only.folder) / "train_config.json").read_text())["semi_supervised"] == "off"
    assert same(weights(off.folder), weights(labelled_only.folder))


def plans_of(ws: Path) -> dict:
    """The plans but the hash of the fingerprint they came from (which covers every file of the raw folder)."""
    plans = json.loads((ws / "Tiny" / "plans.json").read_text())
    plans.pop("fingerprint_sha256")
    return plans


def tiny_raw_without_unlabelled(raw: Path, dest: Path) -> Path:
    shutil.copytree(raw, dest)
    shutil.rmtree(dest / "imagesTrUnlabelled")
    return dest


def test_a_corrupted_unlabelled_image_is_refused_before_training(semi_raw, tmp_path, capsys):
    raw = tmp_path / "Task01_Tiny"
    shutil.copytree(semi_raw, raw)
    bad = sorted((raw / "imagesTrUnlabelled").iterdir())[1]
    image, geometry = read_image([bad])
    image = image[0].astype(np.float32)
    image[3, 4, 5] = np.nan
    write_image(image, geometry, bad)
    with pytest.raises(DatasetError) as e:
        api.plan(raw, tmp_path / "ws", progress=False, num_workers=1)
    assert len(e.value.problems) == 1 and str(bad) in e.value.problems[0]
    assert not (tmp_path / "ws" / "Tiny" / "plans.json").exists()

    # the command line: exit 2, one line naming the file, no traceback
    assert main(["plan", str(raw), "-w", str(tmp_path / "ws2"), "-j", "1"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err

    # an unlabelled image with another channel count than the dataset's, and one sharing a labelled case's id
    raw2 = tmp_path / "Task01_Tiny2"
    shutil.copytree(semi_raw, raw2)
    first = json.loads((raw2 / "dataset.json").read_text())["training"][0]["image"]
    shutil.copy(raw2 / first, raw2 / "imagesTrUnlabelled" / Path(first).name)
    with pytest.raises(DatasetError) as e:
        api.verify(raw2, progress=False)
    assert any("is also a labelled training case" in p and Path(first).name in p for p in e.value.problems)


class _KilledAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, log):
        if trainer.state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_killed_semi_supervised_run_resumes_bit_exact_teacher_included(planned, tmp_path):
    full = _train(planned, tmp_path / "full", epochs=3, semi_supervised="pseudo_label")
    ws = shutil.copytree(planned, tmp_path / "killed", symlinks=True)
    ctx = load_context(ws, "Tiny", create_splits=True)
    overrides = {**SHORT, "epochs": 3, "semi_supervised": "pseudo_label"}
    start = RunStart(make_config(ctx.plans_sha256, "Tiny", "3d_fullres", "0", overrides), None, None)
    with pytest.raises(KeyboardInterrupt):
        train_fold(ctx, "3d_fullres", "0", start, explicit_length=True, progress=False,
                   callbacks=[_KilledAfter(2)], given=frozenset(overrides))
    latest = load_checkpoint(ctx.fold("3d_fullres", "0").latest_checkpoint)
    assert "teacher" in latest and json.loads(latest["state"])["epoch"] == 2
    resumed = run_fold(ctx, "3d_fullres", "0", overrides, resume=True, validate=False, progress=False)
    assert resumed.state.epoch == 3
    for which in ("model", "teacher"):
        assert same(weights(full.folder, which), weights(resumed.folder, which))


def test_2d_configuration_trains_on_unlabelled_slices(planned, tmp_path):
    result = _train(planned, tmp_path / "2d", configuration="2d", semi_supervised="copy_paste", epochs=1)
    assert result.state.epoch == 1 and "teacher" in load_checkpoint(Path(result.folder) / "checkpoint_final.pt")


def test_regions_and_the_ignore_label_train_with_unlabelled_images(tiny_raw, tmp_path):
    # regions (sigmoid outputs, BCE + Dice): the teacher's targets are label maps in regions_class_order
    spec = replace(PRESETS["brats-like"], num_training=7, num_test=1, shape=(24, 28, 24), channels=("FLAIR", "T1"))
    raw = with_unlabelled(make_dataset(tmp_path / "src" / "Task05_Regions", spec), tmp_path / "Task05_Regions", 2)
    (raw / "regions.json").write_text(json.dumps({"regions": {"whole": [1, 2, 3, 4], "core": [2, 3, 4]},
                                                  "regions_class_order": [1, 2]}))
    result = api.plan(raw, tmp_path / "ws_regions", progress=False, num_workers=1)
    trained = api.train(tmp_path / "ws_regions", result.plans.dataset_name, "3d_fullres", "0", progress=False,
                        validate=False, semi_supervised="copy_paste", **{**SHORT, "epochs": 1})
    log = json.loads((Path(trained.folder) / "log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(log["train_loss"]) and len(log["pseudo_dice"]) == 2

    # the ignore label in the labelled cases, unlabelled images beside them
    sparse = with_unlabelled(tiny_raw, tmp_path / "Task02_Sparse")
    meta = json.loads((sparse / "dataset.json").read_text())
    meta["labels"]["3"] = "ignore"
    (sparse / "dataset.json").write_text(json.dumps(meta))
    from autoseg.io.image import read_label

    for entry in meta["training"]:
        label, geometry = read_label(sparse / entry["label"])
        label = label.copy()
        label[1::2] = 3
        write_image(label.astype(np.uint8), geometry, sparse / entry["label"])
    result = api.plan(sparse, tmp_path / "ws_sparse", progress=False, num_workers=1)
    trained = api.train(tmp_path / "ws_sparse", result.plans.dataset_name, "3d_fullres", "0", progress=False,
                        validate=False, semi_supervised="pseudo_label", **{**SHORT, "epochs": 1})
    assert trained.state.epoch == 1


def test_a_method_without_unlabelled_images_and_a_bad_method_are_refused(tiny_model, capsys):
    _, ws = tiny_model
    assert main(["train", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "1", "--epochs", "1",
                 "--semi-supervised", "copy_paste"]) == 2
    assert "no unlabelled training images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "1", "--semi-supervised", "mean"])
    assert e.value.code == 2
