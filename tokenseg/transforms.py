"""Transforms TokenSeg adds to MONAI's: checks that name the offending file."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckChannelsd"]


def _source(data: Mapping, key: Hashable) -> str:
    meta = getattr(data[key], "meta", {}) or {}
    return str(meta.get("filename_or_obj", key))


class CheckChannelsd(MapTransform):
    """Raise a ValueError naming the file when an image (C, ...) does not have ``num_channels`` channels.

    Place it right after ``LoadImaged(..., ensure_channel_first=True)``.
    """

    def __init__(self, keys: KeysCollection, num_channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_channels = num_channels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.ndim != 4 or image.shape[0] != self.num_channels:
                raise ValueError(
                    f"{_source(d, key)}: expected a 3D image with {self.num_channels} channel(s), got an array of "
                    f"shape {tuple(image.shape)} (channels first)."
                )
        return d
