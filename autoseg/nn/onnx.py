"""Networks as ONNX: export from a trained checkpoint, and an ONNX network run by onnxruntime behind the same
module interface as a torch network, so the sliding window, ensembling and the cascade use it unchanged.

An exported file carries, in its ONNX metadata, the hash of the plans and of the weights it was made from
(:func:`weights_sha256`), so a network re-trained after the export is never predicted with a stale file. Both
directions need the optional extra ``[onnx]`` (onnx, onnxruntime), imported only here and only when used.

Loading checks what a hostile or broken file could do: weights stored outside the file (external data, which
would make the runtime open other paths), operators outside the standard domains, and inputs or outputs that do
not match the plans are refused with one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from autoseg.errors import AutosegError, require_extra
from autoseg.nn.blocks import with_instance_norms

INPUT, OUTPUT = "input", "logits"
OPSET = 17
#: ONNX metadata keys written on export.
META_PLANS, META_WEIGHTS = "autoseg.plans_sha256", "autoseg.weights_sha256"
_STANDARD_DOMAINS = ("", "ai.onnx")


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of a network's weights (names, shapes, dtypes and bytes, in name order): equal for a workspace
    checkpoint and its exported copy."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_onnx(network: nn.Module, patch_size: Sequence[int], input_channels: int, plans_sha256: str,
                weights: str) -> bytes:
    """The ONNX bytes of ``network`` (no deep supervision) for ``(batch, input_channels, *patch_size)`` float32
    input (dynamic batch), with the hashes of plans and ``weights`` in its metadata."""
    onnx = require_extra("onnx", "onnx", "ONNX export")
    network = with_instance_norms(network).eval().cpu()  # a copy: the caller's network is left alone
    example = torch.zeros((1, input_channels, *patch_size), dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape checks and instance norm; not actionable
        torch.onnx.export(network, (example,), buf, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET)
    model = onnx.load_from_string(buf.getvalue())
    for key, value in ((META_PLANS, plans_sha256), (META_WEIGHTS, weights)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def onnx_metadata(data: bytes, where: str) -> dict[str, str]:
    """The metadata of an ONNX file after the safety checks (module docs); raises AutosegError naming ``where``."""
    onnx = require_extra("onnx", "onnx", "ONNX prediction")
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 -- protobuf raises its own types
        raise AutosegError(f"{where}: not a readable ONNX model ({type(e).__name__})") from None
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise AutosegError(f"{where}: tensor {t.name} is stored outside the file (external data is refused)")
    domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
    foreign = sorted(d for d in domains if d not in _STANDARD_DOMAINS)
    if foreign or any(n.op_type in ("Loop", "If", "Scan") for n in model.graph.node):
        raise AutosegError(f"{where}: uses operators outside a U-Net's standard set "
                           f"({foreign[0] if foreign else 'control flow'}); not an autoseg export")
    return {p.key: p.value for p in model.metadata_props}


def weights_mismatch(data: bytes, state: dict[str, torch.Tensor]) -> str | None:
    """Why the ONNX network ``data`` does not hold the weights ``state`` (``None`` when it does): every
    initializer named like a weight must equal it, and every larger initializer must be one of the weights.
    Catches an ONNX file whose metadata was copied over other weights."""
    onnx = require_extra("onnx", "onnx", "ONNX checks")
    from onnx import numpy_helper

    for init in onnx.load_from_string(data).graph.initializer:
        array = numpy_helper.to_array(init)
        if init.name in state:
            ref = state[init.name].detach().cpu().numpy()
            if array.shape != ref.shape or not np.array_equal(array, ref):
                return f"tensor {init.name} differs from the checkpoint's"
        elif array.size > 64:
            return f"tensor {init.name} ({array.size} values) is not a weight of the checkpoint"
    return None


class OnnxNetwork(nn.Module):
    """An ONNX network run by onnxruntime, called like the torch network it was exported from.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    input_channels, outputs, patch_size
        What the plans say it takes and returns; a file that disagrees is refused.
    plans_sha256
        The plans' hash; a file made with other plans is refused.
    threads
        Intra-op threads of onnxruntime (``None``: its default, every core).
    """

    def __init__(self, path: Path, input_channels: int, outputs: int, patch_size: Sequence[int],
                 plans_sha256: str | None = None, threads: int | None = None):
        super().__init__()
        ort = require_extra("onnxruntime", "onnx", "prediction with onnxruntime")
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise AutosegError(f"{path}: cannot read the ONNX network ({e.strerror})") from None
        self.metadata = onnx_metadata(data, str(path))
        if plans_sha256 is not None and self.metadata.get(META_PLANS) != plans_sha256:
            raise AutosegError(f"{path}: made with other plans than this dataset's; export it again")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own types
            raise AutosegError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        inputs, outs = self.session.get_inputs(), self.session.get_outputs()
        want_in = [input_channels, *patch_size]
        if (len(inputs) != 1 or len(outs) != 1 or list(inputs[0].shape[1:]) != want_in
                or list(outs[0].shape[1:]) != [outputs, *patch_size]):
            got = [list(i.shape) for i in inputs], [list(o.shape) for o in outs]
            raise AutosegError(f"{path}: takes {got[0]} and returns {got[1]}; the plans need "
                               f"[batch, {', '.join(map(str, want_in))}] -> "
                               f"[batch, {', '.join(map(str, [outputs, *patch_size]))}]")
        self.input_name, self.path = inputs[0].name, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)
