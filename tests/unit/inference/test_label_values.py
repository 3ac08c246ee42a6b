"""The label index -> source value table (a dataset's ``source_label_values``), one for ``predict`` and the
server."""

from __future__ import annotations

import numpy as np

from autoseg.inference import outputs, run
from autoseg.workflow import serving


def test_one_table_maps_label_indices_to_the_source_values():
    seg = np.array([[0, 1], [2, 1]], np.uint8)
    table = outputs.label_value_table((0, 255, 128))
    assert table.dtype == np.uint8 and table[seg].tolist() == [[0, 255], [128, 255]]
    wide = outputs.label_value_table((0, 1000))
    assert wide.dtype == np.uint16 and wide[seg[:1]].tolist() == [[0, 1000]]
    assert outputs.label_value_table(None) is None
    assert run.label_value_table is serving.label_value_table is outputs.label_value_table
