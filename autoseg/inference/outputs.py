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


def label_value_table(values: Sequence[int] | None) -> np.ndarray | None:
    """Look-up table from label index to the value written for it (a dataset's ``source_label_values``, e.g.
    ``(0, 255)`` for a 0/255 mask): ``table[seg]`` is the label map in the source's values. uint8 when every value
    fits, else uint16; ``None`` for ``None`` (labels are written as they are).

    Examples
    --------
    >>> label_value_table((0, 255))[np.array([1, 0, 1])]
    array([255,   0, 255], dtype=uint8)
    >>> label_value_table((0, 1000)).dtype, label_value_table(None)
    (dtype('uint16'), None)
    """
    if values is None:
        return None
    return np.asarray(values, dtype=np.uint8 if max(values) <= 255 else np.uint16)
