"""Small synthetic cases for the data-loading tests (in memory, a few hundred kB). Not a test module."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from autoseg.preprocessing.case import class_locations


class ArraySource:
    """A :class:`autoseg.data.sampling.CaseSource` (and ``CascadeSource``) over arrays in memory.

    Parameters
    ----------
    cases
        Case id -> ``(data (C, Z, Y, X), seg (1, Z, Y, X), locs)``.
    extra_segs
        Optional case id -> previous-stage segmentation ``(1, Z, Y, X)``; enables ``load_extra_seg``.
    """

    def __init__(self, cases: Mapping[str, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]],
                 extra_segs: Mapping[str, np.ndarray] | None = None):
        self._cases = dict(cases)
        self._extra = dict(extra_segs) if extra_segs is not None else None

    def case_ids(self) -> list[str]:
        return list(self._cases)

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        return self._cases[case_id]

    def load_extra_seg(self, case_id: str) -> np.ndarray:
        if self._extra is None:
            raise KeyError(f"no previous-stage segmentations were given to this source (case {case_id!r})")
        return self._extra[case_id]


def make_case(rng: np.random.Generator, shape=(20, 24, 22), channels=1, blobs=((1, 3), (2, 3)),
              outside_rows: int = 2) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """One case: noise data, cubic blobs of (label, edge) at random places, -1 in the first ``outside_rows``
    slices (outside the nonzero region)."""
    data = rng.normal(size=(channels, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), np.int8)
    for label, edge in blobs:
        lo = [int(rng.integers(outside_rows if a == 0 else 0, n - edge + 1)) for a, n in enumerate(shape)]
        seg[(0, *[slice(a, a + edge) for a in lo])] = label
    seg[0, :outside_rows] = -1
    return data, seg, class_locations(seg[0], int(seg.max()) + 1, np.random.default_rng(0))


def make_source(seed=0, n=5, **kw) -> ArraySource:
    rng = np.random.default_rng(seed)
    return ArraySource({f"case_{i:02d}": make_case(rng, **kw) for i in range(n)})
