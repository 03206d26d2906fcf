"""The app's uncertainty-with-diversity strategy, on a real MONAI Label datastore."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.datastore.local import LocalDatastore

APP = Path(__file__).resolve().parents[1] / "monailabel_app"


def test_the_unsure_image_least_like_the_labelled_ones_is_served(tmp_path):
    sys.path.insert(0, str(APP))
    from lib.activelearning.diversity import UncertaintyWithDiversity, novelty, standardised

    studies = tmp_path / "studies"
    studies.mkdir()
    for name in ("labelled", "twin", "other", "sure"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), studies / f"{name}.nii.gz")
    datastore = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), label)
    datastore.save_label("labelled", str(label), "final", {})
    embeddings = {"labelled": [1.0, 0.0], "twin": [2.0, 0.1], "other": [0.0, 1.0], "sure": [-1.0, 0.0]}
    volumes = {"twin": 0.4, "other": 0.3, "sure": 0.0}  # "twin" is the most unsure, but looks like "labelled"
    for image, embedding in embeddings.items():
        info = {"embedding": embedding, "embedding_ts": 7}
        if image in volumes:
            info["volume"] = volumes[image]
        datastore.update_image_info(image, info)
    strategy = UncertaintyWithDiversity("volume", "embedding", "test")
    request = {"strategy": "diverse"}

    answer = strategy(request, datastore)
    # standardised over the four images, "other" points away from "labelled", "twin" nearly along it
    assert answer["id"] == "other" and answer["novelty"] > 1.5
    features = standardised(np.array(list(embeddings.values())))
    assert novelty(features[1], features[:1]) < 0.25
    assert novelty(features[2], features[:1]) == pytest.approx(answer["novelty"])
    assert np.allclose(features.mean(axis=0), 0) and np.allclose(features.std(axis=0), 1)
    # once "other" is labelled, the most unsure of the rest is measured against both labelled images
    datastore.save_label("other", str(label), "final", {})
    assert strategy(request, datastore)["id"] == "twin"
    # an embedding made by an older checkpoint is not compared with the newer ones: the image counts as not novel
    datastore.update_image_info("twin", {"embedding_ts": 6})
    assert strategy(request, datastore)["id"] == "sure"
    datastore.save_label("twin", str(label), "final", {})
    datastore.save_label("sure", str(label), "final", {})
    assert strategy(request, datastore) is None  # nothing left to label
