"""Read one raw case once and check it: readability, channels, geometry agreement, finite intensities, label values.

:func:`load_and_check_case` is what the fingerprint worker calls per case: it returns the arrays it has read together
with every problem found, so statistics are computed on the same arrays without reading any file twice. Each
problem is one line ``"<file path>: <problem>"`` naming the offending file; nothing here raises for a bad file.

Headers are read first (``sitk.ImageFileReader.ReadImageInformation``) so that files with a wrong dimensionality,
vector pixels or an invalid spacing are reported without reading their pixel data; the pixel data of every other
file is then read exactly once.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.io.image import Geometry, itk_error_reason
from autoseg.schema.dataset import CaseSpec, DatasetSpec

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
    """

    image: np.ndarray | None
    label: np.ndarray | None
    geometry: Geometry | None
    problems: tuple[str, ...]

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

    # --- headers ------------------------------------------------------------------------------------------------
    images = [_header(p, problems) for p in paths]
    label = _header(raw_dir / case.label, problems) if case.label is not None else None
    channels_ok = all(f is not None for f in images)
    for f in images:
        if f is not None and not _channels_match(f, n, len(paths), spec.channel_names, problems):
            channels_ok = False
    ref = images[0]
    for f in images[1:]:
        if ref is not None and f is not None:
            _compare_grids(f, ref, f"channel 0 file ({ref.path.name})", problems)
    if label is not None:
        if label.dimension != 3:
            problems.append(f"{label.path}: label map is {label.dimension}D "
                            f"({_fmt_size(label.size)} x {label.channels}), expected 3D")
        elif ref is not None:
            _compare_grids(label, ref, f"image ({ref.path.name})", problems)

    # --- pixel data, read once ----------------------------------------------------------------------------------
    for f in images + ([label] if label is not None and label.dimension == 3 else []):
        if f is not None:
            f.array = _pixels(f, problems)
    for f in images:
        if f is not None and f.array is not None:
            _check_finite(f, problems)

    image = None
    if channels_ok and all(f.array is not None for f in images):
        parts = [f.array if f.dimension == 4 else f.array[None] for f in images]
        if len(parts) == 1:  # no copy beyond the dtype conversion (a 4D BraTS case is 70 MB)
            image = parts[0].astype(np.float32, copy=False)
        elif len({p.shape[1:] for p in parts}) == 1:
            image = np.concatenate(parts).astype(np.float32, copy=False)
    label_arr = None
    if label is not None and label.array is not None:
        label_arr = _check_label(label, spec.labels, problems)
    return LoadedCase(image, label_arr, ref.geometry if ref is not None else None, tuple(problems))


def check_test_case(raw_dir: Path, spec: DatasetSpec, case: CaseSpec) -> LoadedCase:
    """Check an unlabelled (test) case: readability, channels, geometry of its channels, finite intensities.

    Same as :func:`load_and_check_case` with the label ignored.
    """
    return load_and_check_case(raw_dir, spec, dataclasses.replace(case, label=None))


# ---------------------------------------------------------------------------------------------------------------
# headers


def _header(path: Path, problems: list[str]) -> _File | None:
    """Header of one file via ``ReadImageInformation``; ``None`` (after reporting) when unusable."""
    if not path.is_file():
        problems.append(f"{path}: file not found")
        return None
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


def _channels_match(f: _File, n: int, nfiles: int, names: tuple[str, ...], problems: list[str]) -> bool:
    """One file per channel: each 3D. One file for several channels: 4D with exactly ``n`` channels."""
    declared = f"dataset.json declares {n} channel{'s' if n > 1 else ''} ({', '.join(names)})"
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
    """Report where ``f``'s voxel grid differs from ``ref``'s (size exact, geometry within tolerances)."""
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
    """The file's array (``(z,y,x)`` or ``(c,z,y,x)``), read once; ``None`` after reporting a failure.

    ITK's NIfTI reader silently replaces NaN and infinite float voxels by 0, and zero-fills (or leaves garbage in)
    the missing part of a truncated file. So float NIfTI files without intensity scaling (the usual case) are read
    here directly from their bytes, which lets both be reported; every other file goes through ITK after a cheap
    truncation check. Either way the pixel data is read once.
    """
    try:
        nifti = _NiftiHeader.read(f.path)
    except (OSError, EOFError, zlib.error) as e:
        problems.append(f"{f.path}: corrupt compressed file ({e})")
        return None
    if nifti is not None and nifti.float_unscaled and nifti.num_voxels == int(np.prod(f.size)) * f.channels:
        shape = ((f.channels,) if f.dimension == 4 else ()) + f.size
        arr, short = nifti.read_float_voxels(f.path, shape)
        if short is not None:
            problems.append(f"{f.path}: {short}")
        return arr
    if nifti is not None:
        short = nifti.truncation(f.path)
        if short is not None:
            problems.append(f"{f.path}: {short}")
            return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(f.path))
    try:
        img = reader.Execute()
    except RuntimeError as e:
        problems.append(f"{f.path}: pixel data cannot be read ({itk_error_reason(e)})")
        return None
    return sitk.GetArrayFromImage(img)


