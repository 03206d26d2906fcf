"""A bundle written for a new task (``python -m tokenseg.bundle_task``) agrees with itself and trains."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tokenseg.bundle_task import parse_labels, read_task, task_from_images, write_task_bundle
from tokenseg.data.synthetic import write_blob_cases

from bundle_helpers import BUNDLE, bundle_args, monai_bundle

LABELS = {"tumour": 1, "cyst": 2}


def test_labels_are_checked():
    assert parse_labels('{"tumour": 1, "cyst": 2}') == LABELS
    for bad, message in [
        ('{"tumour": 2}', "1..1"),
        ('{"a": 1, "b": 3}', "1..2"),
        ('{"background": 1}', "not 'background'"),
        ("tumour", "JSON object"),
        ('{"a": "1"}', "integer value"),
        ("{}", "non-empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_labels(bad)


def test_spacing_and_patch_from_the_images(tmp_path):
    cases = write_blob_cases(tmp_path, 3, size=(40, 56, 12), spacing=(0.8, 0.8, 5.0))
    pixdim, patch = task_from_images([image for image, _ in cases], (1.5, 1.5, 3.0), (64, 64, 32))
    assert pixdim == [0.8, 0.8, 5.0]
    assert patch == [48, 64, 16]  # the images (40, 56, 12 voxels at that spacing) rounded up to multiples of 16
    (tmp_path / "junk.nii.gz").write_text("not an image")  # left out, not fatal
    assert task_from_images([tmp_path / "junk.nii.gz"], (1.5, 1.5, 3.0), (64, 64, 32)) == ([1.5, 1.5, 3.0], [64, 64, 32])


def test_weights_copied_only_when_they_fit(tmp_path):
    same = write_task_bundle(BUNDLE, tmp_path / "same", {"mass": 1}, 3)
    assert (tmp_path / "same" / "models" / "model.pt").is_file()
    assert same.class_names == ["background", "mass"] and same["pixdim"] == read_task(BUNDLE)["pixdim"]
    write_task_bundle(BUNDLE, tmp_path / "two", LABELS, 3)
    assert not (tmp_path / "two" / "models" / "model.pt").exists()
    write_task_bundle(BUNDLE, tmp_path / "none", {"mass": 1}, 3, copy_weights=False)
    assert not (tmp_path / "none" / "models" / "model.pt").exists()


def test_task_bundle_from_the_command_line_verifies_trains_and_infers(tmp_path):
    data = tmp_path / "data"
    cases = write_blob_cases(data, 4, num_labels=2)
    dataset = {
        "training": [{"image": str(i.relative_to(data)), "label": str(lbl.relative_to(data))} for i, lbl in cases[:3]],
        "test": [str(cases[3][0].relative_to(data))],
    }
    (data / "dataset.json").write_text(json.dumps(dataset))
    bundle = tmp_path / "tumour_bundle"
    command = [sys.executable, "-m", "tokenseg.bundle_task", "--source", str(BUNDLE), "--out", str(bundle),
               "--labels", json.dumps(LABELS), "--in_channels", "1", "--images", str(data)]
    assert "no weights" in subprocess.run(command, check=True, capture_output=True, text=True).stdout

    configs = bundle / "configs"
    for name in ("train.json", "inference.json"):
        config = json.loads((configs / name).read_text())
        assert config["class_names"] == ["background", "tumour", "cyst"] and config["in_channels"] == 1
        assert config["pixdim"] == [1.0, 1.0, 2.5] and config["patch_size"] == [48, 48, 32]
    metadata = json.loads((configs / "metadata.json").read_text())
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {"0": "background", "1": "tumour", "2": "cyst"} and pred["num_channels"] == 3
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert "eval_metrics" not in metadata  # the shipped model's results are not this task's
    assert read_task(bundle)["labels"] == LABELS
    monai_bundle("verify_metadata", "--meta_file", str(configs / "metadata.json"),
                 "--filepath", str(configs / "meta_schema.json"))
    monai_bundle("verify_net_in_out", "network_def", "--meta_file", str(configs / "metadata.json"),
                 "--config_file", str(configs / "inference.json"))

    monai_bundle("run", "training", *bundle_args(bundle, "train.json"), "--dataset_dir", str(data),
                 "--epochs", "1", "--val_interval", "1", "--num_workers", "0")
    assert (bundle / "models" / "model.pt").is_file()
    out = tmp_path / "masks"
    monai_bundle("run", "inference", *bundle_args(bundle, "inference.json"), "--dataset_dir", str(data),
                 "--output_dir", str(out), "--num_workers", "0")
    mask = nib.load(out / "case_003_seg.nii.gz")
    assert mask.shape == nib.load(cases[3][0]).shape
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2}

    bad = subprocess.run([*command[:-6], "--labels", '{"tumour": 3}', "--in_channels", "1"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "label values must be 1..1" in bad.stderr
