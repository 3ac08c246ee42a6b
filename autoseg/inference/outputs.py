"""From network outputs to probabilities and label maps, for both kinds of output.

* Labels (softmax): one channel per label, background included; the label map is the argmax.
* Regions (sigmoid, nnU-Net's region-based training): one independent channel per region; the label map starts
  as background and, region after region, takes ``regions_class_order[r]`` wherever region ``r``'s probability
  exceeds 0.5 (later regions overwrite earlier ones: whole tumour, then tumour core, then enhancing tumour).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_probabilities(logits, regions: bool) -> np.ndarray:
    """``(K, ...)`` logits (a torch tensor) -> float32 probabilities: sigmoid per region, or softmax over labels
    (axis 0)."""
    import torch  # here: the label-map half of this module serves torch-free evaluation code

    logits = logits.float()
    return (torch.sigmoid(logits) if regions else torch.softmax(logits, dim=0)).numpy()


def to_segmentation(probabilities: np.ndarray, class_order: Sequence[int] | None) -> np.ndarray:
    """``(K, ...)`` probabilities -> uint8 label map (argmax, or the regions written in ``class_order``).

    Examples
    --------
    >>> p = np.array([[0.9, 0.9, 0.2], [0.1, 0.7, 0.1]])  # two regions over three voxels
    >>> to_segmentation(p, (1, 2)).tolist(), to_segmentation(p, None).tolist()
    ([1, 2, 0], [0, 0, 0])
    """
    if class_order is None:
        return probabilities.argmax(0).astype(np.uint8)
    seg = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for k, value in enumerate(class_order):
        seg[probabilities[k] > 0.5] = value
    return seg


def outside_values(channels: int, regions: bool) -> tuple[float, ...]:
    """Probabilities outside a case's crop box: certain background (label 0 for softmax, no region for sigmoid)."""
    return (0.0,) * channels if regions else (1.0,) + (0.0,) * (channels - 1)
