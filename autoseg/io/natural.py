"""2D image files (PNG, TIFF, JPEG, BMP, GIF) as autoseg arrays: a one-slice volume ``(C, 1, y, x)``.

Photographs, fundus images, dermoscopy, endoscopy, histology tiles and microscopy come as natural image files,
not as medical volumes. They are read with Pillow (SimpleITK for the TIFF pixel types Pillow cannot decode, such as
16-bit RGB) and enter autoseg as volumes of one slice, so everything downstream (fingerprint, planning, which then
plans the ``2d`` configuration only, preprocessing, training, inference) sees the usual ``(C, z, y, x)`` arrays:

* grey images (8, 16 or 32 bit, float) are one channel; RGB and RGBA images three (alpha is dropped), in R, G, B
  order; palette images take their palette's colours (a grey palette gives one channel);
* the slice axis gets the spacing :data:`SLICE_SPACING` (nnU-Net's 999: never resampled, always the first axis
  after transposition); the pixel spacing is 1 x 1 unless a sidecar ``<file stem>.json`` holding
  ``{"spacing": [row_mm, column_mm]}`` or the TIFF's own resolution in centimetres says otherwise (inch
  resolutions are not used: 72 or 96 dpi is what photo software writes when it knows nothing);
* label maps must be grey (one value per pixel); they are written back as 8-bit (16-bit when a value exceeds 255)
  grey files in the requested format. JPEG is lossy and cannot hold a label map: :func:`output_ending` maps it to
  PNG.

Multi-page TIFF files are 3D stacks and stay with SimpleITK (:mod:`autoseg.io.image`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.schema.base import atomic_path

ENDINGS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
LOSSY_ENDINGS = (".jpg", ".jpeg")
SLICE_SPACING = 999.0
_FORMAT = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".gif": "GIF"}
_GREY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N", "LA", "La", "PA")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


def has_natural_ending(path: Path | str) -> bool:
    """Whether a file name ends in a 2D image format (PNG, TIFF, JPEG, BMP, GIF)."""
    return str(path).lower().endswith(ENDINGS)


def output_ending(ending: str) -> str:
    """The ending a label map is written in for images of ``ending``: the same, but PNG for lossy JPEG.

    Examples
    --------
    >>> output_ending(".tif"), output_ending(".JPG"), output_ending(".nii.gz")
    ('.tif', '.png', '.nii.gz')
    """
    return ".png" if ending.lower() in LOSSY_ENDINGS else ending


@dataclass(frozen=True)
class NaturalHeader:
    """What a 2D image file holds, read without decoding its pixels.

    Attributes
    ----------
    size
        ``(y, x)``: rows and columns, pixels.
    channels
        1 (grey) or 3 (colour; alpha is not counted).
    mode
        Pillow's pixel mode (``"L"``, ``"RGB"``, ``"I;16"`` ...), or ``"sitk"`` for files only SimpleITK decodes.
    spacing
        ``(y, x)`` pixel size, mm.
    """

    size: tuple[int, int]
    channels: int
    mode: str
    spacing: tuple[float, float]

    @property
    def description(self) -> str:
        """``"RGB image"`` / ``"grey image"``, for messages."""
        return "RGB image" if self.channels == 3 else "grey image"


def is_2d_file(path: Path) -> bool:
    """Whether ``path`` is read by this module: a natural-image ending, and (TIFF) a single page.

    A multi-page TIFF is a 3D stack and stays with SimpleITK, as do files whose ending is not a 2D format.
    """
    name = str(path).lower()
    if not name.endswith(ENDINGS):
        return False
    if not name.endswith((".tif", ".tiff")):
        return True
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) == 1
    except (OSError, UnidentifiedImageError, ValueError):
        return _sitk_dimension(path) == 2


def _sitk_info(path: Path):
    """SimpleITK's reader after reading the header, or ``None`` when it cannot."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def _sitk_dimension(path: Path) -> int | None:
    reader = _sitk_info(path)
    return None if reader is None else reader.GetDimension()


