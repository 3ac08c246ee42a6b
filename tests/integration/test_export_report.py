"""Export -> import -> predict on a workspace without raw data; tampered zips; fine-tuning from an export; the
fold report. One tiny model is trained once for the module (about 10 s on an idle machine)."""

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg import api
from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.api import export_model, import_model
from autoseg.io.archive import ModelArchive
from autoseg.nn.checkpoint import load_checkpoint, load_checkpoint_bytes
from autoseg.io.image import read_label



@pytest.fixture(scope="module")
def trained(tiny_model):
    """This module's copy of the session's tiny trained workspace (``TINY_TRAIN``)."""
    return tiny_model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    _, ws = trained
    out = tmp_path_factory.mktemp("zip") / "model.zip"
    assert main(["export", "Tiny", "-w", str(ws), "-o", str(out)]) == 0
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a zip member by member; ``change(name, data)`` returns the new bytes, or None to drop the member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def test_export_holds_a_verifiable_small_model(trained, exported, tmp_path):
    _, ws = trained
    with zipfile.ZipFile(exported) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        spec = json.loads(zf.read("dataset_spec.json"))
    assert manifest["dataset"] == "Tiny" and manifest["configurations"] == ["3d_fullres"]
    assert manifest["folds"] == {"3d_fullres": ["0"]} and manifest["schema_version"] == 1
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert {"plans.json", "dataset_spec.json", "models/3d_fullres/fold_0/checkpoint_final.pt",
            "models/3d_fullres/fold_0/progress.png", "models/3d_fullres/fold_0/validation/summary.json"} <= names
    assert not any(n.endswith(".nii.gz") or "overlays" in n for n in names)  # no (derived) patient images
    assert spec["raw_dir"] == ""
    with ModelArchive(exported) as archive:
        ckpt = load_checkpoint_bytes(*archive.checkpoint_bytes("3d_fullres", "0"))
    assert "optimizer" not in ckpt and "grad_scaler" not in ckpt and "torch_rng" not in ckpt
    assert ckpt["plans_sha256"] == manifest["plans_sha256"] and json.loads(ckpt["train_config"])["fold"] == "0"
    original = ws / "Tiny" / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    assert exported.stat().st_size < original.stat().st_size
    # an existing zip is not replaced without --overwrite; no temporary files are left behind
    assert main(["export", "Tiny", "-w", str(ws), "-o", str(exported)]) == 2
    assert sorted(p.name for p in exported.parent.iterdir()) == ["model.zip"]
    with pytest.raises(AutosegError, match="no configuration '2d_nope'"):
        export_model(ws, "Tiny", tmp_path / "x.zip", ["2d_nope"])
    with pytest.raises(AutosegError, match="no trained fold of 2d"):
        export_model(ws, "Tiny", tmp_path / "x.zip", ["2d"])


def test_import_then_predict_without_raw_or_preprocessed_data(trained, exported, tmp_path, capsys):
    raw, ws = trained
    ws2 = tmp_path / "elsewhere"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(raw / "imagesTs" / "tiny_008.nii.gz", images)
    assert main(["import", str(exported), "-w", str(ws2)]) == 0
    root = ws2 / "Tiny"
    assert not (root / "preprocessed").exists() and not (root / "fingerprint.json").exists()
    assert json.loads((root / "dataset_spec.json").read_text())["raw_dir"] == ""
    assert main(["predict", "Tiny", "-w", str(ws2), "-i", str(images), "-o", str(tmp_path / "out"),
                 "--no-tta"]) == 0
    assert main(["predict", "Tiny", "-w", str(ws), "-i", str(images), "-o", str(tmp_path / "ref"),
                 "--no-tta"]) == 0
    seg, _ = read_label(tmp_path / "out" / "tiny_008.nii.gz")
    ref, _ = read_label(tmp_path / "ref" / "tiny_008.nii.gz")
    assert np.array_equal(seg, ref)  # the stripped checkpoint predicts exactly like the original
    # importing the same zip again merges (nothing differs); a report works there, without overlays
    assert main(["import", str(exported), "-w", str(ws2)]) == 0
    assert "0 file(s) written" in capsys.readouterr().out
    report = api.report(ws2, "Tiny", "3d_fullres", "0").read_text()
    assert "Overlays skipped" in report and "| liver (1) |" in report


