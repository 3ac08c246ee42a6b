"""2D image files: every format round-trips (size, values, channel order), RGB vs grey, 16-bit, spacing sidecars,
and a malformed 2D dataset table with one line per problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoseg.errors import AutosegError, DatasetError
from autoseg.io import natural
from autoseg.io.dataset_json import read_dataset_spec
from autoseg.io.image import read_header, read_image, read_label, write_image
from autoseg.io.verify import load_and_check_case

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (3, 13, 17), dtype=np.uint8)  # (C, y, x): 13 rows, 17 columns
GREY = RNG.integers(0, 256, (13, 17), dtype=np.uint8)


def _save(arr: np.ndarray, path: Path, **kw) -> Path:
    """Write with Pillow directly (what other tools produce), ``arr`` (y, x) or (3, y, x)."""
    im = Image.fromarray(np.moveaxis(arr, 0, -1) if arr.ndim == 3 else arr)
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("ending", [".png", ".tif", ".tiff", ".bmp"])
def test_rgb_lossless_formats_round_trip_in_channel_order(tmp_path, ending):
    path = _save(RGB, tmp_path / f"a{ending}")
    image, geometry = read_image([path])
    assert image.shape == (3, 1, 13, 17) and image.dtype == np.float32
    np.testing.assert_array_equal(image[:, 0], RGB)  # R, G, B in file order
    assert geometry.spacing == (natural.SLICE_SPACING, 1.0, 1.0)
    h = read_header(path)
    assert (h.dimension, h.size, h.channels) == (4, (1, 13, 17), 3)


def test_rgba_drops_alpha_and_jpeg_is_read(tmp_path):
    rgba = np.concatenate([RGB, np.full((1, 13, 17), 7, np.uint8)])
    image, _ = read_image([_save(rgba, tmp_path / "a.png")])
    np.testing.assert_array_equal(image[:, 0], RGB)
    smooth = np.stack([np.tile(np.linspace(0, 250, 17), (13, 1))] * 3).astype(np.uint8)
    smooth[1] //= 2
    image, _ = read_image([_save(smooth, tmp_path / "a.jpg", quality=95)])
    assert image.shape == (3, 1, 13, 17)
    assert np.abs(image[:, 0] - smooth.astype(np.float32)).mean() < 5  # lossy, but the same picture


@pytest.mark.parametrize("ending", [".png", ".tif", ".bmp", ".gif"])
def test_grey_and_label_round_trip(tmp_path, ending):
    label = (GREY > 128).astype(np.uint8) * 2
    write_image(label[None], None, tmp_path / f"l{ending}")
    arr, geometry = read_label(tmp_path / f"l{ending}")
    np.testing.assert_array_equal(arr, label[None])
    assert arr.shape == (1, 13, 17)
    image, _ = read_image([_save(GREY, tmp_path / f"g{ending}")])
    np.testing.assert_array_equal(image, GREY[None, None].astype(np.float32))


def test_16_bit_png_keeps_values(tmp_path):
    big = (RNG.integers(0, 65536, (13, 17))).astype(np.uint16)
    Image.fromarray(big).save(tmp_path / "b.png")
    image, _ = read_image([tmp_path / "b.png"])
    np.testing.assert_array_equal(image[0, 0], big.astype(np.float32))
    label = np.array([[0, 300], [70000 - 69000, 2]], np.uint16)  # > 255: written as 16-bit
    natural.write_natural(label, tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png")[0][0], label)
    with pytest.raises(ValueError, match="8-bit"):
        natural.write_natural(label, tmp_path / "l.bmp")


def test_palette_gif_with_grey_palette_is_one_channel_and_colour_palette_is_rgb(tmp_path):
    grey = Image.fromarray(GREY).convert("P")  # grey palette
    grey.save(tmp_path / "g.gif")
    assert read_header(tmp_path / "g.gif").channels == 1
    colour = Image.fromarray(np.moveaxis(RGB, 0, -1)).convert("P", palette=Image.ADAPTIVE, colors=16)
    colour.save(tmp_path / "c.gif")
    image, _ = read_image([tmp_path / "c.gif"])
    assert image.shape == (3, 1, 13, 17)


def test_jpeg_output_becomes_png_and_lossy_write_is_refused(tmp_path):
    assert natural.output_ending(".jpeg") == ".png" and natural.output_ending(".tif") == ".tif"
    with pytest.raises(ValueError, match="cannot write"):
        natural.write_natural(GREY, tmp_path / "x.jpg")


def test_spacing_from_sidecar_and_tiff_centimetres(tmp_path):
    path = _save(GREY, tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps({"spacing": [0.5, 0.25]}))
    assert read_header(path).geometry.spacing == (natural.SLICE_SPACING, 0.5, 0.25)
    cm = _save(GREY, tmp_path / "c.tif", resolution_unit=3, resolution=100.0)  # 100 px/cm = 0.1 mm
    assert read_header(cm).geometry.spacing[1:] == pytest.approx((0.1, 0.1))
    inch = _save(GREY, tmp_path / "i.tif", dpi=(72, 72))  # what photo software writes: not a pixel size
    assert read_header(inch).geometry.spacing[1:] == (1.0, 1.0)
    (tmp_path / "b.json").write_text(json.dumps({"spacing": [0, 1]}))
    with pytest.raises(AutosegError, match="positive"):
        read_header(_save(GREY, tmp_path / "b.png"))


def test_multipage_tiff_stays_a_3d_stack(tmp_path):
    frames = [Image.fromarray(GREY), Image.fromarray(GREY[::-1].copy())]
    frames[0].save(tmp_path / "s.tif", save_all=True, append_images=frames[1:])
    assert not natural.is_2d_file(tmp_path / "s.tif")
    assert read_header(tmp_path / "s.tif").size == (2, 13, 17)


# ---------------------------------------------------------------------------------------------------------------
# a malformed 2D dataset: each problem one line naming the file


def _dataset(root: Path, n: int = 3, channels=("R", "G", "B")) -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = RGB if len(channels) == 3 else GREY
        _save(img, root / "imagesTr" / f"c{i}_0000.png")
        _save((GREY > 128).astype(np.uint8), root / "labelsTr" / f"c{i}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": {"background": 0, "fg": 1},
        "numTraining": n, "file_ending": ".png"}))
    return root


def _problems(root: Path) -> list[str]:
    spec = read_dataset_spec(root)
    return [p for c in spec.training for p in load_and_check_case(root, spec, c).problems]


def test_good_rgb_dataset_has_one_file_per_case_and_no_problem(tmp_path):
    root = _dataset(tmp_path / "ok")
    spec = read_dataset_spec(root)
    assert spec.channel_names == ("R", "G", "B") and spec.training[0].images == ("imagesTr/c0_0000.png",)
    assert _problems(root) == []


@pytest.mark.parametrize("corrupt, expected", [
    (lambda r: _save((GREY[:10] > 128).astype(np.uint8), r / "labelsTr" / "c1.png"), "c1.png: size 17x10 (width x height) differs from"),
    (lambda r: _save(RGB, r / "labelsTr" / "c1.png"), "c1.png: label map is an RGB image"),
    (lambda r: _save(np.where(GREY > 128, 255, 0).astype(np.uint8), r / "labelsTr" / "c1.png"),
     "c1.png: label values {255} not declared"),
    (lambda r: _save(GREY, r / "imagesTr" / "c1_0000.png"), "c1_0000.png: grey image (1 channel), but dataset.json "
                                                              "declares 3 channels"),
    (lambda r: (r / "imagesTr" / "c1_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"),
     "c1_0000.png: cannot be read as an image"),
])
def test_malformed_2d_dataset_gives_one_line_naming_the_file(tmp_path, corrupt, expected):
    root = _dataset(tmp_path / "bad")
    corrupt(root)
    problems = _problems(root)
    assert len(problems) == 1 and expected in problems[0], problems


def test_truncated_png_is_caught_when_decoding(tmp_path):
    root = _dataset(tmp_path / "trunc")
    f = root / "imagesTr" / "c2_0000.png"
    f.write_bytes(f.read_bytes()[:-40])
    problems = _problems(root)
    assert len(problems) == 1 and "c2_0000.png" in problems[0] and "cannot be read" in problems[0]


def test_missing_label_partner_is_named(tmp_path):
    root = _dataset(tmp_path / "nolabel")
    (root / "labelsTr" / "c0.png").unlink()
    with pytest.raises(DatasetError, match="c0.png: missing label file"):
        read_dataset_spec(root)


def test_16_bit_rgb_tiff_is_read_through_simpleitk(tmp_path):
    import SimpleITK as sitk

    rgb16 = RNG.integers(0, 65536, (13, 17, 3)).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(rgb16, isVector=True), str(tmp_path / "c.tif"))
    h = read_header(tmp_path / "c.tif")
    assert (h.size, h.channels) == ((1, 13, 17), 3)
    image, _ = read_image([tmp_path / "c.tif"])
    np.testing.assert_array_equal(image[:, 0], np.moveaxis(rgb16, -1, 0).astype(np.float32))


def test_palette_label_with_a_colour_palette_holds_class_indices(tmp_path):
    """Pascal VOC style: the palette index is the class, the colours are for display."""
    classes = np.zeros((13, 17), np.uint8)
    classes[3:6, 4:9], classes[8:11, 2:5] = 1, 2
    im = Image.fromarray(classes, "P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "voc.png")
    arr, _ = read_label(tmp_path / "voc.png")
    np.testing.assert_array_equal(arr[0], classes)
    image, _ = read_image([tmp_path / "voc.png"])  # as an image it is the colours
    assert image.shape == (3, 1, 13, 17) and image[0, 0, 4, 5] == 128
