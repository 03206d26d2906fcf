"""The TokenSeg MONAI Label app through the real server and MONAI Label's own Python client."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from tokenseg.data.demo import ensure_demo_dataset

from monailabel_helpers import MonaiLabelServer, assert_rejected, client_for, port_is_free, sha, wait_for_training

CASES = ["breast_000", "breast_001", "breast_002", "breast_003"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(ensure_demo_dataset(tmp_path_factory.mktemp("data") / "demo"))


@pytest.fixture
def studies(demo, tmp_path) -> Path:
    folder = tmp_path / "studies"
    folder.mkdir()
    for case in CASES:
        shutil.copy(demo / "imagesTr" / f"{case}.nii.gz", folder)
    return folder


def assert_mask_in_image_space(mask: str, image: Path) -> None:
    result, source = nib.load(mask), nib.load(image)
    assert result.shape == source.shape[:3]
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(result.dataobj)).tolist()) <= {0, 1}


def test_annotation_loop_and_restart(studies, demo, tmp_path):
    model_dir = tmp_path / "model"
    checkpoint = model_dir / "tokenseg" / "models" / "model.pt"
    with MonaiLabelServer(studies, model_dir, tmp_path / "server.log", epochs=1) as server:
        client = client_for(server, tmp_path)
        info = client.info()
        assert "tokenseg" in info["models"] and info["models"]["tokenseg"]["labels"] == {"lesion": 1}
        assert "tokenseg" in info["trainers"] and "tokenseg_uncertainty" in info["strategies"]

        sample = client.next_sample("first", {})
        assert sample["id"] == CASES[0]
        mask, _ = client.infer("tokenseg", sample["id"], {})
        assert_mask_in_image_space(mask, studies / f"{sample['id']}.nii.gz")

        for case in CASES[:2]:  # the annotator corrects two cases (here: the ground truth)
            client.save_label(case, str(demo / "labelsTr" / f"{case}.nii.gz"), tag="final")
        assert set(client.datastore()["objects"]) == set(CASES)

        before = sha(checkpoint)
        client.train_start("tokenseg", {"max_epochs": 1, "val_split": 0.5})
        status = wait_for_training(client)
        assert status["status"] == "DONE", status
        assert any("val_mean_dice" in line for line in status.get("details", [])), status
        assert sha(checkpoint) != before  # retrained weights are where inference reads them
        mask, _ = client.infer("tokenseg", CASES[2], {})
        assert_mask_in_image_space(mask, studies / f"{CASES[2]}.nii.gz")

        scored = client.datastore()["objects"]
        deadline = time.time() + 300  # scoring runs in the background after training
        while time.time() < deadline and not all(
            "tokenseg_uncertainty" in scored[c]["image"]["info"] for c in CASES[2:]
        ):
            time.sleep(3)
            scored = client.datastore()["objects"]
        scores = {c: scored[c]["image"]["info"]["tokenseg_uncertainty"] for c in CASES[2:]}
        picked = client.next_sample("tokenseg_uncertainty", {})
        assert picked["id"] == max(scores, key=scores.get)  # the least sure of the unlabelled images
        port = server.port

        # stop the server in the middle of a longer retraining that validates and saves every epoch
        client.train_start("tokenseg", {"max_epochs": 50, "val_split": 0.5})
        time.sleep(25)
        assert client.train_status(check_if_running=True)
    assert port_is_free(port)

    # the datastore survived, and model.pt holds a complete checkpoint (written beside it, then renamed)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert "tokenizer.scorer.0.weight" in state
    datastore = json.loads((studies / "datastore_v2.json").read_text())
    assert set(datastore["objects"]) == set(CASES)
    assert all("final" in datastore["objects"][c]["labels"] for c in CASES[:2])
    with MonaiLabelServer(studies, model_dir, tmp_path / "server2.log") as server:
        client = client_for(server, tmp_path)
        assert set(client.datastore()["objects"]) == set(CASES)
        mask, _ = client.infer("tokenseg", CASES[3], {})
        assert_mask_in_image_space(mask, studies / f"{CASES[3]}.nii.gz")


def test_bad_requests_get_4xx_and_lose_nothing(studies, demo, tmp_path):
    junk = tmp_path / "notes.nii.gz"
    junk.write_text("not an image at all")
    wrong_shape = tmp_path / "wrong_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.uint8), np.eye(4)), wrong_shape)
    with MonaiLabelServer(studies, tmp_path / "model", tmp_path / "server.log") as server:
        client = client_for(server, tmp_path)
        assert_rejected(lambda: client.train_start("tokenseg", {}), "400", "no final labels")

        good_label = demo / "labelsTr" / f"{CASES[0]}.nii.gz"
        client.save_label(CASES[0], str(good_label), tag="final")
        stored_label = studies / "labels" / "final" / f"{CASES[0]}.nii.gz"
        before = {p: sha(p) for p in [*studies.glob("*.nii.gz"), stored_label]}

        assert_rejected(lambda: client.upload_image(str(junk), "notes"), "400", "not a readable image")
        assert_rejected(lambda: client.upload_image(str(studies / f"{CASES[1]}.nii.gz"), CASES[0]), "409", "exists")
        assert_rejected(lambda: client.save_label(CASES[0], str(wrong_shape), tag="final"), "400", "spatial shape")
        assert_rejected(lambda: client.save_label(CASES[0], str(junk), tag="final"), "400", "not a readable image")
        assert_rejected(lambda: client.save_label(CASES[0], str(good_label), tag="../../x"), "400", "invalid label tag")
        assert_rejected(lambda: client.infer("tokenseg", "no_such_image", {}), "404", "not found")
        assert_rejected(lambda: client.infer("tokenseg", "../../etc/passwd", {}), "400", "invalid image id")
        assert_rejected(lambda: client.upload_image(str(studies / f"{CASES[1]}.nii.gz"), "../escape"), "400", "invalid")

        # a file in the server's temp folder, where MONAI Label keeps uploads and results, is no datastore image
        stray = Path(tempfile.gettempdir()) / f"tmp{uuid.uuid4().hex[:8]}.nii.gz"
        shutil.copy(demo / "imagesTr" / "breast_010.nii.gz", stray)
        try:
            assert_rejected(lambda: client.infer("tokenseg", str(stray), {}), "400", "invalid image id")
            assert_rejected(lambda: client.infer("tokenseg", CASES[1], {"image": str(stray)}), "400", "invalid image id")
            forged = {"session": {"name": "forged", "image": str(stray)}, "image": str(stray)}
            assert_rejected(lambda: client.infer("tokenseg", CASES[1], forged), "400", "invalid image id")
            # ... nor is it when the request carries an upload of its own
            upload = str(studies / f"{CASES[1]}.nii.gz")
            assert_rejected(lambda: client.infer("tokenseg", "x", {"image": str(stray)}, file=upload), "400", "invalid")
        finally:
            stray.unlink()
        mask, _ = client.infer("tokenseg", "uploaded", {}, file=str(demo / "imagesTr" / "breast_010.nii.gz"))
        assert_mask_in_image_space(mask, demo / "imagesTr" / "breast_010.nii.gz")  # a real upload is segmented
        # the image alone, as OHIF asks for it (output=image)
        answer = requests.post(f"{server.url}/infer/tokenseg", params={"image": CASES[1], "output": "image"},
                               data={"params": "{}"}, timeout=600)
        assert answer.status_code == 200 and answer.content[:2] == b"\x1f\x8b", answer.text[:300]  # a .nii.gz mask

        assert set(client.datastore()["objects"]) == set(CASES)
        assert {p: sha(p) for p in before} == before
        assert not (studies.parent / "escape.nii.gz").exists() and not (studies.parent / "x").exists()
