"""The interactive model through the real MONAI Label server and its Python client, as Slicer and OHIF call it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tokenseg.data.demo import ensure_demo_dataset

from monailabel_helpers import MonaiLabelServer, assert_rejected, client_for, sha, wait_for_training

CASE = "breast_020"  # a test case: the shipped models never trained on it
TRAINING = ["breast_000", "breast_001"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(ensure_demo_dataset(tmp_path_factory.mktemp("data") / "demo"))


def _mask(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj) > 0


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_clicks_through_the_server(demo, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for case in [CASE, *TRAINING]:
        shutil.copy(demo / ("imagesTs" if case == CASE else "imagesTr") / f"{case}.nii.gz", studies)
    label = np.asarray(nib.load(demo / "labelsTs" / f"{CASE}.nii.gz").dataobj) > 0
    model_dir = tmp_path / "model"
    with MonaiLabelServer(studies, model_dir, tmp_path / "server.log", models="all") as server:
        client = client_for(server, tmp_path)
        info = client.info()
        interactive = info["models"]["tokenseg_deepedit"]
        assert interactive["type"] == "deepedit" and interactive["labels"] == {"background": 0, "lesion": 1}
        assert info["models"]["tokenseg"]["type"] == "segmentation"
        assert {"tokenseg", "tokenseg_deepedit"} <= set(info["trainers"])

        automatic, _ = client.infer("tokenseg", CASE, {})
        no_clicks, _ = client.infer("tokenseg_deepedit", CASE, {"background": [], "lesion": []})
        assert np.array_equal(_mask(no_clicks), _mask(automatic))

        # the interactive model's own answer, with one background click far from any lesion (in the corner)
        first, params = client.infer("tokenseg_deepedit", CASE, {"lesion": [], "background": [[1, 1, 1]]})
        assert params["label_names"] == {"background": 0, "lesion": 1}

        # a foreground click inside lesion that answer missed adds voxels around it
        missed = label & ~_mask(first)
        assert missed.any()
        click = [int(i) for i in np.argwhere(missed)[len(np.argwhere(missed)) // 2]]
        near = _ball(label.shape, click, 4)
        corrected, _ = client.infer("tokenseg_deepedit", CASE, {"lesion": [click], "background": [[1, 1, 1]]})
        assert (_mask(corrected) & near).sum() > (_mask(first) & near).sum()

        # a background click inside a false region (lesion voxels the label does not have) removes voxels around it;
        # the deepgrow form (foreground/background lists) that Slicer's single-label tools send
        false = _mask(first) & ~label
        assert false.any()
        click = [int(i) for i in np.argwhere(false)[len(np.argwhere(false)) // 2]]
        near = _ball(label.shape, click, 4)
        cleaned, _ = client.infer(
            "tokenseg_deepedit", CASE, {"foreground": [], "background": [[1, 1, 1], click], "label": "lesion"}
        )
        assert (_mask(cleaned) & near).sum() < (_mask(first) & near).sum()

        for params, text in [
            ({"lesion": [[96, 10, 10]]}, "outside the image"),
            ({"lesion": [[10, 10]]}, "is not a point"),
            ({"lesion": "10,10,10"}, "must be a list"),
            ({"tumour": [[10, 10, 10]]}, "'tumour', which does not exist"),
            ({"label": "tumour", "foreground": [[10, 10, 10]]}, "label 'tumour' does not exist"),
        ]:
            assert_rejected(lambda: client.infer("tokenseg_deepedit", CASE, params), "400", text)
        assert_rejected(lambda: client.infer("tokenseg_deepedit", "no_such_case", {"lesion": [[1, 1, 1]]}), "404",
                        "not found")

        # retraining the interactive model on the saved final labels
        for case in TRAINING:
            client.save_label(case, str(demo / "labelsTr" / f"{case}.nii.gz"), tag="final")
        checkpoint = model_dir / "tokenseg" / "models" / "model_deepedit.pt"
        before = sha(checkpoint)
        client.train_start("tokenseg_deepedit", {"max_epochs": 1, "val_split": 0.5})
        status = wait_for_training(client)
        assert status["status"] == "DONE", status
        assert sha(checkpoint) != before
        stats = client.info()["train_stats"]["tokenseg_deepedit"]
        assert stats["total_epochs"] == 1 and stats["epoch"] == 1
        retrained, _ = client.infer("tokenseg_deepedit", CASE, {"lesion": [click], "background": []})
        assert _mask(retrained).shape == label.shape
