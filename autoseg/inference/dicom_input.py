"""DICOM input for prediction: every image series below the input folder is one case, named by its folder.

Case ids are those of :mod:`autoseg.io.dicom_case_ids` (shared with ``autoseg convert``, so a converted dataset's
case and the prediction for the same series share their id): the path of the series' folder relative to the input
folder, joined with ``_``, plus ``_s<SeriesNumber>_<SeriesDescription>`` where series share a folder, plus a hash
of the SeriesInstanceUID where that still collides.
"""

from __future__ import annotations

from pathlib import Path

from autoseg.errors import AutosegError, option
from autoseg.io import natural
from autoseg.io.dicom_case_ids import find_series_cases
from autoseg.io.dicom_series import SeriesInfo, files_under, is_dicom_folder
from autoseg.io.roi import KNOWN_ENDINGS

NIFTI = "nifti"
DICOM_SEG = "dicom-seg"
OUTPUT_FORMATS = (NIFTI, DICOM_SEG)
"""What ``predict`` writes: label maps as images (NIfTI for DICOM input), or one DICOM-SEG per DICOM series."""
NIFTI_ENDING = ".nii.gz"
"""The label maps of DICOM input, written with the series' geometry."""
SEG_ENDING = ".dcm"


def check_output_format(output_format: str) -> None:
    """Refuse an unknown output format with one line."""
    if output_format not in OUTPUT_FORMATS:
        raise AutosegError(f"output_format '{output_format}': must be one of {', '.join(OUTPUT_FORMATS)}")


def is_dicom_input(images_dir: Path, file_ending: str) -> bool:
    """Whether the input folder holds DICOM (at any depth) rather than image files.

    Raises
    ------
    AutosegError
        The folder holds both DICOM files and image files (of the dataset's ending or any image format): which
        would be segmented is not clear.
    """
    images_dir = Path(images_dir)
    if not is_dicom_folder(images_dir):
        return False
    endings = tuple({file_ending.lower(), *KNOWN_ENDINGS})
    other = next((p for p in files_under(images_dir) if p.name.lower().endswith(endings)), None)
    if other is not None:
        raise AutosegError(f"{images_dir}: holds both DICOM files and other images (e.g. {other}); put the DICOM "
                           f"series and the image files in separate input folders")
    return True


def check_dicom_model(images_dir: Path, num_channels: int, file_ending: str) -> None:
    """Refuse DICOM input for a model it cannot feed: one DICOM series is one 3D channel.

    Raises
    ------
    AutosegError
        The model needs several channels, or was trained on 2D photographs (PNG, TIFF ...).
    """
    if num_channels != 1:
        raise AutosegError(f"{images_dir}: this model needs {num_channels} channels, a DICOM series gives one; "
                           f"convert the series to one image file per channel instead")
    if natural.has_natural_ending(file_ending):
        raise AutosegError(f"{images_dir}: this model segments {file_ending} images, not DICOM series (3D)")


def check_dicom_output(images_dir: Path, output_format: str, dicom: bool) -> None:
    """Refuse DICOM-SEG output for input that is not DICOM (a SEG must reference its source series)."""
    if output_format == DICOM_SEG and not dicom:
        raise AutosegError(f"{images_dir}: {option('output_format=dicom-seg')} needs DICOM input (a folder of "
                           f"DICOM series), the folder holds image files; write {NIFTI} instead")


def find_dicom_series(images_dir: Path) -> list[tuple[str, SeriesInfo]]:
    """``(case id, series)`` of every image series below ``images_dir``, sorted by case id
    (:func:`autoseg.io.dicom_case_ids.find_series_cases`, shared with ``autoseg convert``).

    Raises
    ------
    AutosegError
        As :func:`autoseg.io.dicom_series.find_series`: no image series, or a DICOM file whose header cannot be read
        (this stops the whole run: the file's series is unknown).
    """
    return find_series_cases(Path(images_dir))


def predict_series(predictor, folder: Path, series_uid: str | None = None, probabilities: bool = False):
    """Segment one DICOM series with a loaded predictor, in Python (what ``predict -i`` does for each series).

    Parameters
    ----------
    predictor
        Any predictor of :func:`autoseg.workflow.predict.load_predictor` (one configuration, an ensemble, a
        cascade): its ``prepare``, ``logits`` and ``finish`` are used.
    folder
        The folder holding the series (at any depth).
    series_uid
        Which series, when the folder holds several (:func:`autoseg.io.dicom_series.select_series`).
    probabilities
        Also return the class probabilities.

    Returns
    -------
    prediction, geometry, series
        The :class:`~autoseg.inference.predictor.Prediction` (label map ``(z, y, x)`` on the series' voxel grid,
        slices ordered along the slice normal as :func:`autoseg.io.dicom.read_series` reads them), that grid's
        geometry (for :func:`autoseg.io.image.write_image`), and the series (for
        :func:`autoseg.io.dicom_seg.write_dicom_seg`).

    Raises
    ------
    AutosegError
        The model needs several channels, or the series fails the DICOM checks (one line naming it).
    """
    from autoseg.io.dicom import read_series, select_series

    folder = Path(folder)
    check_dicom_model(folder, len(predictor.plans.channel_names), NIFTI_ENDING)
    series = select_series(folder, series_uid)
    image, geometry = read_series(series)
    data, properties = predictor.prepare(image, geometry, series.name())
    return predictor.finish(predictor.logits(data), properties, probabilities), geometry, series
