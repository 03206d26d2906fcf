"""The MONAI Bundle through the real `python -m monai.bundle` and `torchrun` commands."""

from __future__ import annotations

import csv
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from tokenseg.data.demo import ensure_demo_dataset
from tokenseg.networks import TokenSeg

from bundle_helpers import BUNDLE, bundle_args, copy_bundle, monai_bundle, run, write_datalist

TRAIN_FAST = ["--num_workers", "0", "--cache_rate", "0"]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("data") / "demo")


@pytest.fixture(scope="session")
def small_datalist(demo_dir, tmp_path_factory):
    from pathlib import Path

    return write_datalist(tmp_path_factory.mktemp("datalist") / "small.json", Path(demo_dir), 4, 1, 2)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, demo_dir, small_datalist):
    """A bundle copy trained for 2 epochs with the exact README training command."""
    bundle = copy_bundle(tmp_path_factory.mktemp("trained") / "bundle")
    proc = monai_bundle(
        "run", "training", *bundle_args(bundle, "train.json"),
        "--dataset_dir", demo_dir, "--datalist", str(small_datalist), "--epochs", "2", "--val_interval", "1", *TRAIN_FAST,
    )
    return bundle, proc.stdout + proc.stderr


def test_training_writes_checkpoint_and_validation_dice(trained_bundle):
    bundle, log = trained_bundle
    checkpoint = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "tokenizer.scorer.0.weight" in checkpoint  # the TokenSeg state dict, saved from {"model": network}
    assert "val_mean_dice" in log and "Epoch[2] Metrics" in log
    for diagnostic in ("loss_dice_ce", "loss_vq", "loss_boundary", "codebook_perplexity", "boundary_hit_rate"):
        assert diagnostic in log
    assert (bundle / "eval" / "tensorboard").is_dir()


def test_training_with_empty_validation_saves_final_model(tmp_path, demo_dir, small_datalist):
    bundle = copy_bundle(tmp_path / "bundle")
    monai_bundle(
        "run", "training", *bundle_args(bundle, "train.json"),
        "--dataset_dir", demo_dir, "--datalist", str(small_datalist), "--epochs", "1",
        "--validate#dataset#data", "[]", *TRAIN_FAST,
    )
    assert (bundle / "models" / "model.pt").is_file()


def test_inference_writes_masks_in_input_space(trained_bundle, demo_dir, tmp_path):
    bundle, _ = trained_bundle
    out = tmp_path / "masks"
    monai_bundle(
        "run", "inference", *bundle_args(bundle, "inference.json"), "--dataset_dir", demo_dir, "--output_dir", str(out)
    )
    masks = sorted(out.glob("*_seg.nii.gz"))
    assert len(masks) == 4  # the demo's test split
    for mask in masks:
        source = nib.load(f"{demo_dir}/imagesTs/{mask.name.replace('_seg', '')}")
        result = nib.load(mask)
        assert result.shape == source.shape[:3]
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1}


def test_evaluation_writes_metrics(trained_bundle, demo_dir, small_datalist):
    bundle, _ = trained_bundle
    monai_bundle(
        "run", "evaluating", *bundle_args(bundle, "train.json", "evaluate.json"),
        "--dataset_dir", demo_dir, "--datalist", str(small_datalist), "--num_workers", "0",
    )
    rows = dict(csv.reader(open(bundle / "eval" / "metrics.csv")))
    assert set(rows) == {"val_mean_dice", "val_mean_iou", "val_hd95"}
    assert 0 <= float(rows["val_mean_dice"]) <= 1
    per_case = list(csv.reader(open(bundle / "eval" / "val_mean_dice_raw.csv")))
    assert len(per_case) == 1 + 2  # header and the 2 test cases


