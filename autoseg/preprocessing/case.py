"""One case through preprocessing (transpose, crop, normalise, resample, class locations) and back.

Order of operations: transpose the spatial axes by ``plans.transpose_forward`` -> crop to the nonzero region ->
normalise (before resampling, so the nonzero mask still fits the image exactly) -> resample to the configuration's
spacing. :func:`revert_case` undoes them in reverse order: resample to the cropped shape -> un-crop -> transpose back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from autoseg.io.image import Geometry
from autoseg.planning.spacing import resampled_shape
from autoseg.preprocessing.crop import IGNORE, crop_to_nonzero, uncrop
from autoseg.preprocessing.normalize import normalize
from autoseg.preprocessing.resample import resample_data, resample_labels
from autoseg.schema.base import sha256_of
from autoseg.schema.plans import ConfigurationPlan, Plans

#: Foreground voxel coordinates kept per class for oversampling.
MAX_CLASS_LOCATIONS = 10000


@dataclass(frozen=True)
class CaseProperties:
    """How a case was preprocessed: everything needed to map a prediction back to the raw image (``<case>.json``).

    Attributes
    ----------
    case_id
        The case.
    original_geometry
        Geometry of the raw image (spacing ``(z, y, x)`` mm, ITK origin and direction).
    original_shape
        Raw spatial shape ``(z, y, x)``, voxels.
    transpose_forward
        Axis permutation applied to the raw ``(z, y, x)`` axes; every entry below is in the transposed order.
    bbox
        Crop box ``(start, stop)`` per transposed axis, voxels.
    shape_after_crop
        Spatial shape after cropping, voxels.
    spacing
        Spacing after transposing, before resampling, mm.
    target_spacing
        Spacing of the preprocessed arrays, mm (2D configurations keep the case's own spacing on axis 0).
    shape_after_resampling
        Spatial shape of the preprocessed arrays, voxels.
    voxels_per_class
        Voxels of each label value ``0..K-1`` in the preprocessed segmentation (empty without a label).
    config
        Configuration name.
    plans_sha256
        :func:`preprocessing_sha256` of the plans entries that determine this configuration's data (not of the
        whole plans: a changed batch size does not invalidate preprocessed data).
    resample_order_data, resample_order_label, separate_z_anisotropy
        Resampling rules used (reverting uses them too).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    case_id: str
    original_geometry: Geometry
    original_shape: tuple[int, ...]
    transpose_forward: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    shape_after_crop: tuple[int, ...]
    spacing: tuple[float, ...]
    target_spacing: tuple[float, ...]
    shape_after_resampling: tuple[int, ...]
    voxels_per_class: tuple[int, ...]
    config: str
    plans_sha256: str
    resample_order_data: int = 3
    resample_order_label: int = 1
    separate_z_anisotropy: float = 3.0
    schema_version: int = field(default=SCHEMA_VERSION)

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))


@dataclass(frozen=True)
class PreprocessedCase:
    """A preprocessed case.

    Attributes
    ----------
    data
        ``(C, Z, Y, X)`` float32 at the target spacing, transposed axes.
    seg
        ``(1, Z, Y, X)`` int8 (-1 = outside the nonzero region), ``None`` without a label.
    locations
        Label value ``1..K-1`` -> int32 ``(n, 3)`` ``(Z, Y, X)`` voxel coordinates in ``seg`` (up to
        :data:`MAX_CLASS_LOCATIONS` random ones per class; ``(0, 3)`` for an absent class). Empty without a label.
    properties
        How it was made.
    """

    data: np.ndarray
    seg: np.ndarray | None
    locations: dict[int, np.ndarray]
    properties: CaseProperties


def preprocessing_sha256(plans: Plans, config_name: str) -> str:
    """Hash of what determines a configuration's preprocessed data.

    The source data (through the fingerprint hash), channels, labels, axis order, and the configuration's spacing,
    normalisation and resampling rules; not patch, batch or network. Configurations sharing data
    (``3d_cascade_fullres`` and ``3d_fullres``) hash equal.
    """
    cfg = plans.configurations[config_name]
    return sha256_of({
        "fingerprint_sha256": plans.fingerprint_sha256, "channel_names": plans.channel_names,
        "labels": plans.labels, "transpose_forward": plans.transpose_forward, "spacing": cfg.spacing,
        "normalization": cfg.normalization, "resample_order_data": cfg.resample_order_data,
        "resample_order_label": cfg.resample_order_label, "separate_z_anisotropy": cfg.separate_z_anisotropy,
        "case_schema_version": CaseProperties.SCHEMA_VERSION,
    })


