"""Read one raw case once and check it: readability, channels, geometry agreement, finite intensities, label values.

:func:`load_and_check_case` is what the fingerprint worker calls per case: it returns the arrays it has read together
with every problem found, so statistics are computed on the same arrays without reading any file twice. Each
problem is one line ``"<file path>: <problem>"`` naming the offending file; nothing here raises for a bad file.

Headers are read first (``sitk.ImageFileReader.ReadImageInformation``) so that files with a wrong dimensionality,
vector pixels or an invalid spacing are reported without reading their pixel data; the pixel data of every other
file is then read exactly once.

NIfTI voxels (``.nii``, ``.nii.gz``) are read with nibabel; everything else (other formats, the header checks above,
all geometry) with SimpleITK. ITK's NIfTI reader turns NaN and infinite float voxels into 0 and silently zero-fills a
truncated file, so neither could be reported from its arrays; nibabel keeps the stored values, applies
``scl_slope``/``scl_inter`` scaling and raises on short voxel data or a broken gzip stream. The arrays are otherwise
those ITK gives (same order, pixel type and scaling arithmetic), so they match what :mod:`autoseg.io.image` reads
later, e.g. at inference.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.io import natural
from autoseg.io.image import Geometry, itk_error_reason
from autoseg.schema.dataset import IGNORE, CaseSpec, DatasetSpec

# Image and label must share their voxel grid. Spacing is compared relatively (rtol 1e-3): files written by
# different tools round spacings differently (float32 pixdim, 0.7999999 vs 0.8). The origin gets an absolute
# tolerance of 1e-3 mm plus 1e-4 of its magnitude: NIfTI stores origins as float32 (qoffset / srow), and the
# qform <-> sform conversions of common converters move scanner coordinates of a few hundred mm by up to ~1e-4 mm
# relative. Both terms stay far below a voxel (0.05 mm at 500 mm), so a real shift of the grid is never hidden.
# Direction cosines are unit-free: absolute 1e-3 (about 0.06 degrees).
SPACING_RTOL = 1e-3
ORIGIN_ATOL_MM = 1e-3
ORIGIN_RTOL = 1e-4
DIRECTION_ATOL = 1e-3


@dataclass(frozen=True)
class LoadedCase:
    """One case as read by :func:`load_and_check_case`.

    Attributes
    ----------
    image
        ``(C, z, y, x)`` float32, ``None`` when a channel file is unreadable or the channels cannot be assembled.
    label
        ``(z, y, x)`` int16, ``None`` for unlabelled cases, an unreadable label, or values that are not integers
        fitting int16.
    geometry
        Geometry of the (first) image file, ``None`` when it is unreadable.
    problems
        One line per problem, ``"<file path>: <problem>"``. When not empty the arrays must not be trusted.
    roi
        ``(z, y, x)`` bool region-of-interest mask (``True`` inside), ``None`` when the case has none.
    """

    image: np.ndarray | None
    label: np.ndarray | None
    geometry: Geometry | None
    problems: tuple[str, ...]
    roi: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _File:
    """Header facts of one file, then (if they allow it) its pixel array."""

    path: Path
    dimension: int
    size: tuple[int, ...]  # spatial size, numpy order (z, y, x)
    channels: int  # size of the 4th ITK dimension, 1 for a 3D file
    geometry: Geometry
    array: np.ndarray | None = None
    natural: natural.NaturalHeader | None = None  # a 2D image file (PNG, TIFF, ...): one slice
    label: bool = False  # read as a label map or mask

    @property
    def kind(self) -> str:
        """How the file is named in messages: ``"4D image"``, ``"RGB image"`` ..."""
        if self.natural is not None:
            return self.natural.description
        return f"{self.dimension}D image"


def load_and_check_case(raw_dir: Path, spec: DatasetSpec, case: CaseSpec) -> LoadedCase:
    """Read a case's image channels (and label) once and check them against each other and the dataset spec.

    Parameters
    ----------
    raw_dir
        The raw dataset folder as the user gave it (messages name files under it in that form).
    spec
        The dataset (channel count, declared labels).
    case
        The case; ``case.label`` is ``None`` for test cases, which get the same image checks.

    Returns
    -------
    LoadedCase
        The arrays read and every problem found (never raises for a bad file).
    """
    raw_dir = Path(raw_dir)
    problems: list[str] = []
    n = spec.num_channels
    paths = [raw_dir / rel for rel in case.images]
    if len(paths) not in (1, n):
        problems.append(f"{paths[0] if paths else raw_dir}: case {case.case_id!r} has {len(paths)} image files "
                        f"but dataset.json declares {n} channels")
        return LoadedCase(None, None, None, tuple(problems))
    label = _header(raw_dir / case.label, problems, label=True) if case.label is not None else None
    images, image = _load_images(paths, n, spec.channel_names, "dataset.json declares", problems)
    ref = images[0]
    if label is not None:
        if label.natural is not None and label.channels != 1:
            problems.append(f"{label.path}: label map is an RGB image, expected one grey value per pixel "
                            f"(the class value)")
        elif label.dimension != 3:
            problems.append(f"{label.path}: label map is {label.dimension}D "
                            f"({_fmt_size(label.size)} x {label.channels}), expected 3D")
        elif ref is not None:
            _compare_grids(label, ref, f"image ({ref.path.name})", problems)
    label_arr = None
    if label is not None and label.dimension == 3:
        label.array = _pixels(label, problems)
        if label.array is not None:
            label_arr = _check_label(label, spec.labels, problems, spec.ignore_label)
    roi = _load_roi(raw_dir / case.roi, ref, problems) if case.roi is not None else None
    return LoadedCase(image, label_arr, ref.geometry if ref is not None else None, tuple(problems), roi)


def load_and_check_roi(path: Path, image_file: Path) -> tuple[np.ndarray | None, list[str]]:
    """Read a region-of-interest mask and check it against its image (one of the case's image files).

    Returns
    -------
    roi
        ``(z, y, x)`` bool, ``True`` inside (nonzero values); ``None`` when it cannot be used.
    problems
        One line each naming the mask file.
    """
    problems: list[str] = []
    ref = _header(Path(image_file), problems)
    return _load_roi(Path(path), ref, problems), problems


def _load_roi(path: Path, ref: _File | None, problems: list[str]) -> np.ndarray | None:
    """A mask's voxels as bool after the checks: a single-channel map on the image's grid, finite, not empty."""
    f = _header(path, problems, label=True)
    if f is None:
        return None
    if f.channels != 1 or f.dimension != 3:
        problems.append(f"{path}: region-of-interest mask is {'an RGB' if f.natural else 'a multi-channel'} image, "
                        f"expected one value per voxel (nonzero inside)")
        return None
    if ref is not None:
        n = len(problems)
        _compare_grids(f, ref, f"image ({ref.path.name})", problems)
        if len(problems) > n:
            return None
    arr = _pixels(f, problems)
    if arr is None:
        return None
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        problems.append(f"{path}: region-of-interest mask contains NaN or infinite values")
        return None
    roi = arr != 0
    if not roi.any():
        problems.append(f"{path}: region-of-interest mask is empty (no nonzero voxel): nothing of the image would count")
        return None
    return roi


def load_and_check_images(paths: Sequence[Path], num_channels: int, channel_names: Sequence[str] = (),
                          expected_by: str = "the model expects") -> LoadedCase:
    """Read one case's image channels completely and check them, as :func:`load_and_check_case` checks a training
    case's images: readable, fully decodable (truncated or corrupt files are caught), 3D (or one 4D file holding
    every channel), the right number of channels, the channels on one voxel grid, finite intensities.

    Parameters
    ----------
    paths
        One 3D file per channel, or one 4D file with every channel.
    num_channels, channel_names
        What the dataset (or model) declares.
    expected_by
        Who declares it, for the messages (``"the model expects"``, ``"dataset.json declares"``).

    Returns
    -------
    LoadedCase
        ``image`` ``(C, z, y, x)`` float32 and ``geometry`` of the first file when ``problems`` is empty; never
        raises for a bad file.
    """
    problems: list[str] = []
    paths = [Path(p) for p in paths]
    if len(paths) not in (1, num_channels):
        return LoadedCase(None, None, None, (f"{paths[0]}: {len(paths)} image files for one case, {expected_by} "
                                             f"{num_channels} channel(s)",))
    images, image = _load_images(paths, num_channels, tuple(channel_names), expected_by, problems)
    ref = images[0]
    return LoadedCase(image if not problems else None, None, ref.geometry if ref is not None else None,
                      tuple(problems))


def array_problems(image, spacing: Sequence[float], num_channels: int, where: str) -> list[str]:
    """What is wrong with an image given as an array (the Python API, a server request), one line each naming
    ``where``; the checks :func:`load_and_check_images` makes of files.

    Parameters
    ----------
    image
        ``(C, z, y, x)`` intensities.
    spacing
        ``(z, y, x)`` mm.
    num_channels
        What the model expects.

    Examples
    --------
    >>> array_problems(np.zeros((1, 4, 4, 4), np.float32), (1, 1, 1), 1, "case")
    []
    >>> array_problems(np.full((2, 4, 4, 4), np.nan, np.float32), (1, 1, 0), 1, "case")  # doctest: +NORMALIZE_WHITESPACE
    ['case: 2 channel(s), the model expects 1', 'case: image contains 128 NaN voxel values (of 128); intensities
    must be finite', 'case: spacing (1, 1, 0) mm (z,y,x) must be positive and finite']
    """
    arr = np.asarray(image)
    if arr.ndim != 4:
        return [f"{where}: array of shape {arr.shape}, expected (C, z, y, x) with C = {num_channels}"]
    problems = []
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        return [f"{where}: array of type {arr.dtype}, expected real numbers"]
    if arr.shape[0] != num_channels:
        problems.append(f"{where}: {arr.shape[0]} channel(s), the model expects {num_channels}")
    if 0 in arr.shape:
        problems.append(f"{where}: empty image (shape {arr.shape})")
    else:
        _check_finite(arr, where, problems)
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not (np.isfinite(sp).all() and (sp > 0).all()):
        problems.append(f"{where}: spacing {_fmt(sp.ravel())} mm (z,y,x) must be positive and finite")
    return problems


def _load_images(paths: Sequence[Path], n: int, names: tuple[str, ...], expected_by: str, problems: list[str]
                 ) -> tuple[list[_File | None], np.ndarray | None]:
    """Headers, channel count, channel grids, then the voxels (read once) and their finiteness; the assembled
    ``(C, z, y, x)`` float32 image when every channel could be read."""
    images = [_header(p, problems) for p in paths]
    channels_ok = all(f is not None for f in images)
    for f in images:
        if f is not None and not _channels_match(f, n, len(paths), names, problems, expected_by):
            channels_ok = False
    ref = images[0]
    for f in images[1:]:
        if ref is not None and f is not None:
            _compare_grids(f, ref, f"channel 0 file ({ref.path.name})", problems)
    for f in images:
        if f is not None:
            f.array = _pixels(f, problems)
            if f.array is not None:
                _check_finite(f.array, f.path, problems)
    image = None
    if channels_ok and all(f.array is not None for f in images):
        parts = [f.array if f.dimension == 4 else f.array[None] for f in images]
        if len(parts) == 1:  # no copy beyond the dtype conversion (a 4D BraTS case is 70 MB)
            image = parts[0].astype(np.float32, copy=False)
        elif len({p.shape[1:] for p in parts}) == 1:
            image = np.concatenate(parts).astype(np.float32, copy=False)
    return images, image


# ---------------------------------------------------------------------------------------------------------------
# headers


def _header(path: Path, problems: list[str], label: bool = False) -> _File | None:
    """Header of one file via ``ReadImageInformation``; ``None`` (after reporting) when unusable. ``label``: a
    label map or mask (a 2D palette file then holds one value per pixel, see
    :func:`autoseg.io.natural.read_natural_header`)."""
    if not path.is_file():
        problems.append(f"{path}: {'a folder, not an image file' if path.is_dir() else 'file not found'}")
        return None
    if natural.is_2d_file(path):
        try:
            h = natural.read_natural_header(path, label)
        except AutosegError as e:
            problems.append(str(e))
            return None
        return _File(path, 4 if h.channels > 1 else 3, (1, *h.size), h.channels, Geometry.of_2d(h.spacing),
                     natural=h, label=label)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        problems.append(f"{path}: cannot be read as an image ({itk_error_reason(e)})")
        return None
    dim = reader.GetDimension()
    if dim not in (3, 4):
        problems.append(f"{path}: {dim}D image, expected 3D (or 4D with channels last)")
        return None
    comps = reader.GetNumberOfComponents()
    if comps != 1:
        problems.append(f"{path}: {comps} components per voxel (vector/RGB pixels), expected scalar voxels")
        return None
    size = reader.GetSize()
    geometry = Geometry.of(reader)  # reader has GetDimension/GetSpacing/GetOrigin/GetDirection like an image
    sp = np.asarray(geometry.spacing)
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        problems.append(f"{path}: spacing {_fmt(geometry.spacing)} mm (z,y,x) must be positive and finite")
        return None
    if not (np.all(np.isfinite(geometry.origin)) and np.all(np.isfinite(geometry.direction))):
        problems.append(f"{path}: origin {_fmt(geometry.origin)} or direction contains non-finite values")
        return None
    return _File(path, dim, tuple(int(s) for s in size[:3][::-1]), int(size[3]) if dim == 4 else 1, geometry)


def _channels_match(f: _File, n: int, nfiles: int, names: tuple[str, ...], problems: list[str],
                    expected_by: str = "dataset.json declares") -> bool:
    """One file per channel: each 3D. One file for several channels: 4D with exactly ``n`` channels."""
    declared = f"{expected_by} {n} channel{'s' if n > 1 else ''}" + (f" ({', '.join(names)})" if names else "")
    if f.natural is not None:
        if f.channels != n or (nfiles > 1 and f.channels > 1):
            what = "one file per case holding them" if n == 3 else f"{n} grey files per case, one per channel"
            problems.append(f"{f.path}: {f.kind} ({f.channels} channel{'s' if f.channels > 1 else ''}), but "
                            f"{declared}" + (f": {what}" if n != 1 else ""))
            return False
        return True
    if nfiles == n and n > 1 and f.dimension == 4:
        problems.append(f"{f.path}: 4D image with {f.channels} channels, but each channel file must be 3D "
                        f"({declared}, one file each)")
        return False
    if nfiles == 1 and n > 1 and f.dimension == 3:
        problems.append(f"{f.path}: 3D image (1 channel), but {declared}: expected one 4D file with {n} channels")
        return False
    if nfiles == 1 and f.dimension == 4 and f.channels != n:
        problems.append(f"{f.path}: 4D image with {f.channels} channels, but {declared}")
        return False
    return True


def _compare_grids(f: _File, ref: _File, what: str, problems: list[str]) -> None:
    """Report where ``f``'s voxel grid differs from ``ref``'s (size exact, geometry within tolerances).

    Two 2D image files are compared by size only: the formats store no position, and a label or mask takes the
    spacing of its image (a sidecar is only needed beside the image)."""
    if f.natural is not None and ref.natural is not None:
        if f.size != ref.size:
            problems.append(f"{f.path}: size {f.size[2]}x{f.size[1]} (width x height) differs from the {what}: "
                            f"{ref.size[2]}x{ref.size[1]}")
        return
    if f.size != ref.size:
        problems.append(f"{f.path}: size {_fmt_size(f.size)} (z,y,x) differs from the {what}: {_fmt_size(ref.size)}")
    a, b = f.geometry, ref.geometry
    if not np.allclose(a.spacing, b.spacing, rtol=SPACING_RTOL, atol=0):
        problems.append(f"{f.path}: spacing {_fmt(a.spacing)} mm (z,y,x) differs from the {what}: "
                        f"{_fmt(b.spacing)}")
    oa, ob = np.asarray(a.origin), np.asarray(b.origin)
    if np.any(np.abs(oa - ob) > ORIGIN_ATOL_MM + ORIGIN_RTOL * np.maximum(np.abs(oa), np.abs(ob))):
        problems.append(f"{f.path}: origin {_fmt(a.origin)} mm (x,y,z) differs from the {what}: {_fmt(b.origin)} "
                        f"(by up to {np.max(np.abs(oa - ob)):.4g} mm)")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=DIRECTION_ATOL):
        problems.append(f"{f.path}: direction {_fmt(a.direction)} differs from the {what}: {_fmt(b.direction)}")


# ---------------------------------------------------------------------------------------------------------------
# pixel data


def _pixels(f: _File, problems: list[str]) -> np.ndarray | None:
    """Read the file's voxels once.

    Parameters
    ----------
    f
        A file whose header :func:`_header` accepted.
    problems
        Receives one line naming the file when the voxels cannot be read.

    Returns
    -------
    numpy.ndarray or None
        ``(z, y, x)``, or ``(c, z, y, x)`` for a 4D file, in ITK's array order and pixel type (NIfTI intensity
        scaling applied); ``None`` after reporting a failure.

    Notes
    -----
    ``.nii`` / ``.nii.gz`` files are read with nibabel (:func:`_nifti_pixels`), everything else with ITK, which also
    gets the NIfTI files whose header nibabel does not accept.
    """
    if f.natural is not None:
        try:
            arr, _ = natural.read_natural(f.path, f.label)
        except AutosegError as e:
            problems.append(str(e))
            return None
        return arr[:, None] if f.channels > 1 else arr  # (c, 1, y, x) like a 4D file, or (1, y, x)
    if f.path.name.lower().endswith((".nii", ".nii.gz")):
        done, arr = _nifti_pixels(f, problems)
        if done:
            return arr
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(f.path))
    try:
        img = reader.Execute()
    except RuntimeError as e:
        problems.append(f"{f.path}: pixel data cannot be read ({itk_error_reason(e)})")
        return None
    return sitk.GetArrayFromImage(img)


# nibabel.volumeutils.array_from_file raises OSError("Expected <n> bytes, got <m> bytes from <file> ...") when the
# voxel data is short (a truncated .nii, or a complete gzip stream holding too few bytes).
_SHORT_READ = re.compile(r"Expected (\d+) bytes, got (\d+) bytes")


def _nifti_pixels(f: _File, problems: list[str]) -> tuple[bool, np.ndarray | None]:
    """Read a NIfTI file's voxels with nibabel.

    Why nibabel: ITK's NIfTI reader replaces NaN and infinite float voxels by 0 and zero-fills whatever a truncated
    file lacks, so neither could be reported from its array. nibabel keeps the stored values and raises when the voxel
    data is short or the gzip stream is cut off or damaged. Only the voxels come from nibabel; sizes and geometry are
    ITK's (:func:`_header`), as in the rest of autoseg.

    Integer files are read this way too: nibabel's read replaces ITK's, so a truncated integer file is caught without
    a second pass over the data. NIfTI scaling (``scl_slope``/``scl_inter``) is applied as ITK applies it
    (:func:`_scaled`), so the arrays equal ITK's voxel for voxel wherever ITK's are right.

    Parameters
    ----------
    f
        A ``.nii`` or ``.nii.gz`` file whose header :func:`_header` accepted.
    problems
        Receives one line naming the file when the voxels cannot be read.

    Returns
    -------
    done : bool
        ``False`` when nibabel does not accept the header (the caller then reads the file with ITK, as before).
    array : numpy.ndarray or None
        The voxels, in native byte order; ``None`` after reporting why they cannot be read.
    """
    import nibabel  # here, not at module level: only NIfTI files need it, and it takes a while to import
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    gz = f.path.name.lower().endswith(".gz")
    shape = ((f.channels,) if f.dimension == 4 else ()) + f.size
    offset = None
    try:
        with _quiet_nibabel_header_checks():
            proxy = nibabel.load(f.path, mmap=False).dataobj  # reads the header; the voxels stay on disk
        if math.prod(proxy.shape) != math.prod(shape):  # nibabel and ITK disagree on the header: ITK decides
            return False, None
        offset = proxy.offset
        raw = proxy.get_unscaled()  # the one read of the voxel data, in the file's type and byte order
    except (ImageFileError, HeaderDataError, ValueError):
        # A header nibabel does not accept (ITK decides, as for other formats), or a .nii.gz stream that ends within
        # the first KB, which nibabel.load reports as an unknown file type while ITK reads it, zero-filled.
        reason = _gzip_stream_error(f.path) if gz else None
        if reason is None:
            return False, None
        problems.append(f"{f.path}: truncated or corrupt compressed file ({reason})")
        return True, None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # BadGzipFile is an OSError: caught before the next clause
        problems.append(f"{f.path}: truncated or corrupt compressed file ({_one_line(e)})")
        return True, None
    except OSError as e:
        short = _SHORT_READ.match(str(e)) if offset is not None else None
        if short is None:
            problems.append(f"{f.path}: pixel data cannot be read ({_one_line(e)})")
        else:
            expected, got = (offset + int(n) for n in short.groups())
            problems.append(f"{f.path}: file is truncated: {got} bytes{' after decompression' if gz else ''}, "
                            f"the NIfTI header promises {expected}")
        return True, None
    arr = raw.T.reshape(shape)  # nibabel's (x, y, z[, c]) Fortran-order array, transposed: a view in ITK's order
    slope, inter = float(proxy.slope), float(proxy.inter)  # (1, 0) when the header asks for no scaling
    if slope == 1.0 and inter == 0.0:
        native = arr.dtype.newbyteorder("=")  # spelled "=" like ITK's arrays (nibabel says "<f4"): a view, no copy
        return True, arr.view(native) if arr.dtype.isnative else arr.astype(native)
    return True, _scaled(arr, slope, inter)


def _scaled(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Apply NIfTI intensity scaling, ``raw * slope + inter``, with ITK's arithmetic.

    Parameters
    ----------
    raw
        Voxels as stored (any numeric type, either byte order).
    slope, inter
        ``scl_slope`` and ``scl_inter`` from the header.

    Returns
    -------
    numpy.ndarray
        float32 (float64 for float64 voxels), native byte order.

    Notes
    -----
    ITK converts the voxels to that type, then multiplies and adds in float64 and rounds once; doing the same keeps
    the arrays equal to those ITK gives elsewhere in autoseg (float32 arithmetic would differ in the last bit for
    about a third of the voxels). nibabel's own scaling (``np.asanyarray(img.dataobj)``) returns float64 and holds
    two float64 copies of the volume on the way; here the float64 values exist for one ``(y, x)`` plane at a time.
    """
    out = raw.astype(np.float64 if raw.dtype.kind == "f" and raw.dtype.itemsize == 8 else np.float32, order="C")
    s, i = np.float64(slope), np.float64(inter)
    for plane in out.reshape(-1, *out.shape[-2:]):
        plane[...] = plane * s + i
    return out


