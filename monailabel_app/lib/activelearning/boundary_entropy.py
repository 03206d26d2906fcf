"""Active-learning score of unlabelled images: TokenSeg's boundary-token entropy.

For each unlabelled image the current checkpoint segments it through the
bundle's own inference preprocessing and sliding window, and the score is the
mean prediction entropy inside the cells of the tokens TokenSeg keeps (see
``tokenseg.uncertainty``): high where the model is unsure of the boundaries
it found, which is the part an annotator has to fix. Scores are stored in the
datastore under ``tokenseg_uncertainty``; the ``tokenseg_uncertainty``
strategy serves the highest.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.utils.others.generic import name_to_device

from tokenseg.bundle_task import load_bundle
from tokenseg.uncertainty import boundary_token_entropy

logger = logging.getLogger(__name__)

SCORE_KEY = "tokenseg_uncertainty"
MODEL_TS_KEY = "tokenseg_uncertainty_ts"


class BundleScorer:
    """The bundle's inference preprocessing and its network with the current weights, scoring images by path."""

    def __init__(self, bundle_path: str, device: torch.device) -> None:
        parser, self.network = load_bundle(bundle_path, device=device)
        self.device = device
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.patch_size = parser.get_parsed_content("patch_size")

    def __call__(self, image_path: str) -> float:
        data = self.preprocessing({"image": image_path})
        return boundary_token_entropy(self.network, data["image"][None].to(self.device), self.patch_size)


class BoundaryTokenEntropyScoring(ScoringMethod):
    """Scores every unlabelled image not yet scored with the current checkpoint.

    Args:
        bundle_path: the bundle whose ``configs/inference.json`` and ``models/model.pt`` are used.
        device: ``"cuda"`` or ``"cpu"`` (``None``: CUDA when available).
    """

    def __init__(self, bundle_path: str, device: str | None = None) -> None:
        super().__init__("Boundary-token entropy of TokenSeg's prediction (higher = less sure)")
        self.bundle_path = bundle_path
        self.device = device

    def __call__(self, request, datastore: Datastore):
        model_file = os.path.join(self.bundle_path, "models", "model.pt")
        if not os.path.exists(model_file):
            return {"total": 0, "executed": 0, "skipped": 0, "reason": f"no checkpoint at {model_file}"}
        model_ts = int(os.stat(model_file).st_mtime)
        device = torch.device(name_to_device(request.get("device", self.device)))
        start = time.time()
        unlabeled = datastore.get_unlabeled_images()
        todo = [i for i in unlabeled if datastore.get_image_info(i).get(MODEL_TS_KEY) != model_ts]
        scorer = BundleScorer(self.bundle_path, device) if todo else None
        for image_id in todo:
            try:
                score = scorer(datastore.get_image_uri(image_id))
            except (ValueError, RuntimeError) as error:  # an image the model cannot take (MONAI wraps transform errors)
                logger.warning(f"{SCORE_KEY}: {image_id} not scored: {error}")
                continue
            datastore.update_image_info(image_id, {SCORE_KEY: score, MODEL_TS_KEY: model_ts})
            logger.info(f"{SCORE_KEY}: {image_id} => {score:.5f}")
        summary = {
            "total": len(unlabeled),
            "executed": len(todo),
            "skipped": len(unlabeled) - len(todo),
            "latency": round(time.time() - start, 3),
        }
        logger.info(f"{SCORE_KEY}: {summary}")
        return summary
