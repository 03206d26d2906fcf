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
    with pytest.raises(FileExistsError, match="not a TokenSeg demo"):
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
