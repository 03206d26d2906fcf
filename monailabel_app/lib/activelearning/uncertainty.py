"""Active-learning scores of images from TokenSeg's own prediction (``tokenseg.uncertainty``).

For each unlabelled image the current checkpoint segments it through the
bundle's own inference preprocessing and sliding window, and one of two
scores is stored in the datastore, under the name of the strategy that
serves the highest:

- ``tokenseg_uncertainty``: the mean prediction entropy inside the cells of
  the tokens TokenSeg keeps: high where the model is unsure of the boundaries
  it found.
- ``tokenseg_uncertain_volume``: the share of voxels torn between background
  and a label: high where the model half-sees many or large lesions.

A third method stores, for every image (labelled ones too), the encoder's
summary of it (``tokenseg_embedding``), from which the
``tokenseg_uncertain_diverse`` strategy (``diversity.py``) measures how unlike
the labelled images an unlabelled one is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.utils.others.generic import name_to_device

from tokenseg.bundle_task import load_bundle
from tokenseg.uncertainty import boundary_token_entropy, image_embedding, uncertain_volume

logger = logging.getLogger(__name__)


class Score(NamedTuple):
    description: str
    function: Callable  # of (network, image (1, C, ...), roi size): a number, or a vector for an embedding
    every_image: bool = False  # labelled images too (an embedding), not only the candidates


# the datastore's image info key of each score
SCORES: dict[str, Score] = {
    "tokenseg_uncertainty": Score("Unlabelled image whose boundaries TokenSeg is least sure of", boundary_token_entropy),
    "tokenseg_uncertain_volume": Score("Unlabelled image with the most voxels TokenSeg is torn on", uncertain_volume),
    "tokenseg_embedding": Score("TokenSeg's encoder summary of every image", image_embedding, every_image=True),
}


def timestamp_key(score_key: str) -> str:
    """The image info key recording which checkpoint (its modification time) made the ``score_key`` score."""
    return f"{score_key}_ts"


class BundleScorer:
    """The bundle's inference preprocessing and its network with the current weights, scoring images by path."""

    def __init__(self, bundle_path: str, device: torch.device, score: Callable) -> None:
        parser, self.network = load_bundle(bundle_path, device=device)
        self.device, self.score = device, score
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.patch_size = parser.get_parsed_content("patch_size")

    def __call__(self, image_path: str) -> float | list[float]:
        data = self.preprocessing({"image": image_path})
        return self.score(self.network, data["image"][None].to(self.device), self.patch_size)


class TokenSegScoring(ScoringMethod):
    """Scores every unlabelled image (every image, for an embedding) not yet scored with the current checkpoint,
    with ``SCORES[key]``.

    Args:
        bundle_path: the bundle whose ``configs/inference.json`` and ``models/model.pt`` are used.
        key: a key of ``SCORES``; the datastore's image info key of the score.
        device: ``"cuda"`` or ``"cpu"`` (``None``: CUDA when available).
    """

    def __init__(self, bundle_path: str, key: str, device: str | None = None) -> None:
        self.score = SCORES[key]
        super().__init__(self.score.description)
        self.bundle_path, self.key, self.device = bundle_path, key, device

    def __call__(self, request, datastore: Datastore):
        model_file = os.path.join(self.bundle_path, "models", "model.pt")
        if not os.path.exists(model_file):
            return {"total": 0, "executed": 0, "skipped": 0, "reason": f"no checkpoint at {model_file}"}
        model_ts = int(os.stat(model_file).st_mtime)
        device = torch.device(name_to_device(request.get("device", self.device)))
        start = time.time()
        candidates = datastore.list_images() if self.score.every_image else datastore.get_unlabeled_images()
        stamp = timestamp_key(self.key)
        todo = [i for i in candidates if datastore.get_image_info(i).get(stamp) != model_ts]
        scorer = BundleScorer(self.bundle_path, device, self.score.function) if todo else None
        for image_id in todo:
            try:
                score = scorer(datastore.get_image_uri(image_id))
            except (ValueError, RuntimeError) as error:  # an image the model cannot take (MONAI wraps transform errors)
                logger.warning(f"{self.key}: {image_id} not scored: {error}")
                continue
            datastore.update_image_info(image_id, {self.key: score, stamp: model_ts})
            shown = f"{len(score)} numbers" if isinstance(score, list) else f"{score:.5f}"
            logger.info(f"{self.key}: {image_id} => {shown}")
        summary = {
            "total": len(candidates),
            "executed": len(todo),
            "skipped": len(candidates) - len(todo),
            "latency": round(time.time() - start, 3),
        }
        logger.info(f"{self.key}: {summary}")
        return summary
