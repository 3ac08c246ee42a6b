"""Image and label files through SimpleITK, as numpy arrays in ``(C, z, y, x)`` order with their geometry.

SimpleITK reports spacing and sizes in ``(x, y, z)`` order while its arrays are ``(z, y, x)``; this module is the
one place that converts. Everything else in autoseg sees spacing in numpy axis order, in mm.

2D image files (PNG, single-page TIFF, JPEG, BMP, GIF) are read and written by :mod:`autoseg.io.natural` as
volumes of one slice: an RGB file is a multi-channel image like a 4D file, ``(3, 1, y, x)``.
"""

from __future__ import annotations

import errno

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.io import natural
from autoseg.schema.base import atomic_path


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxel grid sits in physical space.

    Attributes
    ----------
    spacing
        Voxel size per numpy axis ``(z, y, x)``, mm.
    origin
        Physical position of voxel 0 in ITK order ``(x, y, z)``, mm.
    direction
        Row-major 3x3 direction cosines in ITK order ``(x, y, z)``.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img: sitk.Image) -> "Geometry":
        """Geometry of the first three dimensions of a SimpleITK image (a 4D image's channel axis is ignored)."""
        dim = img.GetDimension()
        spacing = img.GetSpacing()[:3][::-1]
        origin = img.GetOrigin()[:3]
        d = np.asarray(img.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
        return cls(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                   tuple(float(v) for v in d.ravel()))

    @classmethod
    def of_2d(cls, spacing: Sequence[float]) -> "Geometry":
        """A 2D image's geometry: one slice of :data:`autoseg.io.natural.SLICE_SPACING`, ``spacing`` (y, x) mm."""
        return cls((natural.SLICE_SPACING, float(spacing[0]), float(spacing[1])), (0.0, 0.0, 0.0),
                   (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def apply_to(self, img: sitk.Image) -> None:
        """Stamp this geometry on a 3D SimpleITK image (in place)."""
        img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction))


def itk_error_reason(err: RuntimeError) -> str:
    """The useful part of a SimpleITK exception, one short line.

    SimpleITK messages start with a line naming its own source file (``Exception thrown in SimpleITK
    ImageFileReader_Execute: .../sitkImageReaderBase.cxx:99:``); the reason is the last line
    (``sitk::ERROR: ...`` / ``ITK ERROR: ImageFileReader(0x...): ...``).
    """
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    msg = lines[-1] if lines else "unknown error"
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        if prefix in msg:
            msg = msg.split(prefix, 1)[1].strip()
    head = msg.split(":", 1)[0]
    if ":" in msg and head.endswith(")") and "(0x" in head:  # "ImageFileReader(0x55d0...): reason"
        msg = msg.split(":", 1)[1].strip()
    if msg.startswith("Unable to determine ImageIO reader"):
        msg = "unknown file format, or a corrupt file"
    return msg[:200]


def _read(path: Path) -> sitk.Image:
    if not Path(path).is_file():
        raise AutosegError(f"{path}: file not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise AutosegError(f"{path}: cannot be read as an image ({itk_error_reason(e)})") from None


@dataclass(frozen=True)
class Header:
    """What a file's header says, without reading pixel data.

    Attributes
    ----------
    dimension
        3, or 4 for a multi-channel file.
    size
        Spatial size ``(z, y, x)``, voxels.
    channels
        Size of the 4th ITK dimension (1 for a 3D file).
    geometry
        Spacing, origin and direction of the spatial axes.
    """

    dimension: int
    size: tuple[int, ...]
    channels: int
    geometry: Geometry


def read_header(path: Path) -> Header:
    """Read an image file's header only.

    Raises
    ------
    AutosegError
        The file cannot be read as an image (one line naming it).
    """
    if natural.is_2d_file(path):
        h = natural.read_natural_header(path)
        return Header(4 if h.channels > 1 else 3, (1, *h.size), h.channels, Geometry.of_2d(h.spacing))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise AutosegError(f"{path}: cannot be read as an image ({itk_error_reason(e)})") from None
    dim = reader.GetDimension()
    d = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    geometry = Geometry(tuple(float(v) for v in reader.GetSpacing()[:3][::-1]),
                        tuple(float(v) for v in reader.GetOrigin()[:3]), tuple(float(v) for v in d.ravel()))
    size = tuple(int(v) for v in reader.GetSize())
    return Header(dim, size[:3][::-1], size[3] if dim == 4 else 1, geometry)


def read_image(paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """Read one case's image channels.

    Parameters
    ----------
    paths
        One 3D file per channel, or a single 4D file whose last ITK dimension holds the channels (or one 2D RGB
        file).

    Returns
    -------
    array
        ``(C, z, y, x)`` float32.
    geometry
        Geometry of the first file (callers that verify compare the channels' geometries separately).
    """
    channels = []
    geometry = None
    for p in paths:
        if natural.is_2d_file(Path(p)):
            arr, h = natural.read_natural(Path(p))
            geometry = geometry or Geometry.of_2d(h.spacing)
            channels.extend(arr[:, None].astype(np.float32, copy=False))  # (c, 1, y, x)
            continue
        img = _read(Path(p))
        if geometry is None:
            geometry = Geometry.of(img)
        arr = sitk.GetArrayFromImage(img)
        if img.GetDimension() == 4:
            channels.extend(arr.astype(np.float32, copy=False))  # (c, z, y, x) from a 4D file
        elif img.GetDimension() == 3:
            channels.append(arr.astype(np.float32, copy=False))
        else:
            raise AutosegError(f"{p}: {img.GetDimension()}D image, expected 3D (or 4D with channels)")
    return np.stack(channels), geometry


def read_label(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a label map as ``(z, y, x)``, in its stored dtype (the caller checks values are integers)."""
    if natural.is_2d_file(Path(path)):
        arr, h = natural.read_natural(Path(path), label=True)
        if h.channels != 1:
            raise AutosegError(f"{path}: label map is an RGB image, expected one grey value per pixel")
        return arr, Geometry.of_2d(h.spacing)
    img = _read(Path(path))
    if img.GetDimension() != 3:
        raise AutosegError(f"{path}: label map is {img.GetDimension()}D, expected 3D")
    return sitk.GetArrayFromImage(img), Geometry.of(img)


def _atomic_write_image(img: sitk.Image, path: Path, compress: bool) -> None:
    # the temporary name keeps the real ending so SimpleITK picks the same writer
    with atomic_path(Path(path), keep_suffix=True) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=compress)
        except RuntimeError as e:  # ITK's write errors (disk full ...) as the OSError they are, naming the file
            raise OSError(errno.EIO, f"cannot be written ({itk_error_reason(e)})", str(path)) from None


def write_image(array: np.ndarray, geometry: Geometry, path: Path, compress: bool = True) -> None:
    """Write ``(z, y, x)`` or ``(C, z, y, x)`` (as one 4D file, channels last in the file) atomically.

    A 2D ending (``.png``, ``.tif`` ...) takes one slice, ``(1, y, x)`` (or ``(3, 1, y, x)`` RGB), as a 2D file;
    its geometry is not stored (the format has none).
    """
    if natural.has_natural_ending(path) and array.ndim in (3, 4) and array.shape[-3] == 1:
        try:
            natural.write_natural(array[:, 0] if array.ndim == 4 else array[0], Path(path))
        except OSError as e:
            raise OSError(e.errno or errno.EIO, e.strerror or str(e), str(path)) from None
        return
    if array.ndim == 3:
        img = sitk.GetImageFromArray(array)
        geometry.apply_to(img)
    elif array.ndim == 4:
        img = sitk.JoinSeries([_with_geometry(sitk.GetImageFromArray(c), geometry) for c in array])
    else:
        raise ValueError(f"expected a 3D or 4D array, got shape {array.shape}")
    _atomic_write_image(img, path, compress)


def _with_geometry(img: sitk.Image, geometry: Geometry) -> sitk.Image:
    geometry.apply_to(img)
    return img
