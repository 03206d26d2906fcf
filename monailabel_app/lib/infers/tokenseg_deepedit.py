"""The interactive TokenSeg's inference: clicks per label (background included) refine the segmentation.

The same bundle read with its interactive mixin (``configs/inference_deepedit.json``)
and its own weights (``models/model_deepedit.pt``); MONAI Label type
``deepedit``, so that 3D Slicer and OHIF show their click tools. The clicks
reach the bundle's ``AddClickGuidanced`` in the request, checked first
against the image's header (``clicks_of``): a bad click is an HTTP 400 that
names it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants

from tokenseg.bundle_task import BUNDLE_MODELS, INTERACTIVE_WEIGHTS
from tokenseg.clicks import ClickError, parse_clicks
from tokenseg.data.checks import read_image_info

from lib.infers.tokenseg import TokenSegInfer


class InteractiveConstants(BundleConstants):
    """The interactive model's checkpoint in the bundle."""

    def model_pytorch(self) -> str:
        return INTERACTIVE_WEIGHTS

    def model_torchscript(self) -> str:
        return INTERACTIVE_WEIGHTS.replace(".pt", ".ts")


class InteractiveTokenSegInfer(TokenSegInfer):
    """``TokenSegInfer`` of the interactive model: MONAI Label type ``deepedit``, its configs and weights."""

    def __init__(self, bundle: str, conf: dict[str, str], labels: dict[str, int], description: str,
                 start_weights: str) -> None:
        super().__init__(bundle, conf, labels, description, start_weights, InteractiveConstants(), InferType.DEEPEDIT,
                         BUNDLE_MODELS[INTERACTIVE_WEIGHTS])


def clicks_of(request: dict, labels: dict[str, int], image_id: str, path: str | Path) -> dict[str, list[list[int]]]:
    """The request's clicks per label, checked against the header of ``path``; HTTP 400 naming the problem."""
    try:
        return parse_clicks(request, labels, read_image_info(path).shape)
    except ClickError as error:
        raise HTTPException(status_code=400, detail=f"image {image_id!r}: {error}") from error
