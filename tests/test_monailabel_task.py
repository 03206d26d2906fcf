"""A new annotation task from zero, through the real MONAI Label server and its Python client.

Generated single-channel images (not the demo's 3-phase ones), an app started
with ``--conf labels`` and ``--conf in_channels 1`` and no checkpoint: the
model is listed but refuses inference until final labels are saved and it is
trained from scratch; then its masks come back in each image's own space.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.datastore.local import LocalDatastore

from tokenseg.data.synthetic import write_blob_cases

from bundle_helpers import BUNDLE
from monailabel_helpers import APP, MonaiLabelServer, assert_rejected, client_for, sha, wait_for_training

EPOCHS = 60  # from scratch, on one training image: enough for the blobs to be found


def make_studies(tmp_path: Path, num_labels: int, num_cases: int = 4) -> tuple[Path, list[tuple[Path, Path]]]:
    cases = write_blob_cases(tmp_path / "data", num_cases, num_labels=num_labels, seed=num_labels)
    studies = tmp_path / "studies"
    studies.mkdir()
    for image, _ in cases:
        shutil.copy(image, studies)
    return studies, cases


def task_conf(labels: dict[str, int]) -> dict[str, str]:
    return {"labels": json.dumps(labels), "in_channels": "1"}


def dice(mask: np.ndarray, label: np.ndarray, value: int) -> float:
    a, b = mask == value, label == value
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def infer_mask(client, image_id: str, image: Path) -> np.ndarray:
    """The mask of ``image_id`` from ``/infer``, checked to lie in the image's own space."""
    path, _ = client.infer("tokenseg", image_id, {})
    mask, source = nib.load(path), nib.load(image)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    return np.asarray(mask.dataobj)


def batch_infer(server: MonaiLabelServer, images: str, params: dict) -> requests.Response:
    """MONAI Label's ``POST /batch/infer/{model}``, run synchronously (the client has no call for it)."""
    return requests.post(
        f"{server.url}/batch/infer/tokenseg", params={"images": images, "run_sync": "true"}, json=params, timeout=600
    )


def train_and_watch(client, epochs: int) -> tuple[dict, list[int]]:
    """Train; returns the final status and the epochs ``/info`` ``train_stats`` showed while it ran."""
    client.train_start("tokenseg", {"max_epochs": epochs})
    seen = []
    deadline = time.time() + 900
    while time.time() < deadline:
        stats = client.info()["train_stats"]["tokenseg"]
        seen.append(stats.get("epoch", 0))
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status, seen
        time.sleep(1)
    raise TimeoutError(client.train_status())


@pytest.mark.parametrize("labels", [{"tumour": 1}, {"tumour": 1, "cyst": 2}], ids=["one_label", "two_labels"])
def test_task_from_zero(labels, tmp_path):
    studies, cases = make_studies(tmp_path, len(labels))
    ids = [image.name.removesuffix(".nii.gz") for image, _ in cases]
    model_dir = tmp_path / "model"
    with MonaiLabelServer(studies, model_dir, tmp_path / "server.log", conf=task_conf(labels)) as server:
        client = client_for(server, tmp_path)
        info = client.info()
        model = info["models"]["tokenseg"]
        assert model["labels"] == labels and model["trained"] is False, model
        assert "from scratch" in model["initial_weights"], model
        assert info["labels"] == list(labels)
        assert info["train_stats"]["tokenseg"] == {}
        assert_rejected(lambda: client.infer("tokenseg", ids[0], {}), "409", "no trained model for this task yet")
        response = batch_infer(server, "all", {"device": "cpu"})
        assert response.status_code == 409 and "no trained model" in response.json()["detail"], response.text

        for (_, label), image_id in zip(cases[:2], ids[:2]):
            client.save_label(image_id, str(label), tag="final")
        status, seen = train_and_watch(client, EPOCHS)
        assert status["status"] == "DONE", status
        stats = client.info()["train_stats"]["tokenseg"]
        assert stats["epoch"] == stats["total_epochs"] == EPOCHS and stats["total_time"], stats
        assert stats["best_metric"] > 0, stats
        assert len(set(seen)) > 2, seen  # the progress moved while training ran

        model = client.info()["models"]["tokenseg"]
        assert model["trained"] is True and model["labels"] == labels
        split = json.loads((model_dir / "tokenseg" / "validation_split.json").read_text())
        assert sorted(split.values()) == ["training", "validation"], split
        trained_on = next(i for i, (image, _) in enumerate(cases) if split.get(str(studies / image.name)) == "training")
        mask = infer_mask(client, ids[trained_on], cases[trained_on][0])
        truth = np.asarray(nib.load(cases[trained_on][1]).dataobj)
        assert set(np.unique(mask).tolist()) == {0, *labels.values()}
        scores = [dice(mask, truth, value) for value in labels.values()]
        # well above chance (each structure is ~3% of the voxels); TokenSeg's default network fits several
        # classes slowly from scratch (60 steps on one image: about 0.75 and 0.2), the subject of its own issue
        assert min(scores) > (0.5 if len(labels) == 1 else 0.1) and np.mean(scores) > 0.35, scores

        # batch inference writes masks of the unlabelled images as "original" labels; final labels are untouched
        finals = {p: sha(p) for p in (studies / "labels" / "final").glob("*.nii.gz")}
        response = batch_infer(server, "unlabeled", {"device": "cpu", "label_tag": "original", "max_workers": 1})
        assert response.status_code == 200, response.text
        for image_id, (image, _) in zip(ids[2:], cases[2:]):
            original = studies / "labels" / "original" / image.name
            assert nib.load(original).shape == nib.load(image).shape
            assert set(np.unique(np.asarray(nib.load(original).dataobj)).tolist()) <= {0, *labels.values()}
        assert {p: sha(p) for p in finals} == finals
        response = batch_infer(server, "all", {"device": "cpu", "label_tag": "final"})
        assert response.status_code == 400 and "final" in response.json()["detail"], response.text

        # a new label joins; the validation cases stay the same across the retraining
        client.save_label(ids[2], str(cases[2][1]), tag="final")
        client.train_start("tokenseg", {"max_epochs": 1})
        assert wait_for_training(client)["status"] == "DONE"
        again = json.loads((model_dir / "tokenseg" / "validation_split.json").read_text())
        assert {k: v for k, v in again.items() if k in split} == split and len(again) == 3, again