@pytest.mark.parametrize("attempt", range(10))  # once, rank 1 aborted after training: it must not flake
def test_multi_gpu_config_trains_with_torchrun_on_cpu(tmp_path, demo_dir, small_datalist, attempt):
    bundle = copy_bundle(tmp_path / "bundle")
    proc = run([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", *bundle_args(bundle, "train.json", "multi_gpu_train.json"),
        "--dataset_dir", demo_dir, "--datalist", str(small_datalist), "--epochs", "1", "--val_interval", "1", *TRAIN_FAST,
    ])
    assert (bundle / "models" / "model.pt").is_file()
    assert "val_mean_dice" in proc.stdout + proc.stderr


def test_shipped_checkpoint_is_under_the_zoo_file_limit_and_loads():
    path = BUNDLE / "models" / "model.pt"
    assert path.stat().st_size < 25 * 2**20  # the model zoo's limit per file
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    network = TokenSeg(3, 2, img_size=(64, 64, 32))  # the bundle's network_def
    network.load_state_dict(state)  # strict: every key, cast to the network's float32
    assert all(p.dtype == torch.float32 for p in network.parameters())
    with torch.no_grad():
        assert torch.isfinite(network.eval()(torch.randn(1, 3, 64, 64, 32))).all()


def test_shipped_interactive_checkpoint_is_under_the_zoo_file_limit_and_loads():
    path = BUNDLE / "models" / "model_deepedit.pt"
    assert path.stat().st_size < 25 * 2**20
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    network = TokenSeg(3 + 2, 2, img_size=(64, 64, 32), guidance_channels=2)  # network_def with the interactive mixin
    network.load_state_dict(state)
    with torch.no_grad():
        assert torch.isfinite(network.eval()(torch.randn(1, 5, 64, 64, 32))).all()


@pytest.fixture(scope="session")
def interactive_bundle(tmp_path_factory, demo_dir, small_datalist):
    """A bundle copy (with the shipped automatic weights) whose interactive model trains for 1 epoch, as the model
    card's command does: train.json with train_deepedit.json over it."""
    bundle = copy_bundle(tmp_path_factory.mktemp("interactive") / "bundle", with_models=True)
    (bundle / "models" / "model_deepedit.pt").unlink(missing_ok=True)
    proc = monai_bundle(
        "run", "training", *bundle_args(bundle, "train.json", "train_deepedit.json"),
        "--dataset_dir", demo_dir, "--datalist", str(small_datalist), "--epochs", "1", "--val_interval", "1", *TRAIN_FAST,
    )
    return bundle, proc.stdout + proc.stderr


def test_interactive_training_simulates_clicks_and_starts_from_the_automatic_model(interactive_bundle):
    bundle, log = interactive_bundle
    state = torch.load(bundle / "models" / "model_deepedit.pt", map_location="cpu", weights_only=True)
    assert state["encoder.0.0.conv.weight"].shape[1] == 3 + 2  # the phases and one click channel per class
    assert "Number of simulated clicks" in log  # MONAI's DeepEdit click simulation ran inside the training steps
    assert "val_mean_dice" in log and "dst' model updated" in log  # warm start from models/model.pt
    automatic = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert torch.equal(automatic["encoder.0.0.conv.weight"], shipped["encoder.0.0.conv.weight"])  # left as it was


def test_interactive_evaluation_and_inference(interactive_bundle, demo_dir, small_datalist, tmp_path):
    bundle, _ = interactive_bundle
    monai_bundle(
        "run", "evaluating", *bundle_args(bundle, "train.json", "train_deepedit.json", "evaluate.json"),
        "--dataset_dir", demo_dir, "--datalist", str(small_datalist), "--num_workers", "0",
    )
    rows = dict(csv.reader(open(bundle / "eval" / "metrics.csv")))
    assert 0 <= float(rows["val_mean_dice"]) <= 1
    out = tmp_path / "masks"
    monai_bundle(
        "run", "inference", *bundle_args(bundle, "inference.json", "inference_deepedit.json"),
        "--dataset_dir", demo_dir, "--output_dir", str(out),
    )
    masks = sorted(out.glob("*_seg.nii.gz"))
    assert len(masks) == 4
    source = nib.load(f"{demo_dir}/imagesTs/{masks[0].name.replace('_seg', '')}")
    assert nib.load(masks[0]).shape == source.shape[:3]
