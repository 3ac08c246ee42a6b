"""Choice of the intensity normalisation per channel."""

from __future__ import annotations

from typing import Sequence

from autoseg.schema.fingerprint import IntensityStats
from autoseg.schema.plans import ChannelNormalization

#: Channel names (case-insensitive) with a dedicated scheme; every other name gets a per-image z-score.
SCHEME_BY_CHANNEL_NAME = {"ct": "ct", "nonorm": "none", "none": "none", "rescale_to_0_1": "rescale_0_1",
                          "rgb_to_0_1": "rgb_0_1", "zscore": "zscore",
                          **{c: "rgb_0_1" for c in ("r", "g", "b", "red", "green", "blue")}}

#: Full scale of 8-bit colour data; a channel whose foreground exceeds it is taken as 16-bit (65535).
RGB_8BIT_MAX = 255.0

#: Cropping must shrink the median case below this fraction before z-scores are restricted to the nonzero mask.
MASK_RELATIVE_SIZE_THRESHOLD = 0.75


def choose_normalization(channel_names: Sequence[str], intensity: Sequence[IntensityStats],
                         median_relative_size_after_crop: float) -> tuple[ChannelNormalization, ...]:
    """One :class:`ChannelNormalization` per channel.

    A channel named CT is clipped to the dataset's foreground [0.5, 99.5] percentiles and z-scored with the
    dataset's foreground mean and std (Hounsfield units mean the same thing in every scan). Other channels are
    z-scored per image; when cropping to the nonzero region removed at least 25% of the median case, the
    background is outside the body, so the statistics are taken inside the nonzero mask and the outside stays 0.
    Colour channels (named R, G, B, red, green, blue or ``rgb_to_0_1``) are divided by their full scale, 255 (or
    65535 for 16-bit data), as nnU-Net's ``rgb_to_0_1``: the same pixel value means the same in every image.

    Parameters
    ----------
    channel_names
        Names from the dataset spec, in channel order.
    intensity
        Pooled foreground statistics per channel (from the fingerprint).
    median_relative_size_after_crop
        Median over cases of (voxels after cropping / voxels before).
    """
    use_mask = median_relative_size_after_crop < MASK_RELATIVE_SIZE_THRESHOLD
    out = []
    for name, stats in zip(channel_names, intensity):
        scheme = SCHEME_BY_CHANNEL_NAME.get(name.strip().lower(), "zscore")
        if scheme == "ct":
            out.append(ChannelNormalization("ct", False, stats.percentile_00_5, stats.percentile_99_5,
                                            stats.mean, stats.std))
        elif scheme == "rgb_0_1":
            out.append(ChannelNormalization("rgb_0_1", scale=RGB_8BIT_MAX if stats.max <= RGB_8BIT_MAX else 65535.0))
        else:
            # only a z-score leaves the outside of the mask at exactly zero
            out.append(ChannelNormalization(scheme, use_mask and scheme == "zscore"))
    return tuple(out)