def test_bad_requests_name_the_image_and_the_problem(tmp_path):
    studies, cases = make_studies(tmp_path, 1, num_cases=2)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 24, 3), np.float32), affine), studies / "three_channels.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((48, 48), np.float32), np.eye(4)), studies / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 2), np.float32), affine), studies / "thin.nii.gz")
    (studies / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    bad_values = tmp_path / "bad_values.nii.gz"
    label = np.asarray(nib.load(cases[0][1]).dataobj).copy()
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(label, nib.load(cases[0][1]).affine), bad_values)

    with MonaiLabelServer(studies, tmp_path / "model", tmp_path / "server.log", conf=task_conf({"tumour": 1})) as server:
        client = client_for(server, tmp_path)
        client.save_label("case_000", str(cases[0][1]), tag="final")
        stored = {p: sha(p) for p in studies.rglob("*.nii.gz")}

        assert_rejected(lambda: client.infer("tokenseg", "three_channels", {}), "400",
                        "image 'three_channels' has 3 channel(s); this task's model takes 1")
        assert_rejected(lambda: client.infer("tokenseg", "flat", {}), "400", "expected a 3D image")
        assert_rejected(lambda: client.infer("tokenseg", "thin", {}), "400", "image 'thin' is too small")
        assert_rejected(lambda: client.infer("tokenseg", "corrupt", {}), "400", "image 'corrupt'")
        assert_rejected(lambda: client.infer("tokenseg", "case_001", {}), "409", "no trained model")
        assert_rejected(lambda: client.save_label("case_000", str(bad_values), tag="final"), "400",
                        "has values [7] outside this task's labels [0, 1]")
        for image in ("three_channels", "flat"):  # an upload gets the same checks
            upload = str(studies / f"{image}.nii.gz")
            assert_rejected(lambda: client.infer("tokenseg", upload, {}, file=upload), "400", "uploaded image")

        assert {p: sha(p) for p in stored} == stored
        assert "Internal Server Error" not in (tmp_path / "server.log").read_text()


