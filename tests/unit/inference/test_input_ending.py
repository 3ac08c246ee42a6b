"""A 2D model segments a folder of another 2D format; a 3D model keeps its dataset's ending."""

from autoseg.inference.run import input_ending


def test_input_ending(tmp_path):
    (tmp_path / "a_0000.png").write_bytes(b"")
    (tmp_path / "b_0000.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert input_ending(tmp_path, ".tif") == ".png"
    assert input_ending(tmp_path, ".png") == ".png"
    assert input_ending(tmp_path, ".nii.gz") == ".nii.gz"  # volumes: the dataset's ending only
    (tmp_path / "c_0000.tif").write_bytes(b"")
    assert input_ending(tmp_path, ".tif") == ".tif"  # the dataset's own ending wins when present
    assert input_ending(tmp_path / "missing", ".tif") == ".tif"