def target_spacing_for(config: ConfigurationPlan, spacing: tuple[float, ...]) -> tuple[float, ...]:
    """Target spacing of a case with (transposed) ``spacing`` in ``config``, mm.

    A 2D configuration plans the in-plane axes only: the case keeps its own spacing on axis 0 (as in nnU-Net).
    """
    if len(config.spacing) == len(spacing):
        return tuple(float(s) for s in config.spacing)
    return (float(spacing[0]),) + tuple(float(s) for s in config.spacing)


def class_locations(seg: np.ndarray, num_classes: int, rng: np.random.Generator,
                    max_per_class: int = MAX_CLASS_LOCATIONS) -> dict[int, np.ndarray]:
    """Up to ``max_per_class`` random voxel coordinates of each foreground class ``1..num_classes-1``, and for a
    case with a region-of-interest mask (voxels :data:`~autoseg.preprocessing.crop.IGNORE`) under key 0 the
    voxels inside it, where random (not foreground-forced) training patches are centred.

    Parameters
    ----------
    seg
        ``(Z, Y, X)`` labels.
    num_classes
        Including the background.
    rng
        Source of the subsample.

    Returns
    -------
    dict
        Label value -> int32 ``(n, 3)``, sorted in memory order (``(0, 3)`` when the class is absent).
    """
    flat = seg.reshape(-1)
    out = {}
    ignored = flat == IGNORE
    classes = range(1, num_classes)
    if ignored.any():
        classes = (0, *classes)
    for c in classes:
        idx = np.flatnonzero(~ignored if c == 0 else flat == c)
        if idx.size > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        out[c] = np.stack(np.unravel_index(idx, seg.shape), axis=1).astype(np.int32).reshape(-1, 3)
    return out


def _transpose(image: np.ndarray, label: np.ndarray | None, geometry: Geometry, plans: Plans):
    fwd = tuple(int(a) for a in plans.transpose_forward)
    image_t = image.transpose((0,) + tuple(a + 1 for a in fwd))
    label_t = label.transpose(fwd) if label is not None else None
    spacing_t = tuple(float(geometry.spacing[a]) for a in fwd)
    return fwd, image_t, label_t, spacing_t


def preprocess_case(image: np.ndarray, label: np.ndarray | None, geometry: Geometry, plans: Plans,
                    config_name: str, case_id: str = "case", rng: np.random.Generator | None = None,
                    max_locations: int = MAX_CLASS_LOCATIONS, roi: np.ndarray | None = None) -> PreprocessedCase:
    """Preprocess one case for ``config_name``.

    Parameters
    ----------
    image
        Raw ``(C, z, y, x)`` intensities (not modified).
    label
        Raw ``(z, y, x)`` integer labels ``0..K-1``, or ``None``.
    geometry
        Raw image geometry.
    plans
        The dataset's plans.
    config_name
        A configuration of ``plans``.
    case_id
        Recorded in the properties.
    rng
        Source of the class-location subsample (required with a label).
    max_locations
        Class locations kept per class.
    roi
        Raw ``(z, y, x)`` bool region-of-interest mask: the label outside it becomes
        :data:`~autoseg.preprocessing.crop.IGNORE`.

    Returns
    -------
    PreprocessedCase
    """
    config = plans.configurations[config_name]
    if label is not None and len(plans.labels) > 127:
        raise ValueError(f"{len(plans.labels)} labels do not fit the int8 segmentation")
    fwd, image_t, label_t, spacing_t = _transpose(image, label, geometry, plans)
    if label_t is not None and roi is not None:
        label_t = np.where(roi.transpose(fwd), label_t, IGNORE)
    crop = crop_to_nonzero(image_t, label_t)
    data = normalize(crop.image, crop.mask, config.normalization)
    shape_crop = tuple(int(s) for s in data.shape[1:])
    target = target_spacing_for(config, spacing_t)
    new_shape = resampled_shape(shape_crop, spacing_t, target)
    data = resample_data(data, new_shape, spacing_t, target, config.resample_order_data,
                         config.separate_z_anisotropy)

    seg, locations, counts = None, {}, ()
    if crop.label is not None:
        if rng is None:
            raise ValueError("preprocess_case: a label needs an rng for the class locations")
        seg3 = resample_labels(crop.label, new_shape, spacing_t, target, config.resample_order_label,
                               config.separate_z_anisotropy)
        num_classes = len(plans.labels)
        counts = tuple(int(n) for n in np.bincount(seg3.reshape(-1).astype(np.int16) - IGNORE,
                                                   minlength=num_classes - IGNORE)[-IGNORE:num_classes - IGNORE])
        locations = class_locations(seg3, num_classes, rng, max_locations)
        seg = seg3[None]

    props = CaseProperties(
        case_id=case_id, original_geometry=geometry, original_shape=tuple(int(s) for s in image.shape[1:]),
        transpose_forward=fwd, bbox=tuple((int(s.start), int(s.stop)) for s in crop.bbox),
        shape_after_crop=shape_crop, spacing=spacing_t, target_spacing=target,
        shape_after_resampling=tuple(int(s) for s in new_shape), voxels_per_class=counts, config=config_name,
        plans_sha256=preprocessing_sha256(plans, config_name), resample_order_data=config.resample_order_data,
        resample_order_label=config.resample_order_label, separate_z_anisotropy=config.separate_z_anisotropy)
    return PreprocessedCase(data, seg, locations, props)


