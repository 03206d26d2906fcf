"""TokenSeg inference in the app: the bundle's model once the task has one, a clear answer before.

MONAI Label's ``BundleInferTask`` is not valid (and ``/info`` does not list
the model) until the bundle has its checkpoint. A new task starts without
one, so the app serves ``TokenSegInfer``: listed in ``/info`` from the start
with the task's labels, answering ``/infer`` with HTTP 409 until training has
written the checkpoint, then MONAI Label's bundle inference
(``BundleModel``), created at that moment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.transform.post import Restored

from tokenseg.bundle_task import BUNDLE_MODELS
from tokenseg.data.checks import read_image_info
from tokenseg.uncertainty import dropout_sampling

# A 3D network needs a volume: fewer voxels than this along an axis is a slice or a thin slab.
MIN_VOXELS_PER_AXIS = 4

NO_MODEL = "no trained model for this task yet: save final labels and train (POST /train/{model})"


class BundleModel(BundleInferTask):
    """MONAI Label's bundle inference of one of the bundle's models (its own checkpoint in ``models/``).

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` options.
        const: which checkpoint (``BundleConstants``).
        type: MONAI Label's model type.
        configs: the bundle's inference configs that build this model, in order (MONAI Label reads one).
        kwargs: further arguments of ``BundleInferTask`` (``train_mode``, ``skip_writer``, ``dropout``: MONAI
            Label's dropout sampling).
    """

    def __init__(
        self, path: str, conf: dict[str, str], const: BundleConstants, type: str, configs: Sequence[str], **kwargs
    ) -> None:
        self.configs = list(configs)
        super().__init__(path, conf, const=const, type=type, **kwargs)
        # MONAI Label offers every models/*.pt to the client and loads the shortest name by default
        # (BundleInferTask, 0.8.5): this model has exactly its own
        self._config["model_filename"] = [os.path.basename(self.path[0])]
        # the mask must go back to the image's own grid, or a DICOM SEG made from it is silently wrong
        if not isinstance(self.post_transforms()[-1], Restored):
            raise RuntimeError("the inference post-transforms must end with Restored(keys='pred', ref_image='image').")

    def _get_network(self, device, data):
        network = super()._get_network(device, data)
        # MONAI Label's "train mode" is for dropout sampling: batch norm must keep the trained statistics
        return dropout_sampling(network) if self.train_mode else network

    def _load_bundle_config(self, path, config):
        return super()._load_bundle_config(path, [os.path.join(path, "configs", c) for c in self.configs])


class TokenSegInfer(InferTask):
    """One of the task's models, served from the app's start: HTTP 409 until its checkpoint exists.

    Args:
        bundle: the task's working bundle.
        conf: the app's ``--conf`` options.
        labels: label names to values, as ``/info`` lists them.
        description: the model's description.
        start_weights: the weights its training starts from, in words (``/info``: ``initial_weights``).
        const: its checkpoint in the bundle.
        type: MONAI Label's model type (``deepedit``: the clients show their click tools).
        configs: the inference configs that build it (``tokenseg.bundle_task.BUNDLE_MODELS``).
    """

    def __init__(
        self,
        bundle: str,
        conf: dict[str, str],
        labels: dict[str, int],
        description: str,
        start_weights: str,
        const: BundleConstants | None = None,
        type: str = InferType.SEGMENTATION,
        configs: Sequence[str] = BUNDLE_MODELS["model.pt"],
    ) -> None:
        super().__init__(type, labels, 3, description)
        self.bundle, self.conf, self.start_weights, self.configs = bundle, conf, start_weights, configs
        self.const = const or BundleConstants()
        self._model: BundleModel | None = None
        self._lock = threading.Lock()

    @property
    def checkpoint(self) -> Path:
        return Path(self.bundle) / "models" / self.const.model_pytorch()

    def model(self) -> BundleModel | None:
        """MONAI Label's bundle inference, once there is a checkpoint (it reloads retrained weights itself)."""
        with self._lock:
            if self._model is None and self.checkpoint.exists():
                self._model = BundleModel(self.bundle, self.conf, self.const, self.type, self.configs)
            return self._model

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        model = self.model()
        info = model.info() if model else super().info()
        return {**info, "trained": model is not None, "initial_weights": self.start_weights}

    def config(self) -> dict[str, Any]:
        model = self.model()
        return model.config() if model else super().config()

    def __call__(self, request) -> tuple[Any, dict]:
        model = self.model()
        if model is None:
            raise HTTPException(status_code=409, detail=NO_MODEL.format(model=request.get("model", "tokenseg")))
        return model(request)


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
