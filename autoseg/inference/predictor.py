"""Predictor: raw image in, segmentation in the image's own geometry out, with one configuration's folds.

Shared by fold validation, ``autoseg predict`` and Python users who embed autoseg.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autoseg.errors import AutosegError
from autoseg.inference.outputs import outside_values, to_probabilities, to_segmentation
from autoseg.inference.sliding_window import predict_logits
from autoseg.io.image import Geometry
from autoseg.io.verify import array_problems
from autoseg.nn.device import resolve_channels_last, resolve_device, resolve_precision
from autoseg.nn.speed import compile_for_inference, prepare_for_device
from autoseg.nn.unet import build_network
from autoseg.preprocessing.case import preprocess_for_inference, revert_case
from autoseg.schema.base import sha256_of
from autoseg.schema.plans import Plans
from autoseg.nn.checkpoint import load_checkpoint


@dataclass(frozen=True)
class Prediction:
    """One case's result, in the raw image geometry.

    Attributes
    ----------
    segmentation
        ``(z, y, x)`` uint8 label map.
    probabilities
        ``(K, z, y, x)`` float32 class probabilities (``None`` unless asked for).
    """

    segmentation: np.ndarray
    probabilities: np.ndarray | None


class Predictor:
    """Segments images with the averaged logits of one configuration's networks (its folds).

    Parameters
    ----------
    plans
        The dataset's plans.
    configuration
        Which configuration the networks were trained for.
    networks
        Trained networks (one per fold); their logits are averaged.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    precision
        ``"auto"``, ``"fp32"`` or ``"bf16"`` (logits are accumulated in fp32 either way).
    step
        Sliding-window step as a fraction of the patch.
    mirror
        Test-time augmentation: average over mirrorings along every axis.
    channels_last
        Lay convolution weights out channels-last; ``None``: as in training (with bf16 or on CUDA; 2-10% faster
        prediction with bf16 on this project's CPU).
    compile
        Compile every network with ``torch.compile`` before predicting
        (:func:`autoseg.nn.speed.compile_for_inference`: seconds of compilation per network, then faster passes;
        the predictions equal eager ones to float rounding).
    """

    def __init__(self, plans: Plans, configuration: str, networks: Sequence[torch.nn.Module], device: str = "auto",
                 precision: str = "auto", step: float = 0.5, mirror: bool = True, channels_last: bool | None = None,
                 compile: bool = False):
        if configuration not in plans.configurations:
            raise AutosegError(f"configuration '{configuration}' is not in the plans of {plans.dataset_name} "
                               f"(planned: {', '.join(plans.configurations)})")
        if not networks:
            raise AutosegError(f"no trained network for {plans.dataset_name} {configuration}")
        self.plans = plans
        self.configuration = configuration
        self.plan = plans.configurations[configuration]
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "fp16":
            self.precision = "bf16"  # fp16 logits can overflow; bf16 has fp32's range
        self.step = step
        self.mirror_axes = tuple(range(self.plan.dims)) if mirror else None
        layout = resolve_channels_last(channels_last, self.device, self.precision)
        self.networks = [prepare_for_device(n, self.device, layout).eval() for n in networks]
        if compile:
            self.networks = [compile_for_inference(n, self.device) for n in self.networks]

    @classmethod
    def from_checkpoints(cls, plans: Plans, configuration: str, checkpoints: Sequence[Path], **kwargs) -> "Predictor":
        """Load networks from checkpoint files (each must have been trained with ``plans``)."""
        plan = plans.configurations.get(configuration)
        if plan is None:
            raise AutosegError(f"configuration '{configuration}' is not in the plans of {plans.dataset_name}")
        sha = sha256_of(plans)
        nets = []
        for path in checkpoints:
            ckpt = load_checkpoint(Path(path), plans_sha256=sha)
            net = build_network(plan.architecture, plans.input_channels(configuration), plans.num_outputs,
                                deep_supervision=False)
            # a deep-supervision network has the same parameters: its auxiliary heads are simply unused here
            net.load_state_dict(ckpt["model"])
            nets.append(net)
        return cls(plans, configuration, nets, **kwargs)

    @classmethod
    def from_onnx(cls, plans: Plans, configuration: str, files: Sequence[Path], threads: int | None = None,
                  **kwargs) -> "Predictor":
        """Networks from ONNX files (:class:`autoseg.nn.onnx.OnnxNetwork`, run by onnxruntime on the CPU in fp32;
        ``device`` and ``precision`` do not apply)."""
        from autoseg.nn.onnx import OnnxNetwork

        plan = plans.configurations.get(configuration)
        if plan is None:
            raise AutosegError(f"configuration '{configuration}' is not in the plans of {plans.dataset_name}")
        sha = sha256_of(plans)
        nets = [OnnxNetwork(f, plans.input_channels(configuration), plans.num_outputs, plan.patch_size, sha, threads)
                for f in files]
        kwargs.update(device="cpu", precision="fp32")
        return cls(plans, configuration, nets, **kwargs)

    @torch.inference_mode()
    def logits(self, data: np.ndarray) -> torch.Tensor:
        """Averaged logits ``(K, Z, Y, X)`` (on the CPU) of preprocessed data ``(C, Z, Y, X)``."""
        total = None
        for net in self.networks:
            out = predict_logits(net, data, self.plan.patch_size, self.plans.num_outputs, step=self.step,
                                 mirror_axes=self.mirror_axes, device=self.device, precision=self.precision)
            out = out.float().cpu()
            total = out if total is None else total + out
        return total / len(self.networks)

    def prepare(self, image: np.ndarray, geometry: Geometry, case_id: str = "case"):
        """Check and preprocess one raw image ``(C, z, y, x)``: returns ``(data, properties)`` for :meth:`logits`
        and :meth:`finish` (this step can run in a background thread while the network works)."""
        problems = array_problems(image, geometry.spacing, len(self.plans.channel_names), case_id)
        if problems:
            raise AutosegError(*problems)
        return preprocess_for_inference(image, geometry, self.plans, self.configuration, case_id)

    def finish(self, logits: torch.Tensor, properties, probabilities: bool = False) -> Prediction:
        """Softmax (sigmoid for regions), back to the raw geometry (resampled, un-cropped, transposed back), then
        the label map (:mod:`autoseg.inference.outputs`)."""
        regions = self.plans.regions is not None
        probs = to_probabilities(logits, regions)
        raw_probs = revert_case(probs, properties, is_label=False, background=outside_values(len(probs), regions))
        seg = to_segmentation(raw_probs, self.plans.regions_class_order if regions else None)
        return Prediction(seg, raw_probs if probabilities else None)

    def predict(self, image: np.ndarray, geometry: Geometry, case_id: str = "case",
                probabilities: bool = False) -> Prediction:
        """Segment one raw image.

        Parameters
        ----------
        image
            ``(C, z, y, x)`` raw intensities, channels as in the dataset.
        geometry
            Its geometry (spacing ``(z, y, x)`` mm).
        probabilities
            Also return per-class probabilities in the raw geometry.
        """
        data, props = self.prepare(image, geometry, case_id)
        return self.finish(self.logits(data), props, probabilities)

    def segment(self, array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Segment a numpy volume: ``(z, y, x)`` or ``(C, z, y, x)`` with ``spacing`` ``(z, y, x)`` in mm."""
        image = np.asarray(array)
        image = image[None] if image.ndim == 3 else image
        geometry = Geometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0),
                            (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return self.predict(image.astype(np.float32, copy=False) if image.dtype.kind in "biuf" else image,
                            geometry).segmentation