@dataclass(frozen=True)
class _NiftiHeader:
    """The few NIfTI-1/-2 header fields needed to find and check the voxel bytes of a single-file ``.nii(.gz)``."""

    gz: bool
    endian: str  # "<" or ">"
    datatype: int
    bitpix: int
    num_voxels: int
    vox_offset: int
    scl_slope: float
    scl_inter: float

    @classmethod
    def read(cls, path: Path) -> "_NiftiHeader | None":
        """Parse the header of ``path``; ``None`` for other formats or headers not understood (ITK decides)."""
        name = path.name.lower()
        if not name.endswith((".nii", ".nii.gz")):
            return None
        gz = name.endswith(".gz")
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            hdr = fh.read(540)
        if len(hdr) < 348:
            return None
        for e in "<>":
            size = struct.unpack(e + "i", hdr[:4])[0]
            if size == 348 and hdr[344:348] == b"n+1\0":
                dims = struct.unpack(e + "8h", hdr[40:56])
                datatype, bitpix = struct.unpack(e + "hh", hdr[70:74])
                vox_offset = int(struct.unpack(e + "f", hdr[108:112])[0])
                slope, inter = struct.unpack(e + "ff", hdr[112:120])
                break
            if size == 540 and len(hdr) == 540 and hdr[4:7] == b"n+2":
                datatype, bitpix = struct.unpack(e + "hh", hdr[12:16])
                dims = struct.unpack(e + "8q", hdr[16:80])
                vox_offset = struct.unpack(e + "q", hdr[168:176])[0]
                slope, inter = struct.unpack(e + "dd", hdr[176:192])
                break
        else:
            return None
        ndim = dims[0]
        if not 1 <= ndim <= 7 or bitpix <= 0 or bitpix % 8 or any(d < 1 for d in dims[1:ndim + 1]):
            return None
        return cls(gz, e, int(datatype), int(bitpix), int(np.prod(dims[1:ndim + 1], dtype=np.int64)),
                   max(int(vox_offset), size), float(slope), float(inter))

    @property
    def nbytes(self) -> int:
        return self.num_voxels * self.bitpix // 8

    @property
    def float_unscaled(self) -> bool:
        """Float voxels stored as they are (ITK applies no rescaling: slope 0 or 1, intercept 0)."""
        return (self.datatype, self.bitpix) in _NIFTI_FLOATS and self.scl_slope in (0.0, 1.0) and self.scl_inter == 0

    def read_float_voxels(self, path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
        """The voxels as a native-endian float array of ``shape`` (one read), or ``None`` and why not."""
        buf = bytearray(self.nbytes)
        view = memoryview(buf)
        got = 0
        try:
            with (gzip.open(path, "rb") if self.gz else open(path, "rb")) as fh:
                fh.seek(self.vox_offset)
                while got < len(buf):
                    n = fh.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except (OSError, EOFError, zlib.error) as e:
            return None, f"truncated or corrupt compressed file ({e})"
        if got < len(buf):
            return None, (f"file is truncated: {self.vox_offset + got} bytes{' after decompression' if self.gz else ''}"
                          f", the NIfTI header promises {self.vox_offset + self.nbytes}")
        arr = np.frombuffer(buf, dtype=self.endian + _NIFTI_FLOATS[(self.datatype, self.bitpix)]).reshape(shape)
        return (arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))), None

    def truncation(self, path: Path) -> str | None:
        """Describe a file holding fewer bytes than the header promises, else ``None``.

        Cheap: a ``.nii`` file's size, or a ``.nii.gz`` file's gzip trailer (uncompressed size mod 2^32). Only when
        the trailer disagrees (a cut-off stream, or a multi-member gzip) is the stream decompressed to count.
        """
        expected = self.vox_offset + self.nbytes
        if not self.gz:
            actual = os.path.getsize(path)
        else:
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                if struct.unpack("<I", raw.read(4))[0] == expected % 2 ** 32:
                    return None
            try:
                actual = 0
                with gzip.open(path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        actual += len(chunk)
            except (OSError, EOFError, zlib.error) as e:
                return f"truncated or corrupt compressed file ({e})"
        if actual < expected:
            return (f"file is truncated: {actual} bytes{' after decompression' if self.gz else ''}, the NIfTI "
                    f"header promises {expected}")
        return None


_NIFTI_FLOATS = {(16, 32): "f4", (64, 64): "f8"}  # NIfTI DT_FLOAT32, DT_FLOAT64 -> numpy type code


def _check_finite(f: _File, problems: list[str]) -> None:
    arr = f.array
    if not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all():
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else ""]
    problems.append(f"{f.path}: image contains {' and '.join(p for p in parts if p)} voxel values "
                    f"(of {arr.size}); intensities must be finite")


def _check_label(f: _File, labels: tuple[str, ...], problems: list[str]) -> np.ndarray | None:
    """Check label values (integers, declared); return them as int16, or ``None`` when they cannot be."""
    arr = f.array
    k = len(labels)
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
        problems.append(f"{f.path}: label values {{{shown}}} not declared in dataset.json labels (0-{k - 1})")
    if lo < np.iinfo(np.int16).min or hi > np.iinfo(np.int16).max:
        return None
    return arr.astype(np.int16)


# ---------------------------------------------------------------------------------------------------------------
# formatting


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v) + 0.0:.6g}" for v in values) + ")"  # + 0.0 turns -0 into 0


def _fmt_size(size) -> str:
    return "x".join(str(int(s)) for s in size)
