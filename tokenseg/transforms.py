"""Transforms TokenSeg adds to MONAI's: checks that name the offending file, and clicks for the interactive model.

The interactive model takes the clicks as DeepEdit does (MONAI's
``monai.apps.deepedit`` transforms draw them as Gaussian guidance channels);
TokenSeg adds what its pipeline needs around them: clicks from a request,
checked and carried through reorientation and resampling
(``AddClickGuidanced``), and guidance that batches (``SerializeGuidanced``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from tokenseg.clicks import map_voxels, parse_clicks

__all__ = ["AddClickGuidanced", "CheckChannelsd", "SerializeGuidanced"]


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


class AddClickGuidanced(Transform):
    """The request's clicks -> ``data[guidance]``: per label, voxel indices of the image as it is now.

    Clicks come in the stored image's voxel indices (``tokenseg.clicks``
    reads both of MONAI Label's forms and raises ``ClickError`` for a bad
    one); place this after ``Orientationd``/``Spacingd``, which it follows
    through the image's original and current affines, and before MONAI's
    ``AddGuidanceSignalDeepEditd``, which draws the points as channels. With
    no clicks every label's list is empty: the channels stay zero, the
    automatic model.

    Args:
        label_names: the model's labels, names to values, background included, in channel order.
        ref_image: the image key.
        guidance: the key to write.
    """

    def __init__(self, label_names: Mapping[str, int], ref_image: str = "image", guidance: str = "guidance") -> None:
        self.label_names = dict(label_names)
        self.ref_image = ref_image
        self.guidance = guidance

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.ref_image]
        meta = image.meta
        stored_shape = [int(s) for s in np.asarray(meta["spatial_shape"]).ravel()[:3]]
        clicks = parse_clicks(d, self.label_names, stored_shape)
        d[self.guidance] = {
            name: map_voxels(points, meta["original_affine"], image.affine, image.shape[1:])
            for name, points in clicks.items()
        }
        return d


class SerializeGuidanced(MapTransform):
    """Each label's guidance points as a JSON string, so that patches with different numbers of clicks batch.

    MONAI's DeepEdit transforms keep guidance as per-label point lists,
    which ``list_data_collate`` cannot stack when two patches have
    different numbers of clicks (the DeepEdit bundles train with batch size
    1); they read it back from JSON strings too. Each sample also gets its
    own dict (``AddRandomGuidanceDeepEditd`` hands every sample the same one).

    Args:
        keys: the guidance key(s).
    """

    def __init__(self, keys: KeysCollection = "guidance", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = {
                name: points if isinstance(points, str) else json.dumps(np.asarray(points, dtype=np.int64).tolist())
                for name, points in d[key].items()
            }
        return d
