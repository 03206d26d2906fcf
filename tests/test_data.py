"""The demo dataset generator and datalists: nothing of the user's is replaced, errors name the file."""

import json

import pytest

from tokenseg.data.datalist import image_entries
from tokenseg.data.demo import ensure_demo_dataset


def test_demo_never_replaces_another_dataset(tmp_path):
    other = tmp_path / "Task02_Heart"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"name": "Heart", "training": []}))
    (other / "precious.nii.gz").write_bytes(b"someone's data")
    with pytest.raises(FileExistsError, match="not a TokenSeg generated dataset"):
        ensure_demo_dataset(other)
    assert (other / "precious.nii.gz").read_bytes() == b"someone's data"


def test_image_entries_checks_channels_before_anything_runs(tmp_path):
    import nibabel as nib
    import numpy as np

    three = tmp_path / "three.nii.gz"
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), three)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), one)
    assert image_entries([three], tmp_path / "out", 3) == [{"image": str(three)}]
    with pytest.raises(ValueError, match=r"one.nii.gz: expected a 3D image with 3 channel\(s\), got 1"):
        image_entries([three, one], tmp_path / "out", 3)


def test_small_target_dataset_is_hard_the_way_it_says(tmp_path):
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import binary_dilation

    from tokenseg.data.small_targets import SMALL_TARGET_SPLITS, ensure_small_target_dataset

    folder = ensure_small_target_dataset(tmp_path / "small")
    assert ensure_small_target_dataset(folder) == folder  # written once
    datalist = json.loads((tmp_path / "small" / "dataset.json").read_text())
    assert {split: len(datalist[split]) for split in SMALL_TARGET_SPLITS} == SMALL_TARGET_SPLITS
    for entry in datalist["training"][:4] + datalist["test"]:
        image = nib.load(tmp_path / "small" / entry["image"])
        label = np.asarray(nib.load(tmp_path / "small" / entry["label"]).dataobj)
        data = np.asarray(image.dataobj)
        assert image.ndim == 3 and np.allclose(image.header.get_zooms(), (0.8, 0.8, 5.0))  # one channel, thick slices
        assert 0.001 <= (label == 1).mean() <= 0.005  # a small target
        ring = binary_dilation(label == 1, iterations=2) & (label == 0)
        contrast = data[label == 1].mean() - data[ring].mean()
        assert 0 < contrast < 2.5 * data[ring].std()  # brighter than around it, but within the noise and texture
