"""Real data: plan -> a short training -> predict a few of Hippocampus' test images with their exact geometry."""

import pytest
import SimpleITK as sitk

from autoseg.cli import main

# slow: real data (../shared/data), plan + training + prediction
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_hippocampus_predictions_keep_the_input_geometry(tmp_path, hippocampus_raw):
    raw = hippocampus_raw
    ws = str(tmp_path / "ws")
    assert main(["plan", str(raw), "-w", ws, "-j", "2"]) == 0
    assert main(["train", "Hippocampus", "-w", ws, "-c", "3d_fullres", "-f", "0", "--epochs", "1",
                 "--iterations-per-epoch", "2", "--validation-iterations", "1", "--no-validation", "-j", "0"]) == 0
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    picked = sorted((raw / "imagesTs").glob("*.nii.gz"))[:3]
    for f in picked:
        (inputs / f.name).symlink_to(f)
    out = tmp_path / "pred"
    assert main(["predict", "Hippocampus", "-w", ws, "-i", str(inputs), "-o", str(out), "-c", "3d_fullres"]) == 0
    for f in picked:
        src, seg = sitk.ReadImage(str(f)), sitk.ReadImage(str(out / f.name))
        assert seg.GetSize() == src.GetSize()
        assert seg.GetSpacing() == src.GetSpacing()
        assert seg.GetOrigin() == src.GetOrigin()
        assert seg.GetDirection() == src.GetDirection()
        values = set(sitk.GetArrayViewFromImage(seg).ravel().tolist())
        assert values <= {0, 1, 2}