def test_import_refuses_to_overwrite_unless_asked(trained, exported, tmp_path, capsys):
    _, ws = trained
    ckpt = ws / "Tiny" / "models" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    before = _sha(ckpt)
    # the original workspace: same plans, but its (full) checkpoint differs from the exported one
    assert main(["import", str(exported), "-w", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_final.pt: already exists and differs" in err and "--overwrite" in err
    assert _sha(ckpt) == before
    # other plans in the target: refused, then replaced with --overwrite (the old plans are kept)
    ws2 = tmp_path / "ws2"
    import_model(exported, ws2)
    plans_path = ws2 / "Tiny" / "plans.json"
    other = json.loads(plans_path.read_text())
    other["memory_target_gb"] = 123.0
    plans_path.write_text(json.dumps(other))
    with pytest.raises(AutosegError, match=r"plans.json: already exists and differs from .*model.zip"):
        import_model(exported, ws2)
    assert json.loads(plans_path.read_text())["memory_target_gb"] == 123.0
    result = import_model(exported, ws2, overwrite=True)
    assert "plans.json" in result.written
    assert json.loads(plans_path.read_text())["memory_target_gb"] != 123.0
    assert len(list((ws2 / "Tiny").glob("plans.*.json"))) == 1  # plans.<hash>.json: the replaced plans


@pytest.mark.parametrize("damage, message", [
    ("tamper", "does not match its sha256"),
    ("extra", "not listed in manifest.json"),
    ("drop", "listed in manifest.json is missing"),
    ("garbage", "not a readable zip archive"),
    ("foreign", "no manifest.json"),
])
def test_damaged_zip_is_rejected_naming_it(exported, tmp_path, capsys, damage, message):
    bad = tmp_path / "bad.zip"
    ckpt = "models/3d_fullres/fold_0/checkpoint_final.pt"
    if damage == "tamper":
        _rewrite(exported, bad, lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n == ckpt else d)
    elif damage == "extra":
        _rewrite(exported, bad, lambda n, d: d)
        with zipfile.ZipFile(bad, "a") as zf:
            zf.writestr("models/3d_fullres/fold_0/evil.py", b"print('hi')")
    elif damage == "drop":
        _rewrite(exported, bad, lambda n, d: None if n.endswith("progress.png") else d)
    elif damage == "garbage":
        bad.write_bytes(exported.read_bytes()[:5000])
    else:
        _rewrite(exported, bad, lambda n, d: None if n == "manifest.json" else d)
    ws = tmp_path / "ws"
    assert main(["import", str(bad), "-w", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and message in err[0] and "Traceback" not in err[0]
    assert not ws.exists()  # nothing written


class _RunsCode:
    """Unpickling this would call ``os.system``: what a hostile checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/autoseg-pwned",))


def _consistent(src: Path, dst: Path, member: str, data: bytes) -> Path:
    """A zip whose ``member`` is replaced and whose manifest lists the new sha256: the hashes all agree, so only
    loading the checkpoint can tell."""
    manifest = json.loads(zipfile.ZipFile(src).read("manifest.json"))
    manifest["files"][member] = hashlib.sha256(data).hexdigest()
    return _rewrite(src, dst, lambda n, d: data if n == member else
                    (json.dumps(manifest).encode() if n == "manifest.json" else d))


@pytest.mark.parametrize("payload, message", [
    ("code", "not a readable checkpoint"),
    ("shapes", "the plans' network needs"),
    ("missing", "lacks"),
    ("not tensors", "not a set of named tensors"),
])
def test_import_loads_every_checkpoint_safely_and_checks_its_tensors(exported, tmp_path, capsys, payload,
                                                                     message):
    import io
    import pickle

    from autoseg.nn.checkpoint import checkpoint_bytes

    member = "models/3d_fullres/fold_0/checkpoint_final.pt"
    with ModelArchive(exported) as archive:
        good = load_checkpoint_bytes(*archive.checkpoint_bytes("3d_fullres", "0"))
    if payload == "code":
        buf = io.BytesIO()
        torch.save({"format": "autoseg-checkpoint", "version": 1, "model": _RunsCode()}, buf,
                   pickle_protocol=pickle.HIGHEST_PROTOCOL)
        data = buf.getvalue()
    else:
        model = dict(good["model"])
        first = next(iter(model))
        if payload == "shapes":
            model[first] = torch.zeros(3, 3)
        elif payload == "missing":
            del model[first]
        else:
            model[first] = "weights"
        data = checkpoint_bytes({k: v for k, v in good.items() if k not in ("format", "version")} | {"model": model})
    bad = _consistent(exported, tmp_path / "bad.zip", member, data)
    ws = tmp_path / "ws"
    assert main(["import", str(bad), "-w", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:{member}" in err[0] and message in err[0], err
    assert not ws.exists() and not Path("/tmp/autoseg-pwned").exists()


def test_pretrained_loads_matching_tensors_and_skips_heads_for_other_labels(trained, exported):
    from autoseg.nn.unet import build_network
    from autoseg.training.pretrained import block_summary, load_pretrained

    _, ws = trained
    plans = api.load_plans(ws, "Tiny")
    arch = plans.configurations["3d_fullres"].architecture
    same = build_network(arch, 1, len(plans.labels))
    report = load_pretrained(same, exported, "3d_fullres", "0")
    loaded, skipped = report.loaded, report.skipped
    assert skipped == [] and len(loaded) == len(same.state_dict())
    with ModelArchive(exported) as archive:
        source = load_checkpoint_bytes(*archive.checkpoint_bytes("3d_fullres", "0"))["model"]
    assert all(np.array_equal(same.state_dict()[k].numpy(), source[k].numpy()) for k in loaded)

    other = build_network(arch, 1, len(plans.labels) + 2)
    fresh_head = other.state_dict()["seg_heads.0.weight"].clone()
    report = load_pretrained(other, exported, "3d_fullres", "0")
    loaded, skipped = report.loaded, report.skipped
    assert skipped and all(k.startswith("seg_heads.") for k in skipped)
    assert len(skipped) == sum(1 for k in other.state_dict() if k.startswith("seg_heads."))
    assert len(loaded) + len(skipped) == len(other.state_dict())
    assert np.array_equal(other.state_dict()["seg_heads.0.weight"].numpy(), fresh_head.numpy())

    from dataclasses import replace

    # another topology (one stage less, narrower deep stages): what matches is transferred, the rest is fresh
    n = len(arch.features_per_stage)
    fewer = replace(arch, features_per_stage=arch.features_per_stage[:1] + tuple(f // 2 for f in
                                                                                 arch.features_per_stage[1:n - 1]),
                    kernel_sizes=arch.kernel_sizes[:n - 1], strides=arch.strides[:n - 1],
                    blocks_per_stage_encoder=arch.blocks_per_stage_encoder[:n - 1],
                    blocks_per_stage_decoder=arch.blocks_per_stage_decoder[:n - 2])
    net = build_network(fewer, 1, 3)
    report = load_pretrained(net, exported, "3d_fullres", "0")
    first = "encoder.0.0.conv.weight"
    assert first in report.loaded and np.array_equal(net.state_dict()[first].numpy(), source[first].numpy())
    assert report.skipped and all(not k.startswith("encoder.0.") for k in report.skipped)
    by_name = {t.name: t for t in report.tensors}
    assert by_name["encoder.1.0.conv.weight"].source_shape[0] == 2 * by_name["encoder.1.0.conv.weight"].shape[0]
    assert any("encoder.0" in line and "fresh" not in line for line in block_summary(report))
    unrelated = build_network(replace(arch, features_per_stage=tuple(f + 1 for f in arch.features_per_stage)), 2, 3)
    with pytest.raises(AutosegError, match="shares no weight tensor"):
        load_pretrained(unrelated, exported, "3d_fullres", "0")
    with pytest.raises(AutosegError, match="holds no fold 3"):
        load_pretrained(build_network(arch, 1, 3), exported, "3d_fullres", "3")


def test_train_with_pretrained_from_the_cli(trained, exported, capsys):
    _, ws = trained
    args = ["train", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "1", "--epochs", "1",
            "--iterations-per-epoch", "1", "--validation-iterations", "1", "-j", "0", "--no-validation"]
    assert main([*args, "--pretrained", f"{exported}:3d_fullres"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"initialised from .*model.zip \(3d_fullres fold 0\): \d+ tensor\(s\) loaded, 0 skipped", out)
    config = json.loads((ws / "Tiny" / "models" / "3d_fullres" / "fold_1" / "train_config.json").read_text())
    assert config["pretrained"] == f"{exported}:3d_fullres" and config["pretrained_fold"] == "0"
    transfer = json.loads((ws / "Tiny" / "models" / "3d_fullres" / "fold_1" / "pretrained_transfer.json").read_text())
    assert transfer["configuration"] == "3d_fullres" and all(t["transferred"] for t in transfer["tensors"])
    # a fold that holds a run already is not silently re-initialised
    assert main([*args, "--epochs", "2", "--pretrained", str(exported), "--pretrained-fold", "0"]) == 2
    assert "--pretrained only initialises a fresh run" in capsys.readouterr().err


def test_frozen_encoder_warm_up(trained, exported, capsys):
    _, ws = trained
    args = ["train", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "2", "--epochs", "1",
            "--iterations-per-epoch", "2", "--validation-iterations", "1", "-j", "0", "--no-validation"]
    assert main([*args, "--freeze-encoder-epochs", "1"]) == 2
    assert "--freeze-encoder-epochs needs --pretrained" in capsys.readouterr().err
    assert main([*args, "--pretrained", str(exported), "--freeze-encoder-epochs", "1"]) == 0
    with ModelArchive(exported) as archive:
        source = load_checkpoint_bytes(*archive.checkpoint_bytes("3d_fullres", "0"))["model"]
    folder = ws / "Tiny" / "models" / "3d_fullres" / "fold_2"
    trained_net = load_checkpoint(folder / "checkpoint_final.pt")["model"]
    frozen = [k for k in trained_net if k.startswith(("stem.", "encoder.")) and k.endswith("conv.weight")]
    free = [k for k in trained_net if k.startswith(("decoder.", "seg_heads.")) and k.endswith("weight")]
    assert frozen and free
    assert all(torch.equal(trained_net[k], source[k]) for k in frozen)  # not updated in the frozen epoch
    assert not all(torch.equal(trained_net[k], source[k]) for k in free)  # the rest trained


def test_report_after_training(trained):
    _, ws = trained
    fold = ws / "Tiny" / "models" / "3d_fullres" / "fold_0"
    report = (fold / "report.md").read_text()  # written by the training's final validation
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "progress.png" in images and "dice_boxplot.png" in images
    overlays = [i for i in images if i.startswith("overlays/")]
    assert len(overlays) == 2  # two validation cases: the worst and the best
    assert all((fold / i).is_file() and (fold / i).stat().st_size > 0 for i in images)
    assert "| liver (1) |" in report and "precision" in report and "best smoothed pseudo-Dice" in report
    assert main(["report", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "0"]) == 0
    assert main(["report", "Tiny", "-w", str(ws), "-c", "3d_fullres", "-f", "4"]) == 2


def test_export_removes_what_a_killed_export_of_the_same_zip_left(trained, tmp_path):
    import tempfile

    _, ws = trained
    out = tmp_path / "model.zip"
    fd, killed = tempfile.mkstemp(dir=tmp_path, prefix=".model.zip.", suffix=".tmp")  # as a SIGKILL leaves it
    os.write(fd, b"PK\x03\x04 half a zip")
    os.close(fd)
    kept = ["notes.txt", ".model.zip.x.abcdefgh.tmp", ".other.zip.abcdefgh.tmp"]  # not this target's
    for name in kept:
        (tmp_path / name).write_text("keep")
    assert main(["export", "Tiny", "-w", str(ws), "-o", str(out)]) == 0
    assert not Path(killed).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["model.zip"])
    with ModelArchive(out) as archive:
        assert archive.manifest.dataset == "Tiny"
