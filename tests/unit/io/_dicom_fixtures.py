"""Tiny synthetic DICOM series for the DICOM tests, written with pydicom from known numpy volumes.

A series is written one file per slice under shuffled names, with InstanceNumbers that do not follow the slice
order either, so a reader that sorts by anything but the positions fails. ``edit(k, ds)`` lets a test damage
slice ``k`` (return None to leave the slice out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
GREYSCALE_PR = "1.2.840.10008.5.1.4.1.1.11.1"


@dataclass(frozen=True)
class Study:
    """Patient and study attributes shared by the series of one test."""

    study_uid: str
    frame_of_reference_uid: str

    @classmethod
    def new(cls) -> "Study":
        return cls(generate_uid(), generate_uid())


@dataclass(frozen=True)
class Grid:
    """Where a synthetic volume lies: spacing ``(z, y, x)`` mm, origin ``(x, y, z)`` mm, row and column cosines."""

    spacing: tuple[float, float, float] = (2.5, 0.8, 0.7)
    origin: tuple[float, float, float] = (-100.0, -120.5, 40.25)
    row: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def cosines(self) -> list[str]:
        return [format_number_as_ds(float(v)) for v in (*self.row, *self.col)]

    def normal(self) -> np.ndarray:
        r = np.array([float(v) for v in self.cosines()[:3]])
        c = np.array([float(v) for v in self.cosines()[3:]])
        return np.cross(r, c)

    def position(self, k: int) -> list[str]:
        p = np.asarray(self.origin) + k * self.spacing[0] * self.normal()
        return [format_number_as_ds(float(v)) for v in p]


def oblique_grid() -> Grid:
    """A grid rotated 20 deg about x then 30 deg about z: every direction cosine is non-trivial."""
    a, b = np.radians(20), np.radians(30)
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = rz @ rx
    return Grid(spacing=(3.0, 0.9, 0.75), origin=(12.5, -30.0, 7.0), row=tuple(m[:, 0]), col=tuple(m[:, 1]))


def ct_volume(shape=(6, 10, 12), seed=0) -> np.ndarray:
    """Stored int16 values (HU + 1024 with the CT rescale below)."""
    return np.random.default_rng(seed).integers(-1000, 3000, size=shape).astype(np.int16)


def mr_volume(shape=(5, 9, 11), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.uint16)


def _common(ds: Dataset, study: Study, sop_class: str, modality: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = "1"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = "Doctor^Referring"
    ds.Manufacturer = "autoseg tests"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def _pixels(ds: Dataset, array: np.ndarray) -> None:
    ds.set_pixel_data(array, photometric_interpretation="MONOCHROME2", bits_stored=16)


def write_series(folder: Path, volume: np.ndarray, grid: Grid = Grid(), *, modality: str = "CT",
                 rescale: tuple[float, float] = (1.0, 0.0), study: Study | None = None, series_uid: str | None = None,
                 description: str = "synthetic", seed: int = 0, prefix: str = "IM",
                 edit: Callable[[int, Dataset], Dataset | None] | None = None) -> list[Path]:
    """Write ``volume`` (stored values, ``(z, y, x)``) as one file per slice; slice ``k`` lies at ``origin + k dz n``.

    Returns the files in slice order (the names on disk are shuffled).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study = study or Study.new()
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(volume))
    numbers = rng.permutation(len(volume)) + 1
    files = []
    for k, plane in enumerate(volume):
        ds = Dataset()
        _common(ds, study, CT_IMAGE if modality == "CT" else MR_IMAGE, modality)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = description
        ds.InstanceNumber = int(numbers[k])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = grid.position(k)
        ds.ImageOrientationPatient = grid.cosines()
        ds.PixelSpacing = [format_number_as_ds(float(grid.spacing[1])), format_number_as_ds(float(grid.spacing[2]))]
        ds.SliceThickness = format_number_as_ds(float(grid.spacing[0]))
        if modality == "CT":
            ds.RescaleSlope = format_number_as_ds(float(rescale[0]))
            ds.RescaleIntercept = format_number_as_ds(float(rescale[1]))
            ds.RescaleType = "HU"
            ds.KVP = "120"
        else:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTrainLength = 1
        _pixels(ds, plane)
        if edit is not None:
            ds = edit(k, ds)
            if ds is None:
                continue
        path = folder / f"{prefix}{names[k]:04d}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_multiframe(path: Path, volume: np.ndarray, grid: Grid = Grid(), *, frame_order=None,
                     rescale: tuple[float, float] = (1.0, 0.0), study: Study | None = None) -> Path:
    """Write ``volume`` as one enhanced MR object; frame ``i`` holds slice ``frame_order[i]`` (default: reversed,
    so the reader must sort by the per-frame positions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    study = study or Study.new()
    order = list(range(len(volume)))[::-1] if frame_order is None else list(frame_order)
    ds = Dataset()
    _common(ds, study, ENHANCED_MR_IMAGE, "MR")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 7
    ds.SeriesDescription = "enhanced"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(volume)
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = grid.cosines()
    measures.PixelSpacing = [format_number_as_ds(float(grid.spacing[1])),
                             format_number_as_ds(float(grid.spacing[2]))]
    measures.SliceThickness = format_number_as_ds(float(grid.spacing[0]))
    transform.RescaleSlope = format_number_as_ds(float(rescale[0]))
    transform.RescaleIntercept = format_number_as_ds(float(rescale[1]))
    transform.RescaleType = "US"
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        group, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = grid.position(k)
        group.PlanePositionSequence = Sequence([plane])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    _pixels(ds, volume[order])
    ds.save_as(path, enforce_file_format=True)
    return path


def write_non_image(path: Path, kind: str, study: Study | None = None) -> Path:
    """A structured report ('SR') or a presentation state ('PR'): DICOM objects without an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    study = study or Study.new()
    ds = Dataset()
    _common(ds, study, BASIC_TEXT_SR if kind == "SR" else GREYSCALE_PR, kind)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.save_as(path, enforce_file_format=True)
    return path


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


