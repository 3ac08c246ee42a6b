"""Sliding-window prediction of a whole image with Gaussian tile weighting and mirror test-time augmentation.

Memory stays bounded by the image: one ``(num_classes, *spatial)`` float32 logit accumulator and one
``spatial`` weight accumulator, on the accelerator when they fit there, else on the CPU. The network sees tiles
and their mirrorings together, as many per forward pass as :data:`PASS_VOXELS` allows (a small patch at batch 1
leaves most of a CPU's or GPU's width idle; a large one already fills it), and each result is added in place, never
all kept.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Sequence

import numpy as np
import torch
from torch import nn

from autoseg.inference.tiling import gaussian_importance, num_tiles, padding_for, tile_slices

PRECISIONS = ("fp32", "bf16")

#: Input voxels (tiles x mirrorings x patch voxels) one forward pass takes at most, unless a single tile is larger.
#: A 3D U-Net in inference holds about 0.5 kB of activations per input voxel at its widest (32 channels, float32,
#: skip + upsampled + output), so 2**20 voxels is ~0.5 GB: Hippocampus's 40x56x40 patch with its 8 mirrorings goes
#: in one pass, BraTS's 128^3 patch one mirroring at a time.
PASS_VOXELS = 2 ** 20

#: The accumulators go on the accelerator only when they take at most this fraction of its free memory; the rest
#: is left for the network's activations.
_DEVICE_MEMORY_FRACTION = 0.5


def predict_logits(network: nn.Module, image: np.ndarray | torch.Tensor, patch_size: Sequence[int],
                   num_classes: int, *, step: float = 0.5, mirror_axes: Sequence[int] | None = None,
                   device: str | torch.device = "cpu", precision: str = "fp32", batch_size: int | None = None,
                   gaussian: bool = True, progress: bool = False,
                   results_device: str | torch.device | None = None) -> torch.Tensor:
    """Logits of a whole image, predicted tile by tile.

    Parameters
    ----------
    network
        Maps ``(B, C, *patch_size)`` to ``(B, num_classes, *patch_size)`` logits (or a list of outputs, deep
        supervision, whose element 0 is the full-resolution one). It is moved to ``device`` and run in eval mode
        under ``torch.inference_mode``; its train/eval mode is restored afterwards.
    image
        ``(C, z, y, x)`` (or ``(C, y, x)`` for a 2D network on 2D images), preprocessed, float. With a 2D
        ``patch_size`` and a ``(C, z, y, x)`` image, each slice along ``z`` is predicted by the 2D network (see
        :func:`predict_logits_2d_slices`).
    patch_size
        Tile shape, voxels: the network's training patch. Images smaller than it are zero-padded (centred).
    num_classes
        Output channels of the network, background included.
    step
        Distance between neighbouring tiles as a fraction of the patch (0.5: tiles overlap by half).
    mirror_axes
        Spatial axes of the patch (0 = first spatial axis) to mirror for test-time augmentation: the logits are
        averaged over every combination of these flips (``2 ** len(mirror_axes)`` forward passes per tile).
        ``None`` or ``()``: no mirroring.
    device
        Where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    precision
        ``"fp32"``, or ``"bf16"`` (autocast: faster on recent GPUs and CPUs with bf16 units; logits are
        accumulated in float32 either way).
    batch_size
        Network inputs per forward pass: tiles and their mirrorings, in that order (a tile's mirrorings may span
        passes). ``None``: as many as :data:`PASS_VOXELS` allows, at least one.
    gaussian
        Weight each tile's logits with :func:`~autoseg.inference.tiling.gaussian_importance` (else uniformly).
    progress
        Show progress over tiles (:func:`autoseg.progress.bar`).
    results_device
        Where the accumulators live. ``None``: on ``device`` when they fit in half of its free memory (an
        out-of-memory error there falls back to the CPU), else on the CPU.

    Returns
    -------
    torch.Tensor
        ``(num_classes, *image.shape[1:])`` float32 logits, on the accumulators' device.
    """
    spatial_dims = len(patch_size)
    if np.ndim(image) == spatial_dims + 2:
        return predict_logits_2d_slices(network, image, patch_size, num_classes, step=step, mirror_axes=mirror_axes,
                                        device=device, precision=precision, batch_size=batch_size,
                                        gaussian=gaussian, progress=progress, results_device=results_device)
    if np.ndim(image) != spatial_dims + 1:
        raise ValueError(f"image of shape {tuple(image.shape)} does not fit patch {tuple(patch_size)}: expected "
                         f"(C, *spatial) with {spatial_dims} spatial axes (or {spatial_dims + 1} for 2D slices)")
    return _predict(network, image, tuple(int(p) for p in patch_size), num_classes, False, step, mirror_axes,
                    device, precision, batch_size, gaussian, progress, results_device)


def predict_logits_2d_slices(network: nn.Module, image: np.ndarray | torch.Tensor, patch_size: Sequence[int],
                             num_classes: int, *, step: float = 0.5, mirror_axes: Sequence[int] | None = None,
                             device: str | torch.device = "cpu", precision: str = "fp32",
                             batch_size: int | None = None,
                             gaussian: bool = True, progress: bool = False,
                             results_device: str | torch.device | None = None) -> torch.Tensor:
    """Logits of a 3D volume from a 2D network: every slice along axis ``z`` is tiled in-plane and predicted.

    Tiles of different slices share batches. Parameters and return value as :func:`predict_logits`, except:

    Parameters
    ----------
    image
        ``(C, z, y, x)``.
    patch_size
        2D tile ``(py, px)`` in the ``(y, x)`` plane.
    mirror_axes
        Axes of the 2D patch: 0 mirrors ``y``, 1 mirrors ``x`` (the slice axis is never mirrored).
    """
    if np.ndim(image) != 4 or len(patch_size) != 2:
        raise ValueError(f"2D slice prediction needs a (C, z, y, x) image and a 2D patch, got image shape "
                         f"{tuple(image.shape)} and patch {tuple(patch_size)}")
    return _predict(network, image, tuple(int(p) for p in patch_size), num_classes, True, step, mirror_axes,
                    device, precision, batch_size, gaussian, progress, results_device)


def _predict(network, image, patch, num_classes, slices, step, mirror_axes, device, precision, batch_size,
             gaussian, progress, results_device) -> torch.Tensor:
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if batch_size is None:
        batch_size = max(1, PASS_VOXELS // int(np.prod(patch)))
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    axes = tuple(sorted(set(int(a) for a in (mirror_axes or ()))))
    if any(a < 0 or a >= len(patch) for a in axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} must be spatial axes of the patch, 0..{len(patch) - 1}")
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    image = image.float()

    padded, unpad = _pad(image, patch)
    if results_device is not None:
        targets = [torch.device(results_device)]
    elif device.type == "cpu":
        targets = [device]
    elif _fits(device, padded, num_classes):
        targets = [device, torch.device("cpu")]
    else:
        targets = [torch.device("cpu")]

    was_training = network.training
    network.to(device)
    network.eval()
    try:
        for i, target in enumerate(targets):
            if i > 0:
                torch.cuda.empty_cache()  # return the failed attempt's accumulators before retrying on the CPU
            try:
                logits = _accumulate(network, padded, patch, num_classes, slices, step, axes, device, precision,
                                     batch_size, gaussian, progress, target)
                break
            except torch.cuda.OutOfMemoryError:
                if i + 1 == len(targets):
                    raise
    finally:
        network.train(was_training)
    if padded is image:
        return logits
    return logits[(slice(None), *unpad)].clone()  # clone: do not keep the padded buffer alive


def _pad(image: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the trailing axes up to the patch (centred); returns the padded image and the spatial slices
    that undo it."""
    pads = padding_for(tuple(image.shape), patch)[1:]
    unpad = tuple(slice(b, b + n) for (b, _), n in zip(pads, image.shape[1:]))
    if not any(b or a for b, a in pads):
        return image, unpad
    padded = image.new_zeros((image.shape[0], *(n + b + a for n, (b, a) in zip(image.shape[1:], pads))))
    padded[(slice(None), *unpad)] = image
    return padded, unpad