def _is_grey_palette(im) -> bool:
    palette = im.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(rgb.size == 0 or (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _channels_of(im, label: bool = False) -> int:
    if im.mode in _GREY_MODES:
        return 1
    if im.mode == "P":
        return 1 if label or _is_grey_palette(im) else 3
    if im.mode in _COLOUR_MODES:
        return 3
    raise AutosegError(f"{im.filename}: pixel mode {im.mode!r} is not supported (grey, RGB or RGBA expected)")


def _file_spacing(path: Path, im) -> tuple[float, float] | None:
    """Pixel size stated by the file: TIFF resolution in centimetres (unit 3), else ``None``."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or tags.get(296) != 3:
        return None
    try:
        xres, yres = float(tags.get(282)), float(tags.get(283))
    except (TypeError, ValueError):
        return None
    if not (xres > 0 and yres > 0 and np.isfinite(xres) and np.isfinite(yres)):
        return None
    return 10.0 / yres, 10.0 / xres  # pixels per cm -> mm per pixel, (y, x)


def sidecar(path: Path) -> Path:
    """``<folder>/<file name without its ending>.json``: where a 2D image's spacing may be given."""
    path = Path(path)
    name = path.name
    for e in ENDINGS:
        if name.lower().endswith(e):
            return path.with_name(name[: -len(e)] + ".json")
    return path.with_suffix(".json")


def _sidecar_spacing(path: Path) -> tuple[float, float] | None:
    side = sidecar(path)
    if not side.is_file():
        return None
    try:
        spacing = json.loads(side.read_text(encoding="utf-8"))["spacing"]
        sp = tuple(float(v) for v in spacing)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AutosegError(f"{side}: expected {{\"spacing\": [row_mm, column_mm]}} ({type(e).__name__}: {e})"
                           ) from None
    if len(sp) == 3:  # nnU-Net's TIFF sidecars give (z, y, x); a 2D image uses the last two
        sp = sp[1:]
    if len(sp) != 2 or not all(np.isfinite(v) and v > 0 for v in sp):
        raise AutosegError(f"{side}: 'spacing' must be two positive numbers [row_mm, column_mm], found {spacing!r}")
    return sp


def read_natural_header(path: Path, label: bool = False) -> NaturalHeader:
    """Size, channels, mode and spacing of a 2D image file (pixels are not decoded).

    ``label``: the file is a label map or mask. A palette file then has one channel whatever its palette: with a
    grey palette its grey values (what a viewer shows: DRIVE's 0/255 masks), with a colour palette its palette
    indices (the Pascal VOC convention: the index is the class, the colours are only for display).

    Raises
    ------
    AutosegError
        Not a readable 2D image, an unsupported pixel mode, an animated GIF / multi-page file, a bad sidecar.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames != 1:
                raise AutosegError(f"{path}: {frames} frames (an animation or a stack); a 2D image has one")
            channels, mode = _channels_of(im, label), im.mode
            size = (int(im.size[1]), int(im.size[0]))
            spacing = _file_spacing(path, im)
            if channels == 3 and _deep_colour(im):
                mode = "sitk"  # Pillow would decode 16-bit colour as 8-bit, dropping the low bytes
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        sitk_header = _sitk_header(path)
        if sitk_header is None:
            raise AutosegError(f"{path}: cannot be read as an image ({_reason(e)})") from None
        size, channels = sitk_header
        mode, spacing = "sitk", None
    side = _sidecar_spacing(path)
    return NaturalHeader(size, channels, mode, side or spacing or (1.0, 1.0))


def _deep_colour(im) -> bool:
    """A colour TIFF with more than 8 bits per sample (Pillow has no mode for it)."""
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if bits is None:
        return False
    bits = bits if isinstance(bits, tuple) else (bits,)
    return any(int(b) > 8 for b in bits)


def _sitk_header(path: Path) -> tuple[tuple[int, int], int] | None:
    """``((y, x), channels)`` of a 2D file SimpleITK reads and Pillow does not (16-bit RGB TIFF ...)."""
    reader = _sitk_info(path)
    if reader is None or reader.GetDimension() != 2:
        return None
    comps = reader.GetNumberOfComponents()
    w, h = reader.GetSize()
    return (int(h), int(w)), (1 if comps in (1, 2) else 3)


def _reason(e: BaseException) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    if text.startswith("cannot identify image file"):
        return "unknown file format, or a corrupt file"
    return text[:200]


def read_natural(path: Path, label: bool = False) -> tuple[np.ndarray, NaturalHeader]:
    """Decode a 2D image file completely (``label``: as a label map or mask, see :func:`read_natural_header`).

    Returns
    -------
    array
        ``(C, y, x)`` in the file's pixel type (uint8, uint16, int32, float32; bool as uint8), C = 1 or 3.
    header
        As :func:`read_natural_header`.

    Raises
    ------
    AutosegError
        The file cannot be decoded (truncated, corrupt), one line naming it.
    """
    from PIL import Image, UnidentifiedImageError

    header = read_natural_header(path, label)
    if header.mode == "sitk":
        return _read_with_sitk(path, header), header
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: a truncated or corrupt file fails here, not later
            if im.mode == "P" and label and not _is_grey_palette(im):
                pass  # palette indices are the classes
            elif im.mode == "P" or im.mode == "PA":
                im = im.convert("L" if header.channels == 1 else "RGB")
            elif im.mode in ("LA", "La"):
                im = im.convert("L")
            elif im.mode in _COLOUR_MODES and im.mode != "RGB":
                im = im.convert("RGB")  # alpha dropped; CMYK, YCbCr ... as RGB
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise AutosegError(f"{path}: pixel data cannot be read ({_reason(e)})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr), header


def _read_with_sitk(path: Path, header: NaturalHeader) -> np.ndarray:
    import SimpleITK as sitk

    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        from autoseg.io.image import itk_error_reason

        raise AutosegError(f"{path}: pixel data cannot be read ({itk_error_reason(e)})") from None
    if arr.ndim == 2:
        return arr[None]
    arr = np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr[:1] if header.channels == 1 else arr[:3])


def write_natural(array: np.ndarray, path: Path) -> None:
    """Write a ``(y, x)`` label map or grey image, or a ``(3, y, x)`` RGB image, atomically.

    Integer label maps are stored as 8-bit grey (16-bit when a value exceeds 255; PNG and TIFF only).

    Raises
    ------
    ValueError
        A lossy (JPEG) or unknown ending, or values the format cannot hold.
    """
    from PIL import Image

    path = Path(path)
    ending = next((e for e in _FORMAT if path.name.lower().endswith(e)), None)
    if ending is None:
        raise ValueError(f"{path}: cannot write a label map as {path.suffix or 'this format'} "
                         f"(lossless 2D formats: {', '.join(_FORMAT)})")
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 3:
        if arr.dtype != np.uint8:
            raise ValueError(f"{path}: RGB images are written as 8-bit, got {arr.dtype}")
        im = Image.fromarray(np.ascontiguousarray(np.moveaxis(arr, 0, -1)), "RGB")
    elif arr.ndim == 2:
        if np.issubdtype(arr.dtype, np.floating):
            if ending in (".tif", ".tiff"):
                im = Image.fromarray(arr.astype(np.float32), "F")
            else:
                raise ValueError(f"{path}: float pixels can only be written as TIFF")
        else:
            lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            if lo < 0 or hi > 65535 or (hi > 255 and ending in (".bmp", ".gif")):
                raise ValueError(f"{path}: values {lo}..{hi} do not fit an 8-bit{'' if ending in ('.bmp', '.gif') else ' or 16-bit'} "
                                 f"{_FORMAT[ending]} file")
            im = Image.fromarray(arr.astype(np.uint8), "L") if hi <= 255 else Image.fromarray(arr.astype(np.uint16))
    else:
        raise ValueError(f"{path}: expected a (y, x) or (3, y, x) array, got shape {arr.shape}")
    with atomic_path(path, keep_suffix=True) as tmp:
        options = {"compression": "tiff_lzw"} if _FORMAT[ending] == "TIFF" else {}
        im.save(tmp, format=_FORMAT[ending], **options)
