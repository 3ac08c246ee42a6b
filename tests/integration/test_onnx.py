"""ONNX export and prediction with onnxruntime: the zip carries the networks and inference.json, an imported
model predicts with onnxruntime the label maps torch predicts, stale or hostile ONNX files are refused or remade.
One tiny model is trained once for the module."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from autoseg import api
from autoseg.cli import main
from autoseg.errors import AutosegError, require_extra
from autoseg.io.image import read_label
from autoseg.schema.base import from_jsonable
from autoseg.schema.inference import InferenceSpec

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")

ONNX = "models/3d_fullres/fold_0/network.onnx"


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    raw, ws = tiny_model  # this module's copy of the session's tiny trained workspace
    out = tmp_path_factory.mktemp("onnx") / "model.zip"
    assert main(["export", "Tiny", "-w", str(ws), "-o", str(out), "--format", "onnx"]) == 0
    return raw, ws, out


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {f.name: read_label(f)[0] for f in sorted(folder.glob("*.nii.gz"))}


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))
    return dst


def test_zip_holds_onnx_networks_and_inference_json(trained):
    _, ws, out = trained
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        spec = from_jsonable(InferenceSpec, json.loads(zf.read("inference.json")))
        onnx_bytes = zf.read(ONNX)
    assert {ONNX, "inference.json", "models/3d_fullres/fold_0/checkpoint_final.pt"} <= names
    config = spec.configurations["3d_fullres"]
    assert [n.file for n in config.networks] == [ONNX] and config.input_channels == 1
    import hashlib
    assert config.networks[0].sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    plans = api.load_context(ws, "Tiny").plans
    assert config.patch_size == plans.configurations["3d_fullres"].patch_size and spec.labels == plans.labels

    # runs with onnxruntime alone, from what inference.json says
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = np.zeros((2, config.input_channels, *config.patch_size), np.float32)
    assert session.run(None, {"input": x})[0].shape == (2, len(spec.labels), *config.patch_size)


def test_imported_model_predicts_with_onnxruntime_what_torch_predicts(trained, tmp_path, capsys):
    raw, ws, out = trained
    fresh = tmp_path / "ws"
    assert main(["import", str(out), "-w", str(fresh)]) == 0
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    # onnxruntime computes in fp32, so torch must too: with --precision auto a CPU with native bf16 predicts in
    # bf16, whose rounding flips far more than ties (README: "ONNX and torch agree")
    assert main(["predict", "Tiny", "-w", str(fresh), "-i", str(raw / "imagesTs"), "-o", str(torch_out),
                 "--precision", "fp32"]) == 0
    assert main(["predict", "Tiny", "-w", str(fresh), "-i", str(raw / "imagesTs"), "-o", str(onnx_out),
                 "--runtime", "onnxruntime"]) == 0
    a, b = _labels(torch_out), _labels(onnx_out)
    assert a.keys() == b.keys() and a
    differing = sum(int((a[k] != b[k]).sum()) for k in a)
    total = sum(v.size for v in a.values())
    assert differing <= 1e-4 * total  # float summation order differs: only exact ties may flip


def test_a_stale_or_broken_workspace_onnx_is_made_again(trained, tmp_path):
    raw, ws, _ = trained
    fold = ws / "Tiny" / "models" / "3d_fullres" / "fold_0"
    good = (fold / "network.onnx").read_bytes()
    (fold / "network.onnx").write_bytes(b"not onnx")
    predictor = api.load_predictor(ws, "Tiny", "3d_fullres", runtime="onnxruntime")
    assert (fold / "network.onnx").read_bytes() != b"not onnx" and predictor.networks
    assert len((fold / "network.onnx").read_bytes()) == len(good)


def test_hostile_onnx_members_are_refused_at_import(trained, tmp_path):
    import onnx

    _, _, out = trained
    model = onnx.load_from_string(zipfile.ZipFile(out).read(ONNX))
    # weights from elsewhere: a valid network, but not the zip's checkpoint
    other = onnx.load_from_string(model.SerializeToString())
    init = other.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    # external data: the runtime would open a path of the attacker's choosing
    external = onnx.load_from_string(model.SerializeToString())
    t = external.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    for hostile, why in ((other, "not made from the zip's checkpoint"), (external, "stored outside the file"),
                         (None, "not a readable ONNX model")):
        data = b"garbage" if hostile is None else hostile.SerializeToString()
        bad = _resigned(_rewrite(out, tmp_path / "bad.zip", lambda n, d: data if n == ONNX else d))
        with pytest.raises(AutosegError, match=why):
            api.import_model(bad, tmp_path / f"ws_{why[:5]}")
        assert not (tmp_path / f"ws_{why[:5]}" / "Tiny").exists()


def _resigned(path: Path) -> Path:
    """Recompute the manifest's hashes, as a hostile author would."""
    import hashlib

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items() if n != "manifest.json"}
    members["manifest.json"] = json.dumps(manifest).encode()
    out = path.with_name("resigned.zip")
    with zipfile.ZipFile(out, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return out


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(AutosegError, match=r"pip install 'autoseg\[onnx\]'"):
        require_extra("onnxruntime", "onnx", "prediction with onnxruntime")
