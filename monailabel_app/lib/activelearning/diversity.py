"""Uncertainty with diversity: the unsure image least like those already labelled.

Two unsure images that look alike teach the model the same thing; labelling
both spends a label on nothing new. ``UncertaintyWithDiversity`` serves the
unlabelled image of highest ``uncertainty x novelty``, where novelty is the
cosine distance of the image's embedding to the nearest labelled image's
(``tokenseg_embedding``, stored by the scoring for every image). Each
feature is first centred and scaled over the images: what every image of a
cohort shares (the same anatomy, the same scanner) dominates the raw
features and would make every pair look alike. The labelled set is read at
each request, so the second image asked for in a round is measured against
the first once its label is saved.
"""

from __future__ import annotations

import logging

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.uncertainty import timestamp_key

logger = logging.getLogger(__name__)


def standardised(embeddings: np.ndarray) -> np.ndarray:
    """(I, E) embeddings with each feature centred and scaled to unit spread over the I images."""
    return (embeddings - embeddings.mean(axis=0)) / (embeddings.std(axis=0) + 1e-8)


def novelty(candidate: np.ndarray, labelled: np.ndarray) -> float:
    """Cosine distance (0 .. 2) of ``candidate`` (E,) to its nearest row of ``labelled`` (L, E); 1 with none."""
    if not len(labelled):
        return 1.0
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    return float(1.0 - (unit(labelled) @ unit(candidate)).max())


class UncertaintyWithDiversity(Strategy):
    """Next image: the unlabelled one of highest ``score_key`` times its novelty against the labelled images.

    Args:
        score_key: the image info key of the uncertainty score (e.g. ``tokenseg_uncertain_volume``).
        embedding_key: the image info key of every image's embedding.
        description: what ``/info`` shows.
    """

    def __init__(self, score_key: str, embedding_key: str, description: str) -> None:
        super().__init__(description)
        self.score_key, self.embedding_key = score_key, embedding_key

    def __call__(self, request, datastore: Datastore):
        label_tag, labels = request.get("label_tag"), request.get("labels")
        unlabelled = datastore.get_unlabeled_images(label_tag, labels)
        if not unlabelled:
            return None
        infos = {i: datastore.get_image_info(i) for i in datastore.list_images()}
        # embeddings are comparable only when one checkpoint made them all: the newest
        stamp = timestamp_key(self.embedding_key)
        newest = max((info.get(stamp, -1) for info in infos.values()), default=-1)
        embedded = sorted(i for i, info in infos.items() if self.embedding_key in info and info.get(stamp) == newest)
        features = dict(zip(embedded, standardised(np.array([infos[i][self.embedding_key] for i in embedded]))
                            if embedded else []))
        labelled = np.array([features[i] for i in datastore.get_labeled_images(label_tag, labels) if i in features])
        ranked = []
        for image in unlabelled:
            score = float(infos[image].get(self.score_key, 0.0))
            distance = novelty(features[image], labelled) if image in features else 0.0
            ranked.append((score * distance, distance, image))  # ties (an untrained model scores 0): most novel
        value, distance, image = max(ranked)
        logger.info(f"{request.get('strategy')}: {image}: {self.score_key} x novelty = {value:.5f} "
                    f"(novelty {distance:.4f} against {len(labelled)} labelled images)")
        return {"id": image, "score": value, "novelty": distance}