@contextlib.contextmanager
def _quiet_nibabel_header_checks():
    """Keep nibabel from printing the header fields it fixes while a file is loaded.

    nibabel logs such fixes (``qform_code 77 not valid; setting to 0``) to stderr. They concern the affine nibabel
    would build, which is not used here (geometry is ITK's), and would only confuse the verification output; header
    problems nibabel cannot fix still raise. The logger's level is process-wide: set for the call, then restored.
    """
    from nibabel.imageglobals import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _gzip_stream_error(path: Path) -> str | None:
    """Why ``path``'s gzip stream cannot be decompressed to its end, or ``None`` when it can.

    Reads the whole stream, so it is only asked about the rare ``.nii.gz`` file that nibabel rejected.
    """
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, zlib.error, OSError) as e:
        return _one_line(e)
    return None


def _one_line(e: BaseException) -> str:
    """An exception's first line (problem lines are one line each)."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def _check_finite(arr: np.ndarray, where, problems: list[str]) -> None:
    """One line for ``where`` when a float image holds NaN or infinite voxels."""
    if not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else ""]
    problems.append(f"{where}: image contains {' and '.join(p for p in parts if p)} voxel values "
                    f"(of {arr.size}); intensities must be finite")


def _check_label(f: _File, labels: tuple[str, ...], problems: list[str], ignore: int | None = None
                 ) -> np.ndarray | None:
    """Check label values (integers, declared); return them as int16, or ``None`` when they cannot be.

    With an ``ignore`` label value its voxels become :data:`autoseg.preprocessing.crop.IGNORE` in the returned
    array (so nothing downstream takes them for a class); a map holding nothing else is a problem.
    """
    arr = f.array
    k = len(labels) + (1 if ignore is not None else 0)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            problems.append(f"{f.path}: label map contains {int(arr.size - finite.sum())} NaN/infinite voxels")
            return None
        frac = arr != np.round(arr)
        if frac.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[frac])[:3])
            problems.append(f"{f.path}: label values are not integers ({int(frac.sum())} voxels, e.g. {examples}); "
                            f"a label map holds integer class values 0..{k - 1}")
            return None
    elif not np.issubdtype(arr.dtype, np.integer):
        problems.append(f"{f.path}: label map has pixel type {arr.dtype}, expected integers")
        return None
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > k - 1:
        bad = np.unique(arr[(arr < 0) | (arr > k - 1)])
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        problems.append(f"{f.path}: label values {{{shown}}} not declared in dataset.json labels (0-{k - 1}"
                        + (f", {ignore} = ignore)" if ignore is not None else ")"))
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
        return None
    out = arr.astype(np.int16)
    if ignore is not None:
        ignored = out == ignore
        if ignored.all():
            problems.append(f"{f.path}: every voxel is the ignore label ({ignore}): the case has no annotation")
            return None
        out[ignored] = IGNORE
    return out


# ---------------------------------------------------------------------------------------------------------------
# formatting


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v) + 0.0:.6g}" for v in values) + ")"  # + 0.0 turns -0 into 0


def _fmt_size(size) -> str:
    return "x".join(str(int(s)) for s in size)
