"""``autoseg evaluate --regions``: BraTS-style regions scored as unions of labels, from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import AutosegError
from autoseg.evaluation.folder import evaluate_folder, parse_regions
from autoseg.io.image import Geometry, write_image

G = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _pair(tmp_path):
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:8, 2:8] = 2   # oedema
    ref[1:3, 4:6, 4:6] = 4   # enhancing
    pred = ref.copy()
    pred[pred == 2] = 1      # wrong label inside the whole tumour: label Dice suffers, the region does not
    for d, a in (("pred", pred), ("ref", ref)):
        (tmp_path / d).mkdir()
        write_image(a, G, tmp_path / d / "c1.nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


def test_regions_are_unions_of_labels(tmp_path, capsys):
    pred, ref = _pair(tmp_path)
    regions = parse_regions(["whole tumour=1,2,3,4", "tumour core=1,3,4", "enhancing tumour=4"])
    summary = evaluate_folder(pred, ref, regions=regions, progress=False)
    assert summary.labels == (1, 2, 3) and summary.regions["1"] == (1, 2, 3, 4)
    assert summary.mean["1"].dice == pytest.approx(1.0) and summary.mean["3"].dice == pytest.approx(1.0)
    assert summary.mean["2"].dice < 0.5  # tumour core: the predicted 1s are false positives there
    assert main(["evaluate", str(pred), str(ref), "--regions", "whole tumour=1,2,3,4", "enhancing tumour=4"]) == 0
    out = capsys.readouterr().out
    assert "whole tumour" in out and "region" in out
    saved = json.loads((pred / "summary.json").read_text())
    assert saved["label_names"] == {"1": "whole tumour", "2": "enhancing tumour"}


@pytest.mark.parametrize("bad", ["whole", "whole=", "whole=a,b", "whole=0,1"])
def test_region_syntax_errors(bad):
    with pytest.raises(AutosegError, match="NAME=LABEL"):
        parse_regions([bad])
