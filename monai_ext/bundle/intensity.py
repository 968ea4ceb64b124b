"""Per-channel intensity normalisation as a dataset fingerprint prescribes it (CT and MR channels side by side)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRange, Transform

__all__ = ["NormalizeChannelsd", "channel_normalizer"]

SCHEMES = ("ct", "zscore", "zscore_nonzero")


def channel_normalizer(entry: Mapping[str, Any], index: int) -> Transform:
    """The MONAI transform for one channel's ``normalization`` entry of a fingerprint.

    ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}`` clips to ``[low, high]`` and maps to
    ``(x - m) / s`` (one ``ScaleIntensityRange``); ``{"scheme": "zscore"}`` z-scores each image over all its voxels
    and ``{"scheme": "zscore_nonzero"}`` over its nonzero voxels (``NormalizeIntensity``); which of the two is the
    fingerprint's to decide (:mod:`monai_ext.bundle.planning.intensities`).

    Raises:
        ValueError: naming the entry and field that is wrong.
    """
    where = f"normalization[{index}]"
    scheme = entry.get("scheme") if isinstance(entry, Mapping) else None
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: 'scheme' must be one of {list(SCHEMES)}, got {scheme!r}")
    if scheme in ("zscore", "zscore_nonzero"):
        return NormalizeIntensity(nonzero=scheme == "zscore_nonzero")
    clip, mean, std = entry.get("clip"), entry.get("mean"), entry.get("std")
    if not (isinstance(clip, Sequence) and len(clip) == 2 and float(clip[0]) < float(clip[1])):
        raise ValueError(f"{where}: 'clip' must be [low, high] with low < high, got {clip!r}")
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) or std <= 0:
        raise ValueError(f"{where}: 'mean' must be a number and 'std' a positive number, got {mean!r} and {std!r}")
    low, high = float(clip[0]), float(clip[1])
    return ScaleIntensityRange(low, high, (low - mean) / std, (high - mean) / std, clip=True)


class NormalizeChannelsd(MapTransform):
    """Normalise each channel of an image with its own scheme, e.g. ``fingerprint["normalization"]``.

    MONAI's intensity transforms apply one rule to all channels; a dataset of CT and MR channels, or a CT channel
    with the dataset's own statistics, needs one rule per channel.

    Args:
        keys: keys of the channel-first images.
        normalization: one entry per channel (see :func:`channel_normalizer`).
        allow_missing_keys: do not raise for a missing key.

    Raises:
        ValueError: for an invalid entry (at construction), or an image whose channel count differs from the number of
            entries (when called), naming the key.
    """

    def __init__(
        self, keys: KeysCollection, normalization: Sequence[Mapping[str, Any]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not normalization:
            raise ValueError("normalization must list one entry per image channel, got none")
        self.channel_names = [str(entry.get("channel", f"channel {i}")) for i, entry in enumerate(normalization)]
        self.normalizers = [channel_normalizer(entry, i) for i, entry in enumerate(normalization)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(self.normalizers):
                raise ValueError(
                    f"{key}: the image has {image.shape[0]} channels, the normalization describes "
                    f"{len(self.normalizers)} ({', '.join(self.channel_names)})"
                )
            normalized = image.to(torch.float32).clone()  # item assignment keeps the MetaTensor's metadata
            for channel, normalizer in enumerate(self.normalizers):
                normalized[channel : channel + 1] = normalizer(image[channel : channel + 1].to(torch.float32))
            d[key] = normalized
        return d
