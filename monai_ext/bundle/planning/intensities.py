"""How intensities differ from case to case, and the normalisation they call for.

For each image channel that is not CT, nnU-Net decides between two z-scores by one measurement: crop every training
image to the bounding box of its nonzero voxels (in any channel); when that leaves less than three quarters of the
median image, the zeros are background that the scanner or a skull-strip wrote (BraTS), and the z-score runs over the
nonzero voxels only. Otherwise zeros are ordinary values, and the z-score runs over the whole image. Taking the
nonzero voxels of images whose background is noise and of images whose background is exact zeros moves the same
tissue by a standard deviation or more, so the rule is the dataset's, not each image's.

Cases that differ in their share of exact zeros, or in their intensity range, are named in warnings: the first is
what made a model trained on noisy backgrounds fail on a clean one, the second is what augmentation must cover.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "IntensityProfile", "case_name", "file_profile", "intensity_profile", "intensity_warnings", "nonzero_mask_rule",
]  # fmt: skip

# nnU-Net's threshold: cropping to the nonzero region must keep less than this share of the median image
NONZERO_CROP_RATIO = 0.75
# warn when the share of exact zeros of one channel differs by this much between two cases
BACKGROUND_SPREAD = 0.25
# warn when one case's intensity range (0.5 to 99.5 percentile) of a channel is this many times another's
RANGE_SPREAD = 2.0
RANGE_PERCENTILES = (0.5, 99.5)
# voxels per channel the percentiles are taken from (every k-th voxel): a 512^3 CT reads in the same time
PERCENTILE_SAMPLES = 1_000_000


@dataclass(frozen=True)
class IntensityProfile:
    """One image's intensities, per channel.

    Attributes:
        case: the image file, as a person would recognise it.
        zero_fraction: share of voxels that are exactly 0.
        value_range: 99.5th minus 0.5th percentile.
        crop_ratio: volume of the bounding box of voxels nonzero in any channel, over the image's volume.
    """

    case: str
    zero_fraction: tuple[float, ...]
    value_range: tuple[float, ...]
    crop_ratio: float


def intensity_profile(data: np.ndarray, case: str) -> IntensityProfile:
    """Profile an image given as ``(x, y, z)`` or ``(x, y, z, channels)``, as the Decathlon stores it."""
    volume = data.reshape(*data.shape[:3], -1)
    nonzero = (volume != 0).any(-1)
    if nonzero.any():
        bounds = [np.flatnonzero(nonzero.any(tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        cropped = np.prod([b[-1] - b[0] + 1 for b in bounds])
    else:
        cropped = 0
    zeros, ranges = [], []
    for channel in range(volume.shape[-1]):
        values = volume[..., channel].ravel()
        zeros.append(float(np.count_nonzero(values == 0) / values.size))
        sample = values[:: max(1, values.size // PERCENTILE_SAMPLES)].astype(np.float64)
        low, high = np.percentile(sample, RANGE_PERCENTILES)
        ranges.append(float(high - low))
    return IntensityProfile(case, tuple(zeros), tuple(ranges), float(cropped / nonzero.size))


def case_name(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A case's image file as a person finds it in the dataset: relative to the dataset folder when inside it."""
    return os.path.relpath(path, root) if Path(path).resolve().is_relative_to(Path(root).resolve()) else str(path)


def file_profile(path: str | os.PathLike, root: str | os.PathLike) -> IntensityProfile:
    """:func:`intensity_profile` of a NIfTI file (3D, or 4D with the channels last), named by :func:`case_name`."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj, dtype=np.float32).reshape(*image.shape[:3], -1)
    return intensity_profile(data, case_name(path, root))


def nonzero_mask_rule(profiles: Sequence[IntensityProfile]) -> tuple[bool, str]:
    """Whether non-CT channels are z-scored over their nonzero voxels (nnU-Net's rule), and why.

    Raises:
        ValueError: no profile to decide from.
    """
    if not profiles:
        raise ValueError("no case to decide the normalisation from")
    median = float(np.median([p.crop_ratio for p in profiles]))
    if median < NONZERO_CROP_RATIO:
        return True, (
            f"cropping to the nonzero region keeps {median:.0%} of the median image, under {NONZERO_CROP_RATIO:.0%}: "
            "the zeros are background, so z-score over nonzero voxels (nnU-Net's rule)"
        )
    return False, (
        f"cropping to the nonzero region keeps {median:.0%} of the median image, not under "
        f"{NONZERO_CROP_RATIO:.0%}: zeros are ordinary values, so z-score over the whole image (nnU-Net's rule)"
    )


def _extremes(profiles: Sequence[IntensityProfile], values: Sequence[float], shown: str) -> str:
    order = np.argsort(values, kind="stable")
    low, high = profiles[order[0]], profiles[order[-1]]
    return f"{shown.format(values[order[0]])} in {low.case}, {shown.format(values[order[-1]])} in {high.case}"


def intensity_warnings(profiles: Sequence[IntensityProfile], channel_names: Sequence[str]) -> list[str]:
    """What a person should know about how the cases differ, naming the cases at both ends."""
    if len(profiles) < 2:
        return []
    warnings = []
    for channel, name in enumerate(channel_names):
        zeros = [p.zero_fraction[channel] for p in profiles]
        if max(zeros) - min(zeros) > BACKGROUND_SPREAD:
            warnings.append(
                f"{name}: the cases differ in background: exact zeros make "
                f"{_extremes(profiles, zeros, '{:.0%}')}. A model trained on one kind meets the other at "
                "inference; the normalisation and augmentation must not depend on it"
            )
        ranges = [p.value_range[channel] for p in profiles]
        if min(ranges) > 0 and max(ranges) / min(ranges) > RANGE_SPREAD or min(ranges) == 0 < max(ranges):
            warnings.append(
                f"{name}: the cases differ in intensity range (0.5-99.5 percentile): "
                f"{_extremes(profiles, ranges, '{:.4g}')}, as between scanners or sites; intensity augmentation "
                "should cover it"
            )
    return warnings