def test_where_training_starts(tmp_path):
    """Shipped weights when they fit, all but the output layer when only the channels do, else from scratch."""
    sys.path.insert(0, str(APP))
    from lib.task import prepare_task
    from lib.trainers.tokenseg import TokenSegTrainTask

    studies, cases = make_studies(tmp_path, 2, num_cases=2)
    for image, _ in cases:  # as three-channel images, the shipped model's input
        source = nib.load(studies / image.name)
        data = np.asarray(source.dataobj)
        nib.save(nib.Nifti1Image(np.stack([data, data, data], -1), source.affine), studies / image.name)
    two_labels = {"labels": json.dumps({"tumour": 1, "cyst": 2})}

    scratch = prepare_task(BUNDLE, tmp_path / "m1" / "tokenseg", task_conf({"tumour": 1}), str(studies))
    assert "from scratch" in scratch.start_weights and scratch.pretrained_path is None
    assert not scratch.checkpoint.exists()
    refused = prepare_task(BUNDLE, tmp_path / "m2" / "tokenseg", {"use_pretrained_model": "false"}, str(studies))
    assert "use_pretrained_model false" in refused.start_weights and not refused.checkpoint.exists()
    shipped = prepare_task(BUNDLE, tmp_path / "m3" / "tokenseg", {}, str(studies))
    assert shipped.checkpoint.exists() and "shipped weights" in shipped.start_weights

    partial = prepare_task(BUNDLE, tmp_path / "m4" / "tokenseg", two_labels, str(studies))
    assert partial.pretrained_path == BUNDLE / "models" / "model.pt" and not partial.checkpoint.exists()
    assert "shipped weights of" in partial.start_weights and "but the output layer" in partial.start_weights
    datastore = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    for image, label in cases:
        datastore.save_label(image.name.removesuffix(".nii.gz"), str(label), "final", {})
    defaults = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "tracking": "none"}
    TokenSegTrainTask(str(partial.bundle), {}, defaults, partial.pretrained_path)({"model": "tokenseg"}, datastore)
    trained = torch.load(partial.checkpoint, map_location="cpu", weights_only=True)
    start = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert trained["head.conv.weight"].shape[1] == 3 != start["head.conv.weight"].shape[1]
    for key in ("encoder.0.0.conv.weight", "tokenizer.scorer.0.weight", "decoder.up_blocks.0.fuse.mlp.1.weight"):
        # one epoch from the shipped weights keeps their direction (a fresh network's weights: cosine about 0)
        similarity = torch.nn.functional.cosine_similarity(trained[key].flatten(), start[key].flatten(), dim=0)
        assert similarity > 0.5, (key, similarity)

    # that folder now holds this task's model: another task there is refused, nothing overwritten
    with pytest.raises(RuntimeError, match="holds a model for another task"):
        prepare_task(BUNDLE, partial.bundle, task_conf({"tumour": 1}), str(studies))
    assert torch.load(partial.checkpoint, map_location="cpu", weights_only=True)["head.conv.weight"].shape[1] == 3


def test_early_stopping_ends_a_retraining_on_the_stable_validation_cases(tmp_path):
    """``early_stop_patience`` stops training once the validation Dice stops improving; without it, every epoch runs."""
    sys.path.insert(0, str(APP))
    from lib.task import prepare_task
    from lib.trainers.tokenseg import TokenSegTrainTask

    studies, cases = make_studies(tmp_path, 1, num_cases=2)
    datastore = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    for image, label in cases:
        datastore.save_label(image.name.removesuffix(".nii.gz"), str(label), "final", {})
    defaults = {"max_epochs": 5, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "tracking": "none"}
    epochs = {}
    for patience in (0, 1):
        task = prepare_task(BUNDLE, tmp_path / f"patience_{patience}" / "tokenseg", task_conf({"tumour": 1}),
                            str(studies))
        trainer = TokenSegTrainTask(str(task.bundle), {}, defaults, task.pretrained_path)
        # no rise of the Dice reaches 1: every validation after the first counts as not improving
        request = {"model": "tokenseg", "seed": 0, "early_stop_patience": patience, "early_stop_min_delta": 1.0}
        metrics = trainer(request, datastore)
        assert "val_mean_dice" in metrics and task.checkpoint.exists()
        epochs[patience] = trainer.stats()["epoch"]
    # the first validation sets the best; the second does not beat it by 1, and patience 1 stops there
    assert epochs == {0: 5, 1: 2}, epochs


def test_dropout_scoring_samples_dropout_and_keeps_the_batch_norm_statistics():
    """MONAI Label's epistemic scoring runs the infer task "in train mode": only dropout may sample."""
    sys.path.insert(0, str(APP))
    from monailabel.interfaces.tasks.infer_v2 import InferType
    from monailabel.tasks.infer.bundle import BundleConstants

    from tokenseg.bundle_task import BUNDLE_MODELS

    from lib.infers.tokenseg import BundleModel

    model = BundleModel(str(BUNDLE), {}, BundleConstants(), InferType.SEGMENTATION, BUNDLE_MODELS["model.pt"],
                        train_mode=True, skip_writer=True, dropout=0.2)
    network = model._get_network("cpu", None)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    statistics = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    image = torch.randn(1, 3, 64, 64, 32) * 3 + 1  # not the training data's statistics
    with torch.no_grad():
        first, second = network(image), network(image)
    assert norms and not any(m.training for m in norms)
    assert not torch.equal(first, second)  # the samples differ: dropout is on
    for (mean, var), norm in zip(statistics, norms):
        assert torch.equal(mean, norm.running_mean) and torch.equal(var, norm.running_var)
