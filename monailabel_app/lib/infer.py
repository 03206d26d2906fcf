"""TokenSeg inference in the app: the bundle's models, or a clear answer while the task has no model.

MONAI Label's ``BundleInferTask`` is not valid (and ``/info`` does not list
the model) until the bundle has ``models/model.pt``. A new task starts
without one, so the app serves ``UntrainedModel`` in its place: listed in
``/info`` with the task's labels, answering ``/infer`` with HTTP 409 until
training has written a checkpoint, when the app swaps in the bundle task.
Images are checked from their headers before inference, so a client gets a
4xx that names the image and the problem instead of a 500.

The interactive model (``InteractiveModel``, MONAI Label type ``deepedit``) is
the same bundle read with its interactive mixin (``configs/inference_deepedit.json``)
and its own weights (``models/model_deepedit.pt``); its clicks are checked
against the image (``tokenseg.clicks``) before it runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.transform.post import Restored

from tokenseg.bundle_task import BUNDLE_MODELS, INTERACTIVE_WEIGHTS
from tokenseg.clicks import ClickError, parse_clicks
from tokenseg.data.checks import read_image_info

# A 3D network needs a volume: fewer voxels than this along an axis is a slice or a thin slab.
MIN_VOXELS_PER_AXIS = 4

NO_MODEL = "no trained model for this task yet: save final labels and train (POST /train/{model})"

INTERACTIVE_CONFIGS = BUNDLE_MODELS[INTERACTIVE_WEIGHTS]


class UntrainedModel(InferTask):
    """The task's model before its first training: in ``/info``, refusing inference with HTTP 409.

    Args:
        labels: label names to values.
        description: the model's description.
        start_weights: the weights training starts from, in words (``/info``: ``initial_weights``).
        type: MONAI Label's model type (``deepedit`` for the interactive model: the clients show its click tools).
    """

    def __init__(
        self, labels: dict[str, int], description: str, start_weights: str, type: str = InferType.SEGMENTATION
    ) -> None:
        super().__init__(type, labels, 3, description)
        self.start_weights = start_weights

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        return {**super().info(), "trained": False, "initial_weights": self.start_weights}

    def __call__(self, request) -> tuple[Any, dict]:
        raise HTTPException(status_code=409, detail=NO_MODEL.format(model=request.get("model", "tokenseg")))


class TrainedModel(BundleInferTask):
    """MONAI Label's bundle inference, whose ``/info`` says which weights its training started from."""

    def __init__(self, path: str, conf: dict[str, str], start_weights: str, **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        self.start_weights = start_weights
        # MONAI Label offers every models/*.pt and loads the first by default: this model has exactly one
        self._config["model_filename"] = [os.path.basename(self.path[0])]
        # the mask must go back to the image's own grid, or a DICOM SEG made from it is silently wrong
        if not isinstance(self.post_transforms()[-1], Restored):
            raise RuntimeError("the inference post-transforms must end with Restored(keys='pred', ref_image='image').")

    def info(self) -> dict[str, Any]:
        return {**super().info(), "trained": True, "initial_weights": self.start_weights}


class InteractiveConstants(BundleConstants):
    def model_pytorch(self) -> str:
        return INTERACTIVE_WEIGHTS

    def model_torchscript(self) -> str:
        return INTERACTIVE_WEIGHTS.replace(".pt", ".ts")


class InteractiveModel(TrainedModel):
    """The interactive TokenSeg: clicks per label (background included) refine the segmentation.

    MONAI Label type ``deepedit``, so that 3D Slicer and OHIF show their click
    tools; the clicks reach the bundle's ``AddClickGuidanced`` in the request
    (the app checks them first, ``clicks_of``).
    """

    def __init__(self, path: str, conf: dict[str, str], start_weights: str) -> None:
        super().__init__(path, conf, start_weights, type=InferType.DEEPEDIT, const=InteractiveConstants())

    def _load_bundle_config(self, path, config):
        return super()._load_bundle_config(path, [os.path.join(path, "configs", c) for c in INTERACTIVE_CONFIGS])


def clicks_of(request: dict, labels: dict[str, int], image_id: str, path: str | Path) -> dict[str, list[list[int]]]:
    """The request's clicks per label, checked against the header of ``path``; HTTP 400 naming the problem."""
    try:
        return parse_clicks(request, labels, read_image_info(path).shape)
    except ClickError as error:
        raise HTTPException(status_code=400, detail=f"image {image_id!r}: {error}") from error


def check_image(image_id: str, path: str | Path, in_channels: int) -> None:
    """HTTP 400 naming ``image_id`` when the file cannot go through the task's network."""
    try:
        info = read_image_info(path)
    except (ValueError, FileNotFoundError) as error:
        raise HTTPException(status_code=400, detail=f"image {image_id!r}: {error}") from error
    if info.channels != in_channels:
        raise HTTPException(
            status_code=400,
            detail=f"image {image_id!r} has {info.channels} channel(s); this task's model takes {in_channels}.",
        )
    if min(info.shape) < MIN_VOXELS_PER_AXIS:
        raise HTTPException(
            status_code=400,
            detail=f"image {image_id!r} is too small for TokenSeg: spatial shape {info.shape}; a 3D volume with at "
            f"least {MIN_VOXELS_PER_AXIS} voxels along each axis is needed.",
        )