# --- series that must be refused: each builder writes one into ``folder`` and returns what the error must name ---

def _positions(grid: Grid, k: int, shift: np.ndarray) -> list[str]:
    return [format_number_as_ds(float(float(v) + s)) for v, s in zip(grid.position(k), shift)]


def bad_several_series(folder: Path, monkeypatch) -> tuple[str, ...]:
    study = Study.new()
    a = write_series(folder / "a", ct_volume(), study=study, description="venous")
    b = write_series(folder / "b", ct_volume(seed=2), study=study, description="arterial")
    return str(folder), read(a[0]).SeriesInstanceUID, read(b[0]).SeriesInstanceUID, "2 DICOM image series", \
        "a folder of its own"


def bad_missing_slice(folder: Path, monkeypatch) -> tuple[str, ...]:
    files = write_series(folder, ct_volume(), edit=lambda k, ds: None if k == 3 else ds)
    return str(folder), read(files[0]).SeriesInstanceUID, "missing slices", "gap of 5.000 mm"


def bad_non_uniform(folder: Path, monkeypatch) -> tuple[str, ...]:
    grid = Grid()

    def shift(k, ds):
        if k == 4:
            ds.ImagePositionPatient = _positions(grid, k, 0.3 * grid.normal())
        return ds
    files = write_series(folder, ct_volume(), grid, edit=shift)
    return str(folder), read(files[0]).SeriesInstanceUID, "non-uniform slice spacing", "2.200 to 2.800 mm"


def bad_gantry_tilt(folder: Path, monkeypatch) -> tuple[str, ...]:
    grid = Grid()

    def tilt(k, ds):  # each slice shifted along the columns by tan(15 deg) x the slice step
        ds.ImagePositionPatient = _positions(grid, k, k * grid.spacing[0] * np.tan(np.radians(15)) *
                                             np.array(grid.col))
        return ds
    files = write_series(folder, ct_volume(), grid, edit=tilt)
    return str(folder), read(files[0]).SeriesInstanceUID, "gantry tilt", "15.00 deg"


