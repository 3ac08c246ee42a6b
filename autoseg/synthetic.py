"""Deterministic synthetic segmentation datasets in MSD or nnU-Net v2 raw layout.

Every case is a body (or skull-stripped brain) with labelled structures, generated from ``(spec.seed, index)`` alone,
so one case can be regenerated without the others and the same spec always gives byte-identical arrays.

Anatomy
-------
``anatomy="body"``
    A smoothly deformed ellipsoidal body with a thin fat rim, zero (MRI) or air (CT, -1000 HU) outside, a spine-like
    bone cylinder in CT, and ``num_organs`` organs of clearly different sizes at jittered positions. Later organs may
    carve into earlier ones; every organ has voxels in every case.
``anatomy="fundus"``
    A 2D colour photograph (``shape`` ``(1, y, x)``, channels R, G, B, 8-bit values) of a retina-like disc inside a
    round field of view, black outside it: branching dark vessels (label 1) grow from a bright optic disc (label 2
    when ``num_organs`` is 2). Written as PNG files with the field of view as region-of-interest masks
    (``roiTr``/``roiTs``), in nnU-Net v2 layout.
``anatomy="brain"``
    A deformed ellipsoidal brain, exactly zero outside (as after skull stripping), with ``num_organs`` nested
    tumour-like classes: the region of label ``>= k`` lies inside the region of label ``>= k - 1``, wrapped by at
    least one voxel of it (6-connected).

Intensities are a per-region mean (per channel: each channel has its own contrasts of the same anatomy), blurred
slightly for partial volume, modulated by a low-frequency texture field and (MRI) a multiplicative bias field, plus
Gaussian noise. A channel named ``"CT"`` gets Hounsfield-like integer values.

Axis order is numpy ``(z, y, x)`` throughout (images ``(C, z, y, x)``); spacing is in mm in that order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from autoseg.io.image import Geometry, write_image

__all__ = ["SyntheticSpec", "make_case", "make_dataset", "case_name", "label_names", "preset", "PRESETS"]

# Body organs: name, size as a fraction of the body's semi-axes, centre slot in body-normalised (z, y, x) coordinates
# (+y is posterior, where the CT spine sits). Sizes differ clearly so small-structure handling is exercised.
_ORGANS = (
    ("liver", 0.52, (0.00, -0.10, -0.34)),
    ("spleen", 0.26, (0.15, 0.10, 0.48)),
    ("kidney", 0.19, (-0.30, 0.30, 0.40)),
    ("pancreas", 0.15, (0.05, -0.05, 0.14)),
    ("gallbladder", 0.12, (-0.30, -0.40, -0.22)),
    ("stomach", 0.24, (0.30, -0.35, 0.22)),
    ("right kidney", 0.18, (-0.30, 0.30, -0.42)),
    ("aorta", 0.10, (0.00, 0.30, 0.00)),
)
# Relative MRI contrast of each organ against body tissue; channel c reads the table shifted by 3c, so channels show
# the same anatomy with different (sometimes inverted) contrasts.
_MRI_CONTRAST = (0.30, -0.28, 0.45, -0.35, 0.22, -0.18, 0.55, -0.42)
_CT_ORGAN_HU = (60.0, 150.0, 100.0, 200.0, 80.0, 180.0, 120.0, 170.0)
_MRI_BASE = (400.0, 250.0, 600.0, 320.0)  # per-channel tissue intensity (arbitrary MRI units)

# Brain tumour sub-regions, outermost first, and their contrast per channel in BraTS order (FLAIR, T1w, T1gd, T2w).
_TUMOUR = ("edema", "tumour core", "enhancing tumour", "necrosis")
_TUMOUR_CONTRAST = (
    (0.55, -0.15, -0.10, 0.45),
    (0.35, -0.25, 0.15, 0.35),
    (0.25, -0.10, 0.80, 0.20),
    (-0.20, -0.45, -0.40, 0.65),
)

_FUNDUS = ("vessel", "optic disc")

_FAT_RIM = 0.08  # fat rim thickness as a fraction of the body radius
_MIN_RADIUS_VOX = 1.5  # keeps the smallest structure present on tiny grids


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate.

    Attributes
    ----------
    name
        Dataset name; its lower-cased alphanumeric form prefixes the case names.
    num_training, num_test
        Number of labelled training cases and unlabelled test cases.
    shape
        Median case size ``(z, y, x)`` in voxels; each case varies by up to +-15 % per axis.
    spacing
        Voxel size ``(z, y, x)`` in mm.
    spacing_jitter
        Relative per-case spacing spread (0.1 = +-10 %); 0 gives every case exactly ``spacing``. The in-plane axes
        share one factor when their spacings are equal, as in real scans.
    channels
        Channel names; ``"CT"`` gives Hounsfield-like intensities, several names a multi-channel dataset.
    num_organs
        Number of foreground classes (1-8 for ``"body"``, 1-4 for ``"brain"``).
    layout
        ``"msd"`` (Medical Segmentation Decathlon) or ``"nnunetv2"`` (nnU-Net v2 raw).
    seed
        Seed of every case's random stream.
    oblique
        Non-identity direction cosines and a non-zero origin, to exercise geometry handling.
    anatomy
        ``"body"`` (separate organs), ``"brain"`` (nested tumour-like classes, zero outside the brain) or
        ``"fundus"`` (2D colour photographs with vessels; see the module notes).
    """

    name: str = "Synthetic"
    num_training: int = 10
    num_test: int = 2
    shape: tuple[int, int, int] = (32, 48, 48)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    spacing_jitter: float = 0.0
    channels: tuple[str, ...] = ("MRI",)
    num_organs: int = 2
    layout: str = "msd"
    seed: int = 0
    oblique: bool = False
    anatomy: str = "body"

    def __post_init__(self):
        problems = []
        if self.layout not in ("msd", "nnunetv2"):
            problems.append(f"layout must be 'msd' or 'nnunetv2', got {self.layout!r}")
        if self.anatomy not in ("body", "brain", "fundus"):
            problems.append(f"anatomy must be 'body', 'brain' or 'fundus', got {self.anatomy!r}")
        max_organs = {"body": len(_ORGANS), "brain": len(_TUMOUR)}.get(self.anatomy, len(_FUNDUS))
        if not 1 <= self.num_organs <= max_organs:
            problems.append(f"num_organs must be 1..{max_organs} for anatomy {self.anatomy!r}, got {self.num_organs}")
        if self.anatomy == "fundus":
            if len(self.shape) != 3 or self.shape[0] != 1 or min(self.shape[1:]) < 32:
                problems.append(f"a fundus image has shape (1, y, x) with y, x >= 32, got {self.shape}")
            if self.layout != "nnunetv2" or tuple(self.channels) != ("R", "G", "B"):
                problems.append("a fundus dataset is written in nnU-Net v2 layout with channels R, G, B")
        elif len(self.shape) != 3 or min(self.shape) < 8:
            problems.append(f"shape must be three sizes >= 8 voxels, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            problems.append(f"spacing must be three positive sizes in mm, got {self.spacing}")
        if not 0 <= self.spacing_jitter < 0.5:
            problems.append(f"spacing_jitter must be in [0, 0.5), got {self.spacing_jitter}")
        if not self.channels:
            problems.append("channels must name at least one channel")
        if self.num_training < 1 or self.num_test < 0:
            problems.append(f"need num_training >= 1 and num_test >= 0, got {self.num_training}, {self.num_test}")
        if problems:
            raise ValueError("; ".join(problems))


def label_names(spec: SyntheticSpec) -> tuple[str, ...]:
    """Names of the foreground classes 1..num_organs, in label order."""
    table = {"body": [o[0] for o in _ORGANS], "brain": list(_TUMOUR)}.get(spec.anatomy, list(_FUNDUS))
    return tuple(table[: spec.num_organs])


def case_name(spec: SyntheticSpec, index: int) -> str:
    """Case identifier ``<prefix>_<index:03d>``; indices ``0..num_training-1`` are training, the rest test."""
    prefix = re.sub(r"[^a-z0-9]+", "", spec.name.lower()) or "case"
    return f"{prefix}_{index:03d}"


# --------------------------------------------------------------------------- random smooth fields


def _lobes(rng: np.random.Generator, coords: list[np.ndarray], n_terms: int = 3) -> np.ndarray:
    """Smooth field in about [-1, 1] on the grid spanned by 1D ``coords`` (z, y, x), unit ~ one structure radius.

    A short sum of separable cosine products: analytic (so boundaries are smooth at any resolution) and computed by
    broadcasting 1D arrays, which keeps it cheap on 256^3 grids.
    """
    amps = rng.uniform(0.5, 1.0, n_terms)
    amps /= amps.sum()
    shape = tuple(len(c) for c in coords)
    out = np.zeros(shape, np.float32)
    buf = np.empty(shape, np.float32)
    for a in amps:
        w = rng.uniform(1.0, 3.0, 3)  # rad per unit: one to a few lobes around a structure
        phi = rng.uniform(0.0, 2 * np.pi, 3)
        fz, fy, fx = (np.cos(w[i] * coords[i] + phi[i]).astype(np.float32) for i in range(3))
        np.multiply((a * fz)[:, None, None] * fy[None, :, None], fx[None, None, :], out=buf)
        out += buf
    return out


def _texture(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Zero-mean, unit-std low-frequency random field: Gaussian-filtered noise on a coarse grid, zoomed up linearly."""
    coarse = tuple(max(3, round(n / 6)) for n in shape)
    field = ndi.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), 1.0, mode="wrap")
    field -= field.mean()
    field /= field.std() + 1e-6
    out = np.empty(shape, np.float32)
    ndi.zoom(field, [n / c for n, c in zip(shape, coarse)], output=out, order=1, grid_mode=False)
    return out


def _blob(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radius: np.ndarray,
          amp: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Deformed ellipsoid (voxel units) as a mask over its bounding box; returns ``(box, mask)``."""
    radius = np.maximum(radius, _MIN_RADIUS_VOX)
    reach = radius * (1 + amp) + 1
    lo = np.clip(np.floor(centre - reach).astype(int), 0, np.array(shape))
    hi = np.clip(np.ceil(centre + reach).astype(int) + 1, 0, np.array(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    coords = [(np.arange(a, b, dtype=np.float32) - c) / r for a, b, c, r in zip(lo, hi, centre, radius)]
    q = coords[0][:, None, None] ** 2 + coords[1][None, :, None] ** 2 + coords[2][None, None, :] ** 2
    # Radial deformation: the surface sits at radius (1 + amp * lobes) instead of 1.
    limit = 1 + amp * _lobes(rng, coords)
    return box, q < limit * limit


# --------------------------------------------------------------------------- one case


def _case_grid(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[tuple[int, int, int], Geometry]:
    shape = tuple(max(8, int(round(n * rng.uniform(0.85, 1.15)))) for n in spec.shape)
    f = rng.uniform(1 - spec.spacing_jitter, 1 + spec.spacing_jitter, 3)
    if spec.spacing[1] == spec.spacing[2]:
        f[2] = f[1]  # square in-plane pixels stay square
    spacing = tuple(float(round(s * fi, 4)) if spec.spacing_jitter else float(s) for s, fi in zip(spec.spacing, f))
    if spec.oblique:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(10.0, 35.0))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues
        origin = tuple(float(round(v, 3)) for v in rng.uniform(-200.0, 200.0, 3))
        direction = tuple(float(v) for v in rot.ravel())
    else:
        origin, direction = (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return shape, Geometry(spacing=spacing, origin=origin, direction=direction)


def _structures(spec: SyntheticSpec, rng: np.random.Generator, shape, half: np.ndarray, body_c: np.ndarray,
                body_r: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Label map of organs (body) or nested tumour classes (brain), all inside ``inside``."""
    label = np.zeros(shape, np.uint8)
    if spec.anatomy == "body":
        for k in range(spec.num_organs):
            _, size, slot = _ORGANS[k]
            c = body_c + (np.array(slot) + rng.uniform(-0.08, 0.08, 3)) * body_r
            r = size * body_r * rng.uniform(0.85, 1.15, 3)
            box, m = _blob(rng, shape, half + c * half, r * half, amp=0.15)
            m &= inside[box]
            label[box][m] = k + 1  # later organs carve into earlier ones
    else:
        c = body_c + rng.uniform(-0.3, 0.3, 3) * body_r
        r = rng.uniform(0.4, 0.5) * body_r * rng.uniform(0.9, 1.1, 3)
        parent = inside
        for k in range(spec.num_organs):
            box, m = _blob(rng, shape, half + c * half, r * half, amp=0.12)
            full = np.zeros(shape, bool)
            full[box] = m
            # Nesting with a margin: each class lies inside the previous one, wrapped by at least one voxel of it.
            full &= parent if k == 0 else ndi.binary_erosion(parent)
            label[full] = k + 1
            parent = full
            c = c + rng.uniform(-0.15, 0.15, 3) * r
            r = r * rng.uniform(0.68, 0.8, 3)
    return label


def make_case(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Generate one case, deterministically from ``(spec.seed, index)`` and independently of other cases.

    Parameters
    ----------
    spec
        Dataset specification.
    index
        Case index (any non-negative integer; :func:`make_dataset` uses ``0..num_training+num_test-1``).

    Returns
    -------
    image
        ``(C, z, y, x)`` float32: MRI-like channels are exactly 0 outside the body/brain and positive inside;
        a ``"CT"`` channel holds integer Hounsfield-like values in [-1024, 3071].
    label
        ``(z, y, x)`` uint8 with values ``0..spec.num_organs``, each present.
    geometry
        Spacing ``(z, y, x)`` mm, origin and direction in ITK ``(x, y, z)`` order.
    """
    rng = np.random.default_rng([spec.seed, index])
    if spec.anatomy == "fundus":
        image, label, geometry, _ = fundus_case(spec, index)
        return image, label, geometry
    # every step draws from ``rng`` in turn: the order of the steps is part of the cases' bytes
    shape, geometry = _case_grid(spec, rng)
    half = (np.array(shape, float) - 1) / 2
    grid = [(np.arange(n, dtype=np.float32) - h) / h for n, h in zip(shape, half)]  # [-1, 1] per axis
    body_c, body_r, inside, rim = _body(spec, rng, grid)
    label = _placed_structures(spec, rng, shape, half, body_c, body_r, inside & ~rim if rim is not None else inside)
    is_ct = [ch.upper() == "CT" for ch in spec.channels]
    region = _region_map(spec, label, grid, body_c, body_r, inside, rim, any(is_ct))
    image = _intensities(spec, rng, region, grid, inside, is_ct)
    return image, label, geometry


def _body(spec: SyntheticSpec, rng: np.random.Generator, grid: list[np.ndarray]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The body (or brain): a deformed ellipsoid on ``grid``, the case's volume-normalised 1D axes (z, y, x).

    Returns
    -------
    centre, radii
        Its centre and semi-axes in ``grid`` units.
    inside
        ``(z, y, x)`` bool: the body.
    rim
        ``(z, y, x)`` bool: its fat rim (``"body"`` anatomy), or ``None`` (a brain has none).
    """
    # Filling ~80 % of each axis, so cropping to the nonzero region removes about half the volume for MRI-like
    # channels.
    body_c = rng.uniform(-0.05, 0.05, 3)
    body_r = np.array([0.86, 0.78, 0.84]) * rng.uniform(0.93, 1.05, 3)
    rel = [(g - c) / r for g, c, r in zip(grid, body_c, body_r)]
    q = rel[0][:, None, None] ** 2 + rel[1][None, :, None] ** 2 + rel[2][None, None, :] ** 2
    limit = _lobes(rng, rel)
    limit *= 0.08
    limit += 1
    q /= limit
    q /= limit  # q < 1 inside; sqrt(q) ~ fraction of the local body radius
    inside = q < 1
    rim = (q >= (1 - _FAT_RIM) ** 2) & inside if spec.anatomy == "body" else None
    return body_c, body_r, inside, rim


def _placed_structures(spec: SyntheticSpec, rng: np.random.Generator, shape, half: np.ndarray, body_c: np.ndarray,
                       body_r: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The label map of :func:`_structures`, drawn again until every structure has voxels.

    Raises
    ------
    ValueError
        No draw of 20 holds every structure (only on grids too small to hold them).
    """
    for _attempt in range(20):
        label = _structures(spec, rng, shape, half, body_c, body_r, inside)
        if np.all(np.bincount(label.ravel(), minlength=spec.num_organs + 1)[1:] > 0):
            return label
    raise ValueError(f"cannot place {spec.num_organs} structures in a {shape} grid; use a larger shape")


def _region_map(spec: SyntheticSpec, label: np.ndarray, grid: list[np.ndarray], body_c: np.ndarray,
                body_r: np.ndarray, inside: np.ndarray, rim: np.ndarray | None, has_ct: bool) -> np.ndarray:
    """The region of every voxel, what its intensity is drawn for: 0 tissue, 1..K structures (``label``), K+1 fat
    rim, K+2 bone (a spine, for CT), K+3 outside."""
    n = spec.num_organs
    region = np.full(label.shape, n + 3, np.uint8)
    region[inside] = 0
    if rim is not None:
        region[rim] = n + 1
    if spec.anatomy == "body" and has_ct:
        # Spine-like bone cylinder along z, posterior; organs drawn afterwards stay on top.
        sy, sx = body_c[1] + 0.58 * body_r[1], body_c[2]
        spine = (((grid[1][:, None] - sy) / (0.15 * body_r[1])) ** 2
                 + ((grid[2][None, :] - sx) / (0.15 * body_r[2])) ** 2) < 1
        region[(region == 0) & spine[None]] = n + 2
    fg = label > 0
    region[fg] = label[fg]
    return region


def _intensities(spec: SyntheticSpec, rng: np.random.Generator, region: np.ndarray, grid: list[np.ndarray],
                 inside: np.ndarray, is_ct: list[bool]) -> np.ndarray:
    """The ``(C, z, y, x)`` float32 image of the region map: per channel, its regions' intensities
    (:func:`_channel_lut`) blurred for partial volume, texture and noise; MRI-like channels also get a bias field,
    are positive inside the body and exactly zero outside; CT channels are integer Hounsfield-like values."""
    shape = region.shape
    texture = _texture(rng, shape)
    jitter = rng.uniform(0.85, 1.15, spec.num_organs)  # per-case organ contrast variation
    image = np.empty((len(spec.channels),) + shape, np.float32)
    bias = None
    for ci, ct in enumerate(is_ct):
        lut, base = _channel_lut(spec, rng, ci, ct, jitter)
        img = image[ci]
        img[...] = lut[region]
        ndi.gaussian_filter(img, 0.6, truncate=2.5, output=img)  # partial volume at edges
        if ct:
            img += 12.0 * texture
            img += rng.standard_normal(shape, dtype=np.float32) * np.float32(12.0)
            np.rint(img, out=img)
            np.clip(img, -1024, 3071, out=img)
        else:
            if bias is None:  # drawn at the first MRI channel: every MRI channel shares it
                bias = _bias_field(rng, grid, texture)
            img *= bias
            img += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.04 * base)
            np.maximum(img, np.float32(0.01 * base), out=img)  # magnitude images: positive inside
            img[~inside] = 0  # exactly zero outside, so crop-to-nonzero finds the body
    return image


def _channel_lut(spec: SyntheticSpec, rng: np.random.Generator, ci: int, ct: bool, jitter: np.ndarray
                 ) -> tuple[np.ndarray, float | None]:
    """Channel ``ci``'s intensity of every region of :func:`_region_map`, and its tissue intensity (``None`` for
    CT, whose Hounsfield units have a fixed scale); ``jitter``: the case's organ contrast factors."""
    n = spec.num_organs
    lut = np.empty(n + 4, np.float32)
    if ct:
        lut[0], lut[n + 1], lut[n + 2], lut[n + 3] = 40.0, -100.0, 700.0, -1000.0
        lut[1: n + 1] = (np.array(_CT_ORGAN_HU[:n]) - 40.0) * jitter + 40.0
        return lut, None
    base = _MRI_BASE[ci % len(_MRI_BASE)] * rng.uniform(0.8, 1.25)  # arbitrary per-scan MRI scale
    if spec.anatomy == "body":
        contrast = np.array([_MRI_CONTRAST[(k + 3 * ci) % len(_MRI_CONTRAST)] for k in range(n)])
    else:
        contrast = np.array([_TUMOUR_CONTRAST[k][ci % 4] for k in range(n)])
    lut[0], lut[n + 1], lut[n + 2], lut[n + 3] = base, base * 1.4, base * 0.3, 0.0
    lut[1: n + 1] = base * (1 + contrast * jitter)
    return lut, base


def _bias_field(rng: np.random.Generator, grid: list[np.ndarray], texture: np.ndarray) -> np.ndarray:
    """Smooth multiplicative MRI bias field: separable quadratic log-bias per axis times texture contrast."""
    log_b = [np.float32(a) * g + np.float32(b) * g * g for g, (a, b) in
             zip(grid, rng.uniform(-0.15, 0.15, (3, 2)))]
    bias = np.exp(log_b[0][:, None, None] + log_b[1][None, :, None] + log_b[2][None, None, :])
    bias *= 1 + 0.10 * texture
    return bias


def fundus_case(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray, Geometry, np.ndarray]:
    """One 2D colour fundus-like photograph (``spec.anatomy == "fundus"``), from ``(spec.seed, index)``.

    Returns
    -------
    image
        ``(3, 1, y, x)`` float32 holding integer R, G, B values in [0, 255], black outside the field of view.
    label
        ``(1, y, x)`` uint8: 1 vessels, 2 optic disc (with ``num_organs`` 2), 0 elsewhere.
    geometry
        1 x 1 mm pixels (:meth:`Geometry.of_2d`).
    roi
        ``(1, y, x)`` uint8: 1 inside the round field of view.
    """
    rng = np.random.default_rng([spec.seed, index])
    h, w = (max(32, int(round(n * rng.uniform(0.9, 1.1)))) for n in spec.shape[1:])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2 + rng.uniform(-0.03, 0.03) * h, (w - 1) / 2 + rng.uniform(-0.03, 0.03) * w
    radius = 0.46 * min(h, w) * rng.uniform(0.95, 1.02)
    fov = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
    # optic disc off centre, on a random side
    side = rng.choice([-1.0, 1.0])
    dy, dx = cy + rng.uniform(-0.1, 0.1) * radius, cx + side * rng.uniform(0.45, 0.6) * radius
    disc_r = radius * rng.uniform(0.12, 0.16)
    disc = ((yy - dy) ** 2 + (xx - dx) ** 2 < disc_r ** 2) & fov
    # vessels: smooth random walks from the disc, branching, thinning as they go
    vessels = np.zeros((h, w), bool)
    seeds = [(dy, dx, rng.uniform(0, 2 * np.pi), max(1.2, radius / 40)) for _ in range(int(rng.integers(6, 10)))]
    while seeds:
        y, x, angle, width = seeds.pop()
        for _step in range(int(radius * 1.6)):
            angle += rng.normal(0, 0.12)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if not (0 <= y < h and 0 <= x < w) or (y - cy) ** 2 + (x - cx) ** 2 > radius ** 2:
                break
            r = int(np.ceil(width))
            y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 1), max(0, int(x) - r), min(w, int(x) + r + 1)
            vessels[y0:y1, x0:x1] |= (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= width ** 2
            if width > 0.9 and rng.random() < 0.015:
                seeds.append((y, x, angle + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9), width * 0.7))
            width = max(0.6, width * 0.997)
    vessels &= fov
    label = np.zeros((h, w), np.uint8)
    label[vessels] = 1
    if spec.num_organs >= 2:
        label[disc & ~vessels] = 2
    # colours: orange-red retina, brighter towards the centre; dark red vessels; pale yellow disc
    shade = 1.0 - 0.35 * ((yy - cy) ** 2 + (xx - cx) ** 2) / radius ** 2
    base = np.array([175.0, 80.0, 35.0]) * rng.uniform(0.85, 1.15, 3)
    image = base[:, None, None] * shade[None] * (1 + 0.05 * _texture(rng, (1, h, w))[0][None])
    image[:, vessels] *= np.array([0.62, 0.45, 0.55])[:, None] * rng.uniform(0.9, 1.1)
    image[:, disc & ~vessels] = (np.array([235.0, 200.0, 120.0]) * rng.uniform(0.9, 1.05))[:, None]
    image = ndi.gaussian_filter(image, (0, 0.7, 0.7)) + rng.normal(0, 4.0, image.shape)
    image[:, ~fov] = rng.uniform(0, 3, (3, int((~fov).sum())))
    image = np.clip(np.rint(image), 0, 255).astype(np.float32)
    return image[:, None], label[None], Geometry.of_2d((1.0, 1.0)), fov[None].astype(np.uint8)


def _make_fundus_dataset(out_dir: Path, spec: SyntheticSpec) -> None:
    """PNG files in nnU-Net v2 layout, with the field of view as ROI masks (``roiTr``, ``roiTs``)."""
    from autoseg.io.natural import write_natural

    for sub in ("roiTr", "roiTs", "labelsTs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    for index in range(spec.num_training + spec.num_test):
        image, label, _, roi = fundus_case(spec, index)
        case = case_name(spec, index)
        tr = "Tr" if index < spec.num_training else "Ts"
        write_natural(image[:, 0].astype(np.uint8), out_dir / f"images{tr}" / f"{case}_0000.png")
        write_natural(label[0], out_dir / f"labels{tr}" / f"{case}.png")
        write_natural(roi[0], out_dir / f"roi{tr}" / f"{case}.png")
    meta = {
        "name": spec.name,
        "description": f"Synthetic 2D colour fundus-like photographs generated by autoseg.synthetic (seed "
                       f"{spec.seed}); the field of view is in roiTr / roiTs",
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, **{nm: k + 1 for k, nm in enumerate(label_names(spec))}},
        "numTraining": spec.num_training, "file_ending": ".png",
    }
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------- datasets


def make_dataset(out_dir: Path, spec: SyntheticSpec) -> Path:
    """Write a synthetic dataset folder.

    Parameters
    ----------
    out_dir
        Folder to create; it must not exist or be empty.
    spec
        What to generate; ``spec.layout`` chooses MSD (``imagesTr/<case>.nii.gz``, one 4D file for several channels)
        or nnU-Net v2 raw (``imagesTr/<case>_0000.nii.gz``, one file per channel). Case names come from
        :func:`case_name`; labels are uint8, MRI-like images float32, CT images int16 (as scanners store them).

    Returns
    -------
    Path
        ``out_dir``. ``dataset.json`` is written last, so a folder without it is incomplete.

    Raises
    ------
    ValueError
        If ``out_dir`` exists and is not an empty folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: exists and is not an empty folder; refusing to write a dataset into it")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    if spec.anatomy == "fundus":
        _make_fundus_dataset(out_dir, spec)
        return out_dir
    msd = spec.layout == "msd"
    is_ct = [ch.upper() == "CT" for ch in spec.channels]
    training, test = [], []
    for index in range(spec.num_training + spec.num_test):
        image, label, geometry = make_case(spec, index)
        case = case_name(spec, index)
        train = index < spec.num_training
        folder = out_dir / ("imagesTr" if train else "imagesTs")
        # CT scanners store integers: int16 is realistic and halves the compression time.
        stored = [c.astype(np.int16) if ct else c for c, ct in zip(image, is_ct)]
        if msd:
            write_image(np.stack(stored) if len(stored) > 1 else stored[0], geometry, folder / f"{case}.nii.gz")
        else:
            for ci, c in enumerate(stored):
                write_image(c, geometry, folder / f"{case}_{ci:04d}.nii.gz")
        if train:
            write_image(label, geometry, out_dir / "labelsTr" / f"{case}.nii.gz")
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case}.nii.gz")
            # the held-out reference of a test case, as a challenge organiser keeps it (not listed in dataset.json)
            write_image(label, geometry, out_dir / "labelsTs" / f"{case}.nii.gz")
    names = label_names(spec)
    description = (f"Synthetic {spec.anatomy} dataset generated by autoseg.synthetic (seed {spec.seed}, "
                   f"median shape {tuple(spec.shape)}, spacing {tuple(spec.spacing)} mm)")
    if msd:
        meta = {
            "name": spec.name, "description": description, "reference": "autoseg.synthetic",
            "licence": "CC0 (generated data)", "release": "1.0",
            "tensorImageSize": "4D" if len(spec.channels) > 1 else "3D",
            "modality": {str(i): ch for i, ch in enumerate(spec.channels)},
            "labels": {"0": "background", **{str(k + 1): nm for k, nm in enumerate(names)}},
            "numTraining": spec.num_training, "numTest": spec.num_test,
            "training": training, "test": test,
        }
    else:
        meta = {
            "name": spec.name, "description": description,
            "channel_names": {str(i): ch for i, ch in enumerate(spec.channels)},
            "labels": {"background": 0, **{nm: k + 1 for k, nm in enumerate(names)}},
            "numTraining": spec.num_training, "file_ending": ".nii.gz",
        }
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


PRESETS: dict[str, SyntheticSpec] = {
    # Unit/integration tests: a second of generation.
    "tiny": SyntheticSpec(name="Tiny", num_training=8, num_test=2, shape=(20, 28, 24), num_organs=2),
    # `autoseg demo`: small enough to train a model on a CPU in minutes.
    "demo": SyntheticSpec(name="Demo", num_training=20, num_test=4, shape=(32, 48, 48), num_organs=2),
    # 5 x 0.8 x 0.8 mm with spread, so the target spacing takes the 10th percentile of z (nnU-Net anisotropy rule).
    "anisotropic": SyntheticSpec(name="Anisotropic", num_training=10, num_test=2, shape=(24, 96, 96),
                                 spacing=(5.0, 0.8, 0.8), spacing_jitter=0.15, channels=("CT",), num_organs=3),
    # Two MRI contrasts of the same anatomy: a 4D MSD file per case.
    "multichannel": SyntheticSpec(name="Multichannel", num_training=10, num_test=2, shape=(32, 40, 40),
                                  channels=("T1", "T2"), num_organs=2),
    # Hounsfield-like values, so CT normalisation (global foreground percentiles) is chosen.
    "ct": SyntheticSpec(name="CT", num_training=10, num_test=2, shape=(32, 64, 64), spacing=(2.0, 0.9, 0.9),
                        spacing_jitter=0.1, channels=("CT",), num_organs=3),
    # ~270^3 at 1 mm: a 128^3 full-res patch covers < 25 % of a case, so a 3d_lowres configuration is planned. The
    # lowres stage is kept only if it halves the case volume, which needs a median of about 256^3 or more; 272 keeps a
    # margin against the per-case size spread (at 256 some seeds drop it). CT, so cropping to nonzero keeps the size.
    "large": SyntheticSpec(name="Large", num_training=5, num_test=1, shape=(272, 272, 272), channels=("CT",),
                           num_organs=3),
    # Small, but planned with a tiny memory target (`autoseg plan --gpu-memory 0.02`) the full-res patch covers
    # little of a case, so 3d_lowres + 3d_cascade_fullres are planned: the cascade's tests use it.
    "cascade": SyntheticSpec(name="Cascade", num_training=10, num_test=2, shape=(40, 48, 48), spacing=(2.0, 0.9, 0.9),
                             spacing_jitter=0.1, channels=("CT",), num_organs=3),
    # 2D colour photographs with vessels and a round field of view (ROI masks), PNG in nnU-Net v2 layout.
    "2d-rgb": SyntheticSpec(name="Fundus2D", num_training=10, num_test=2, shape=(1, 96, 96), channels=("R", "G", "B"),
                            num_organs=1, layout="nnunetv2", anatomy="fundus"),
    # BraTS-like: four MRI channels, four nested tumour classes, zero outside the brain.
    "brats-like": SyntheticSpec(name="BraTSLike", num_training=10, num_test=2, shape=(48, 56, 48),
                                channels=("FLAIR", "T1w", "T1gd", "T2w"), num_organs=4, anatomy="brain"),
}


def preset(name: str, **changes) -> SyntheticSpec:
    """A preset with fields replaced, e.g. ``preset("large", shape=(48, 48, 48))``."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)