def _fits(device: torch.device, image: torch.Tensor, num_classes: int) -> bool:
    """Whether image, logit and weight accumulators (float32) fit in the allowed share of free device memory."""
    voxels = int(np.prod(image.shape[1:], dtype=np.int64))
    need = 4 * voxels * (num_classes + 1 + image.shape[0])
    if device.type != "cuda":
        return True  # no portable free-memory query; an out-of-memory error falls back to the CPU
    free, _ = torch.cuda.mem_get_info(device)
    return need <= _DEVICE_MEMORY_FRACTION * free


def _tiles(spatial: tuple[int, ...], patch: tuple[int, ...], step: float, slices: bool):
    """Tile index tuples over the spatial axes (for 2D slices: slice index, then in-plane slices)."""
    if not slices:
        return tile_slices(spatial, patch, step), num_tiles(spatial, patch, step)
    per_slice = list(tile_slices(spatial[1:], patch, step))
    return ((z, *t) for z in range(spatial[0]) for t in per_slice), spatial[0] * len(per_slice)


@torch.inference_mode()
def _accumulate(network, image, patch, num_classes, slices, step, axes, device, precision, batch_size, gaussian,
                progress, target) -> torch.Tensor:
    spatial = tuple(image.shape[1:])
    logits = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=target)
    weights = torch.zeros(spatial, dtype=torch.float32, device=target)
    if gaussian:
        weight = torch.from_numpy(gaussian_importance(patch)).to(target)
    else:
        weight = torch.ones(patch, dtype=torch.float32, device=target)
    source = image.to(target) if target == device else image  # slicing tiles on the device avoids copies
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    flips = mirror_flips(axes)
    tiles, total = _tiles(spatial, patch, step, slices)
    work = ((t, flip) for t in tiles for flip in flips)  # each tile's mirrorings, one network input each
    share = weight / len(flips)  # each mirroring adds its share of the tile's weighted logits: their mean
    bar = None
    if progress:
        from autoseg.progress import bar as progress_bar

        bar = progress_bar(total, "sliding window", "tile")
    try:
        for batch in _batched(work, batch_size):
            x = torch.stack([_flip(source[(slice(None), *t)], flip, 1) for t, flip in batch]).to(device)
            with autocast:
                pred = _forward(network, x)
            if pred.shape != (len(batch), num_classes, *patch):
                raise ValueError(f"network output has shape {tuple(pred.shape)}, expected "
                                 f"{(len(batch), num_classes, *patch)} for input {tuple(x.shape)}")
            pred = pred.to(target, torch.float32)
            for p, (t, flip) in zip(pred, batch):
                logits[(slice(None), *t)].addcmul_(_flip(p, flip, 1), share)  # in place: no weighted copy
                if flip == ():  # every tile has one unflipped input: its weight counts once
                    weights[t] += weight
            if bar is not None:
                bar.update(sum(flip == () for _, flip in batch))
    finally:
        if bar is not None:
            bar.close()
    logits /= weights  # every voxel is covered by at least one tile, and the weights have no zeros
    return logits


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of flips of the spatial ``axes`` (0 = first spatial axis), the unflipped input first."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(tuple(axes), r)]


def _flip(x: torch.Tensor, flip: tuple[int, ...], first_spatial: int) -> torch.Tensor:
    """``x`` flipped along the spatial axes ``flip``, which start at axis ``first_spatial`` of ``x``."""
    return torch.flip(x, [a + first_spatial for a in flip]) if flip else x


def _forward(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):
        out = out[0]  # deep supervision: the full-resolution output comes first
    return out.float()


def _batched(items, n: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
