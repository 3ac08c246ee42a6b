"""Semi-supervised training: what unlabelled training images add to a step.

An unlabelled image is, to the losses, a case whose every voxel is ignored (its stored segmentation is all
:data:`~autoseg.schema.dataset.IGNORE`). A teacher, the exponential moving average of the network's weights, gives
its patches targets: its most likely class wherever its probability reaches ``threshold``, ignored elsewhere (the
ignore label the losses already honour). Two ways to use them, chosen by ``TrainConfig.semi_supervised``:

``pseudo_label``
    the unlabelled patches join the batch with the teacher's targets (self-training with an EMA teacher; the
    student sees the patch with a little Gaussian noise, as in mean teacher / UA-MT);
``copy_paste``
    bidirectional copy-paste (BCP, Bai et al., CVPR 2023): a box of each labelled patch is pasted into an unlabelled
    one and the box of the unlabelled patch into the labelled one; the two mixed patches carry the labels where
    their voxels come from the labelled patch and the teacher's targets elsewhere.

Either way a step trains on the labelled samples plus as many unlabelled-derived ones, and the loss on teacher
targets is weighted by ``unlabelled_weight``, ramped up (mean teacher's ``exp(-5 (1 - t)^2)``) over the first
``unlabelled_rampup`` of the run, while the teacher is still poor. Every random draw comes from the step's index,
so a resumed run repeats an uninterrupted one; the teacher's weights are saved in every checkpoint.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg.schema.dataset import IGNORE
from autoseg.training.losses import downsample_targets
from autoseg.training.schedule import choose_schedule

#: ``TrainConfig.semi_supervised`` values that train on unlabelled images.
METHODS = ("pseudo_label", "copy_paste")
#: What ``"auto"`` becomes in a long run of a fold with unlabelled images (the better of :data:`METHODS` at equal
#: time, see :func:`resolve_method`).
DEFAULT_METHOD = "pseudo_label"
#: Standard deviation and clip of the noise added to the student's copy of an unlabelled patch (UA-MT's numbers, on
#: z-scored intensities).
NOISE_STD, NOISE_CLIP = 0.1, 0.2
#: Share of each spatial axis a copy-paste box spans (BCP's 2/3).
BOX_FRACTION = 2.0 / 3.0


def resolve_method(requested: str, has_unlabelled: bool, can_use: bool = True, iterations: float | None = None,
                   on_cpu: bool = False) -> str:
    """The method a run uses: ``"auto"`` is :data:`DEFAULT_METHOD` for a long run of a fold with unlabelled images
    (and ``can_use``), else ``"off"``; anything else is returned as given (checked by the caller).

    A long run is one of nnU-Net's recipe (:func:`autoseg.training.schedule.choose_schedule` of the expected
    ``iterations``): only there has training on the labelled cases used them up. A short run (a CPU budget) learns
    more from its labelled cases in the same time than from twice as many samples per step, half of them the
    teacher's: measured at equal time on Hippocampus (20% labelled) and LA2018 (16 + 64), see
    ``benchmarks/results/*labelled_*min_*``.
    """
    if requested != "auto":
        return requested
    long_run = choose_schedule(iterations, on_cpu) == "nnunet"
    return DEFAULT_METHOD if has_unlabelled and can_use and long_run else "off"


def rampup_weight(weight: float, progress: float, rampup: float) -> float:
    """``weight * exp(-5 (1 - t)^2)`` with ``t = progress / rampup`` clipped to 1 (``weight`` once ramped up).

    Parameters
    ----------
    weight
        Full weight of the loss on teacher targets.
    progress
        Share of the run done, 0 .. 1.
    rampup
        Share of the run over which the weight rises (0: full weight from the start).
    """
    if rampup <= 0:
        return weight
    t = min(1.0, max(0.0, progress) / rampup)
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)


def copy_paste_boxes(shape: Sequence[int], count: int, rng: np.random.Generator,
                     fraction: float = BOX_FRACTION) -> list[tuple[slice, ...]]:
    """``count`` random boxes spanning ``fraction`` of every axis of a patch of ``shape`` (voxels)."""
    boxes = []
    for _ in range(count):
        box = []
        for n in shape:
            size = max(1, int(round(n * fraction)))
            start = int(rng.integers(0, n - size + 1))
            box.append(slice(start, start + size))
        boxes.append(tuple(box))
    return boxes


def teacher_targets(probabilities: torch.Tensor, threshold: float,
                    class_order: Sequence[int] | None = None) -> torch.Tensor:
    """Hard targets ``(B, 1, *spatial)`` int64 from a teacher's probabilities, IGNORE where it is unsure.

    Parameters
    ----------
    probabilities
        ``(B, K, *spatial)`` softmax over the labels, or with ``class_order`` sigmoids of regions.
    threshold
        Least probability of the chosen class (regions: of every region's decision) for a voxel to get a target.
    class_order
        Regions: the label value each region writes, later regions over earlier ones (as predictions are made).
    """
    if class_order is None:
        confidence, labels = probabilities.max(dim=1, keepdim=True)
    else:
        inside = probabilities > 0.5
        labels = torch.zeros_like(probabilities[:, :1], dtype=torch.int64)
        for r, value in enumerate(class_order):
            labels = torch.where(inside[:, r:r + 1], torch.full_like(labels, int(value)), labels)
        confidence = torch.maximum(probabilities, 1.0 - probabilities).min(dim=1, keepdim=True).values
    return torch.where(confidence >= threshold, labels, torch.full_like(labels, IGNORE))


@dataclass(frozen=True)
class Term:
    """One loss term of a step: ``weight x loss(outputs[rows], targets)``."""

    rows: slice
    targets: list[torch.Tensor]
    unlabelled: bool


@dataclass
class SemiSupervision:
    """The unlabelled part of every training step (see the module docstring).

    Attributes
    ----------
    method
        One of :data:`METHODS`.
    teacher
        The EMA network (on the student's device, in eval mode, without gradients).
    batches
        Endless ``{"data": (U, C, *patch)}`` batches of unlabelled patches (their targets are not used).
    seed
        Root of the step's random draws (noise, boxes).
    threshold, ema_decay, weight, rampup
        ``TrainConfig`` numbers: ``pseudo_label_threshold``, ``teacher_ema``, ``unlabelled_weight``,
        ``unlabelled_rampup``.
    scales
        Deep-supervision target scales (``None``: one output).
    class_order
        Regions: the label value of every region (see :func:`teacher_targets`); ``None`` for labels.
    """

    method: str
    teacher: torch.nn.Module
    batches: Iterator[dict]
    seed: int
    threshold: float
    ema_decay: float
    weight: float
    rampup: float
    scales: Sequence[Sequence[float]] | None = None
    class_order: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"semi-supervised method must be one of {METHODS}, got {self.method!r}")

    @classmethod
    def from_student(cls, student: torch.nn.Module, teacher_state: dict | None, **kwargs: Any) -> "SemiSupervision":
        """A teacher copied from the bare ``student`` network (then given ``teacher_state``, a resumed run's)."""
        teacher = copy.deepcopy(student)
        if teacher_state is not None:
            teacher.load_state_dict(teacher_state)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return cls(teacher=teacher, **kwargs)

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, data: torch.Tensor, targets: list[torch.Tensor], unlabelled: torch.Tensor, index: int,
             autocast: Callable[[], Any]) -> tuple[torch.Tensor, list[Term]]:
        """The step's input batch and loss terms from its labelled ``data`` / ``targets`` (the loader's, every
        scale) and its ``unlabelled`` patches (same device); ``index``: the step's batch index."""
        rng = np.random.default_rng([self.seed, 104729, index])
        labels = self._teacher(unlabelled, autocast)
        b, u = data.shape[0], unlabelled.shape[0]
        if self.method == "pseudo_label":
            noise = torch.from_numpy(rng.standard_normal(unlabelled.shape, dtype=np.float32)).to(unlabelled.device)
            student = unlabelled + (noise * NOISE_STD).clamp(-NOISE_CLIP, NOISE_CLIP)
            batch = torch.cat([data, student.to(data.dtype)])
            return batch, [Term(slice(0, b), targets, False), Term(slice(b, b + u), self._scaled(labels), True)]
        return self._copy_paste(data, targets[0], unlabelled, labels, rng)

    def _teacher(self, unlabelled: torch.Tensor, autocast: Callable[[], Any]) -> torch.Tensor:
        with torch.no_grad(), autocast():
            out = self.teacher(unlabelled)
            logits = (out[0] if isinstance(out, (list, tuple)) else out).float()
            probs = torch.sigmoid(logits) if self.class_order is not None else torch.softmax(logits, dim=1)
            return teacher_targets(probs, self.threshold, self.class_order)

    def _scaled(self, full: torch.Tensor) -> list[torch.Tensor]:
        return downsample_targets(full, self.scales) if self.scales else [full]

    def _copy_paste(self, data: torch.Tensor, target: torch.Tensor, unlabelled: torch.Tensor,
                    labels: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, list[Term]]:
        """Pairs (labelled i, unlabelled i mod U): the labelled patch's box pasted into the unlabelled patch, and
        the unlabelled patch's box into the labelled one. Targets: the labels where the voxel comes from the
        labelled patch (weight 1), the teacher's elsewhere (ramped weight)."""
        b, u = data.shape[0], unlabelled.shape[0]
        pick = torch.arange(b, device=data.device) % u
        x_u, y_u = unlabelled[pick].to(data.dtype), labels[pick]
        target = target.long()
        mask = torch.zeros((b, 1, *data.shape[2:]), dtype=torch.bool, device=data.device)
        for i, box in enumerate(copy_paste_boxes(data.shape[2:], b, rng)):
            mask[(i, slice(None)) + box] = True
        ignore = torch.full_like(target, IGNORE)
        inner = torch.where(mask, data, x_u)  # labelled box in unlabelled surroundings
        outer = torch.where(mask, x_u, data)  # unlabelled box in labelled surroundings
        real = torch.cat([torch.where(mask, target, ignore), torch.where(mask, ignore, target)])
        taught = torch.cat([torch.where(mask, ignore, y_u), torch.where(mask, y_u, ignore)])
        rows = slice(0, 2 * b)
        return torch.cat([inner, outer]), [Term(rows, self._scaled(real), False),
                                           Term(rows, self._scaled(taught), True)]

    def loss(self, loss_fn: Callable, output: Any, terms: Sequence[Term], progress: float) -> torch.Tensor:
        """The step's loss: the labelled terms plus the ramped weight times the teacher-target terms."""
        w = rampup_weight(self.weight, progress, self.rampup)
        total = None
        for term in terms:
            part = [o[term.rows] for o in output] if isinstance(output, (list, tuple)) else output[term.rows]
            value = loss_fn(part, term.targets) * (w if term.unlabelled else 1.0)
            total = value if total is None else total + value
        return total

    @torch.no_grad()
    def update_teacher(self, student: torch.nn.Module) -> None:
        """``teacher = decay x teacher + (1 - decay) x student``, parameter by parameter (buffers copied)."""
        t_params = [p for p in self.teacher.parameters()]
        s_params = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(t_params, self.ema_decay)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - self.ema_decay)
        for t, s in zip(self.teacher.buffers(), student.buffers()):
            t.copy_(s)

    def state_dict(self) -> dict:
        return self.teacher.state_dict()
