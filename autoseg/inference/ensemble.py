"""Several configurations' predictors as one: probabilities averaged in the raw image geometry, then argmax.

Each configuration has its own spacing and patch, so each member preprocesses the image itself and its
probabilities are brought back to the raw geometry before averaging (nnU-Net ensembles configurations the same way,
from their exported probabilities).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autoseg.errors import AutosegError
from autoseg.inference.outputs import to_segmentation
from autoseg.inference.predictor import Prediction, Predictor
from autoseg.io.image import Geometry


class EnsemblePredictor:
    """Averages the raw-geometry probabilities of several :class:`autoseg.inference.predictor.Predictor` s.

    Has the ``prepare`` / ``logits`` / ``finish`` interface of a Predictor (used by
    :func:`autoseg.inference.run.predict_folder`, which overlaps reading and writing with the network work); the
    intermediate values are tuples with one entry per member.

    Parameters
    ----------
    members
        Predictors of the same dataset (same channels and labels), typically one per configuration.
    """

    def __init__(self, members: Sequence):
        if not members:
            raise AutosegError("an ensemble needs at least one predictor")
        first = members[0].plans
        for m in members[1:]:
            if (tuple(m.plans.channel_names), tuple(m.plans.labels)) != (tuple(first.channel_names),
                                                                          tuple(first.labels)):
                raise AutosegError(f"cannot ensemble {getattr(m, 'configuration', '?')} with "
                                   f"{getattr(members[0], 'configuration', '?')}: their channels or labels differ")
        self.members = list(members)
        self.plans = first
        self.configuration = "+".join(str(getattr(m, "configuration", "?")) for m in self.members)

    def prepare(self, image: np.ndarray, geometry: Geometry, case_id: str = "case") -> tuple[tuple, tuple]:
        """Every member's ``(data, properties)`` of one raw image ``(C, z, y, x)``, as ``(datas, properties)``."""
        prepared = [m.prepare(image, geometry, case_id) for m in self.members]
        return tuple(d for d, _ in prepared), tuple(p for _, p in prepared)

    def logits(self, data: tuple) -> tuple:
        """Every member's averaged-over-folds logits of its preprocessed data."""
        return tuple(m.logits(d) for m, d in zip(self.members, data))

    def finish(self, logits: tuple, properties: tuple, probabilities: bool = False) -> Prediction:
        """Each member's probabilities in the raw geometry, averaged; argmax (regions: thresholded in class order).

        Returns
        -------
        Prediction
            ``(z, y, x)`` uint8 segmentation, and the averaged ``(K, z, y, x)`` float32 probabilities if asked.
        """
        total = None
        for m, lg, props in zip(self.members, logits, properties):
            p = m.finish(lg, props, probabilities=True).probabilities.astype(np.float32, copy=False)
            total = p if total is None else np.add(total, p, out=total)
        total /= len(self.members)
        order = self.plans.regions_class_order if self.plans.regions else None
        return Prediction(to_segmentation(total, order), total if probabilities else None)

    predict = Predictor.predict  # prepare -> logits -> finish, the same sequence for every predictor kind