def data_key(plans: Plans, config_name: str, spacing: tuple[float, ...]) -> tuple:
    """What determines a case's preprocessed arrays in ``config_name`` given its transposed ``spacing``.

    Two configurations with equal keys give identical arrays for that case (a ``2d`` and a ``3d_fullres``
    configuration of an isotropic dataset, for example), so they are computed once (:func:`derive_case`).
    """
    cfg = plans.configurations[config_name]
    return (target_spacing_for(cfg, spacing), cfg.normalization, cfg.resample_order_data, cfg.resample_order_label,
            cfg.separate_z_anisotropy)


def derive_case(case: PreprocessedCase, plans: Plans, config_name: str, rng: np.random.Generator | None,
                max_locations: int = MAX_CLASS_LOCATIONS) -> PreprocessedCase:
    """``case`` under another configuration with the same :func:`data_key`: shared arrays, own class locations
    (drawn from ``rng``, so they do not depend on which configurations were processed together) and properties."""
    props = replace(case.properties, config=config_name, plans_sha256=preprocessing_sha256(plans, config_name))
    if case.seg is None:
        return PreprocessedCase(case.data, None, {}, props)
    return PreprocessedCase(case.data, case.seg, class_locations(case.seg[0], len(plans.labels), rng, max_locations),
                            props)


def preprocess_for_inference(image: np.ndarray, geometry: Geometry, plans: Plans, config_name: str,
                             case_id: str = "case") -> tuple[np.ndarray, CaseProperties]:
    """Preprocess an unlabelled image for prediction.

    Returns
    -------
    data, properties
        ``(C, Z, Y, X)`` float32 and what :func:`revert_case` needs to map the prediction back.
    """
    case = preprocess_case(image, None, geometry, plans, config_name, case_id)
    return case.data, case.properties


def revert_case(array: np.ndarray, properties: CaseProperties, is_label: bool,
                background: float | tuple[float, ...] | None = None) -> np.ndarray:
    """Map an array at the preprocessed spacing back to the raw image grid.

    Parameters
    ----------
    array
        ``(C, Z, Y, X)`` probabilities or logits, or ``(Z, Y, X)`` labels (``is_label``), in the preprocessed
        (transposed, cropped, resampled) geometry.
    properties
        The case's :class:`CaseProperties`.
    is_label
        Labels: resampled as one-hot masks (``properties.resample_order_label``), -1 mapped to 0, padded with 0
        (background).
        Otherwise linear interpolation per channel, padded with ``background``.
    background
        Value(s) outside the crop box for ``(C, ...)`` arrays; default 1 for channel 0 and 0 for the others
        (probabilities). Pass suitable values for logits.

    Returns
    -------
    ndarray
        ``(C, z, y, x)`` float32 or ``(z, y, x)`` int8 in the raw geometry (``properties.original_shape``).
    """
    p = properties
    expected = tuple(p.shape_after_resampling)
    got = tuple(array.shape if is_label else array.shape[1:])
    if got != expected:
        raise ValueError(f"revert_case: array has spatial shape {got}, the preprocessed case {p.case_id} has "
                         f"{expected}")
    shape_t = tuple(p.original_shape[a] for a in p.transpose_forward)
    if is_label:
        cropped = resample_labels(np.asarray(array), p.shape_after_crop, p.target_spacing, p.spacing,
                                  p.resample_order_label, p.separate_z_anisotropy)
        np.maximum(cropped, 0, out=cropped)  # "outside" (-1) is background in the raw label space
        full = uncrop(cropped, p.bbox, shape_t, fill=0)
        return np.ascontiguousarray(full.transpose(p.transpose_backward))
    cropped = resample_data(np.asarray(array, dtype=np.float32), p.shape_after_crop, p.target_spacing, p.spacing,
                            1, p.separate_z_anisotropy)
    if background is None:
        background = (1.0,) + (0.0,) * (array.shape[0] - 1)
    full = uncrop(cropped, p.bbox, shape_t, fill=np.broadcast_to(np.asarray(background, np.float32),
                                                                 (array.shape[0],)))
    return np.ascontiguousarray(full.transpose((0,) + tuple(a + 1 for a in p.transpose_backward)))
