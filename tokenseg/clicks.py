"""Clicks: the points an annotator places, read from a request as MONAI Label's clients send them, and checked.

Two forms arrive (voxel indices ``[i, j, k]`` of the image as stored):

- per label name, as DeepEdit models get them from 3D Slicer's MONAI Label
  module and the OHIF panel: ``{"lesion": [[40, 52, 12]], "background": [[10, 9, 3]]}``;
- ``foreground`` / ``background`` lists, the DeepGrow form: foreground clicks
  belong to ``label`` (the segment being edited), or to the task's only
  foreground label.

``parse_clicks`` returns one list of points per label (every label of the
model, in its order, empty where there are none) or raises ``ClickError``
naming the click and the problem. The app calls it before inference (for a
4xx), and ``tokenseg.transforms.AddClickGuidanced`` calls it inside the
bundle's pipeline, so the two cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ClickError", "map_voxels", "parse_clicks"]

FOREGROUND, BACKGROUND = "foreground", "background"


class ClickError(ValueError):
    """A click that cannot be used: malformed, outside the image, or on a label the model does not have."""


def _points(name: str, value: object, spatial_shape: Sequence[int]) -> list[list[int]]:
    """``value`` as a list of in-image voxel indices, or ClickError."""
    if not isinstance(value, (list, tuple)):
        raise ClickError(f"clicks for {name!r} must be a list of [i, j, k] points, got {value!r}.")
    points = []
    for point in value:
        if (
            not isinstance(point, (list, tuple))
            or len(point) != len(spatial_shape)
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in point)
        ):
            raise ClickError(
                f"click {point!r} for {name!r} is not a point: {len(spatial_shape)} finite numbers (voxel indices) "
                "are expected."
            )
        index = [int(round(c)) for c in point]
        if any(c < 0 or c >= size for c, size in zip(index, spatial_shape)):
            raise ClickError(
                f"click {list(point)} for {name!r} is outside the image, whose voxel indices run from 0 to "
                f"{[s - 1 for s in spatial_shape]}."
            )
        points.append(index)
    return points


def _is_point_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(p, (list, tuple)) for p in value)


def parse_clicks(
    request: Mapping, label_names: Mapping[str, int], spatial_shape: Sequence[int]
) -> dict[str, list[list[int]]]:
    """The clicks of ``request`` per label of ``label_names`` (background included), checked against the image.

    Args:
        request: the inference request (MONAI Label's ``params`` merged into it).
        label_names: the model's labels, names to values, background included, in channel order.
        spatial_shape: the image's spatial shape as stored (the clicks' index space).

    Raises:
        ClickError: a malformed click, one outside the image, clicks or a ``label`` naming a label the
            model does not have, or foreground clicks with no label to give them to.
    """
    names = list(label_names)
    by_name = {name.lower(): name for name in names}  # MONAI Label's /info lists a bundle's labels in lower case
    foreground_labels = [n for n in names if n != BACKGROUND]
    clicks: dict[str, list[list[int]]] = {name: [] for name in names}
    target = request.get("label")
    if target is not None:
        if not isinstance(target, str) or target.lower() not in by_name:
            raise ClickError(f"label {target!r} does not exist; this model's labels are {names}.")
        target = by_name[target.lower()]
    for key, value in request.items():
        if isinstance(key, str) and key.lower() in by_name:
            clicks[by_name[key.lower()]] += _points(key, value, spatial_shape)
        elif key == FOREGROUND:
            points = _points(key, value, spatial_shape)
            if not points:
                continue
            owner = target if target not in (None, BACKGROUND) else (
                foreground_labels[0] if len(foreground_labels) == 1 else None
            )
            if owner is None:
                raise ClickError(
                    f"foreground clicks need a 'label' naming the segment they belong to: one of {foreground_labels}."
                )
            clicks[owner] += points
        elif isinstance(key, str) and _is_point_list(value):
            raise ClickError(f"clicks for label {key!r}, which does not exist; this model's labels are {names}.")
    return clicks


def map_voxels(points: list[list[int]], source_affine: np.ndarray, target_affine: np.ndarray,
               target_shape: Sequence[int]) -> list[list[int]]:
    """Voxel indices on the grid of ``source_affine`` -> indices of the same places on the grid of ``target_affine``.

    Both affines map voxel indices to world coordinates (MONAI's ``original_affine`` of the image as
    stored, and a transformed image's ``affine``); points are rounded and kept inside ``target_shape``.
    """
    if not points:
        return []
    voxels = np.concatenate([np.asarray(points, dtype=np.float64), np.ones((len(points), 1))], axis=1)
    world_to_target = np.linalg.inv(np.asarray(target_affine, dtype=np.float64))
    mapped = (world_to_target @ np.asarray(source_affine, dtype=np.float64) @ voxels.T).T[:, :3]
    return np.clip(np.rint(mapped), 0, np.asarray(target_shape) - 1).astype(int).tolist()