def bad_localizer(folder: Path, monkeypatch) -> tuple[str, ...]:
    def scout(k, ds):
        if k == 0:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        return ds
    files = write_series(folder, ct_volume(), edit=scout)
    return str(folder), read(files[1]).SeriesInstanceUID, "1 localizer image with another orientation", \
        files[0].name


def bad_sizes(folder: Path, monkeypatch) -> tuple[str, ...]:
    def crop(k, ds):
        if k == 2:
            ds.set_pixel_data(ds.pixel_array[:8], photometric_interpretation="MONOCHROME2", bits_stored=16)
        return ds
    files = write_series(folder, ct_volume(), edit=crop)
    return str(folder), read(files[0]).SeriesInstanceUID, "different sizes", "10x12 (5 images), 8x12 (1 image)", \
        files[2].name


def bad_duplicate(folder: Path, monkeypatch) -> tuple[str, ...]:
    grid = Grid()

    def duplicate(k, ds):
        if k == 3:
            ds.ImagePositionPatient = grid.position(2)
        return ds
    files = write_series(folder, ct_volume(), grid, edit=duplicate)
    return str(folder), read(files[0]).SeriesInstanceUID, "duplicate slice positions", files[2].name, files[3].name


def bad_only_non_image(folder: Path, monkeypatch) -> tuple[str, ...]:
    write_non_image(folder / "report.dcm", "SR")
    write_non_image(folder / "sub" / "state.dcm", "PR")
    return str(folder), "only non-image DICOM objects (1 PR, 1 SR)"


def bad_missing_decoder(folder: Path, monkeypatch) -> tuple[str, ...]:
    """JPEG Lossless pixel data with its decoder unavailable (as without pylibjpeg-libjpeg)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    def compress(k, ds):
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])  # never decoded: the missing decoder is found first
        ds["PixelData"].VR = "OB"
        return ds
    files = write_series(folder, ct_volume(), edit=compress)
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    return files[0].name, "JPEG Lossless", "pip install 'autoseg[dicom-jpeg]'", "pylibjpeg-libjpeg"


def bad_truncated_header(folder: Path, monkeypatch) -> tuple[str, ...]:
    files = write_series(folder, ct_volume())
    files[2].write_bytes(files[2].read_bytes()[:400])
    return str(files[2]), "truncated or corrupt"


def bad_truncated_pixels(folder: Path, monkeypatch) -> tuple[str, ...]:
    files = write_series(folder, ct_volume())
    files[4].write_bytes(files[4].read_bytes()[:-30])
    return str(files[4]), "truncated or corrupt", "pixel data"


def bad_corrupt_file(folder: Path, monkeypatch) -> tuple[str, ...]:
    write_series(folder, ct_volume())
    junk = folder / "IM9999"
    junk.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(300))
    return str(junk), "truncated or corrupt"


def bad_no_position(folder: Path, monkeypatch) -> tuple[str, ...]:
    def drop(k, ds):
        if k == 1:
            del ds.ImagePositionPatient
        return ds
    files = write_series(folder, ct_volume(), edit=drop)
    return str(folder), read(files[0]).SeriesInstanceUID, files[1].name, "no valid ImagePositionPatient"


#: name -> builder; the series-layout cases (refused before any pixel is read) are also refused by write_dicom_seg
BAD_SERIES = {f.__name__[4:]: f for f in (
    bad_several_series, bad_missing_slice, bad_non_uniform, bad_gantry_tilt, bad_localizer, bad_sizes, bad_duplicate,
    bad_only_non_image, bad_missing_decoder, bad_truncated_header, bad_truncated_pixels, bad_corrupt_file,
    bad_no_position)}
LAYOUT_CASES = ("missing_slice", "non_uniform", "gantry_tilt", "localizer", "sizes", "duplicate", "no_position")
