"""The fold's final validation mirrors (nnU-Net's TTA) unless its run was trained with --no-validation-tta."""

import dataclasses
import json

import pytest

from autoseg.cli import main
from autoseg.schema.base import load_json, save_json
from autoseg.schema.training import TrainConfig
from autoseg.workflow import predict, validation
from autoseg.workflow.context import load_context


@pytest.mark.parametrize("stored, mirrored", [(True, True), (False, False), (None, True)])
def test_validation_mirrors_as_the_fold_was_trained(tiny_model, monkeypatch, stored, mirrored):
    _, ws = tiny_model
    ctx = load_context(ws, "Tiny")
    folder = ctx.fold("3d_fullres", "0")
    saved = load_json(TrainConfig, folder.train_config)
    if stored is None:  # a fold from before the option: nnU-Net's mirrored validation
        folder.train_config.unlink()
    else:
        save_json(dataclasses.replace(saved, validation_mirroring=stored), folder.train_config)
    seen = []

    class Loaded(Exception):
        """Stops the validation once its predictor is asked for: only the choice is under test here."""

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mirror"))
        raise Loaded

    monkeypatch.setattr(predict, "load_folds", spy)
    try:
        with pytest.raises(Loaded):
            validation.validate_fold(ctx, "3d_fullres", "0", device="cpu", progress=False)
    finally:
        save_json(saved, folder.train_config)
    assert seen == [mirrored]


def test_the_cli_option_is_stored_with_the_run(tiny_model):
    _, ws = tiny_model
    assert main(["train", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "1", "--epochs", "1",
                 "--iterations-per-epoch", "1", "--validation-iterations", "1", "-j", "0", "--no-validation",
                 "--no-validation-tta"]) == 0
    stored = json.loads((ws / "Tiny" / "models" / "3d_fullres" / "fold_1" / "train_config.json").read_text())
    assert stored["validation_mirroring"] is False
