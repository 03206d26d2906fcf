"""The bundle's evaluation measures in each image's own space, HD95 in millimetres.

A stand-in network turns a known prediction (written as the image) into
logits, so the expected Dice and HD95 are computed directly on the original
arrays with the original spacing, and ``python -m monai.bundle run evaluating``
must agree after its resampling to ``pixdim`` and back.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from bundle_helpers import bundle_args, copy_bundle, monai_bundle

SPACING = (0.8, 0.8, 4.0)  # anisotropic, and not the bundle's pixdim (1.5, 1.5, 3.0)

STAND_IN = '''
import torch


class MaskToLogits(torch.nn.Module):
    """(B, 1, ...) image holding a 0/1 prediction -> (B, 2, ...) logits of that prediction."""

    def forward(self, x):
        low, high = x.amin(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)
        foreground = (x > (low + high) / 2).float()
        return torch.cat([1 - foreground, foreground], 1) * 20 - 10
'''


def one_hot(mask: np.ndarray) -> torch.Tensor:
    m = torch.as_tensor(mask)[None, None].float()
    return torch.cat([1 - m, m], 1)


def test_dice_and_hd95_in_millimetres_on_the_original_grid(tmp_path):
    label = np.zeros((60, 60, 16), np.uint8)
    label[20:40, 22:38, 5:11] = 1
    prediction = np.zeros_like(label)
    prediction[25:45, 22:38, 7:13] = 1  # 5 voxels (4 mm) off in x, 2 slices (8 mm) off in z
    affine = np.diag([*SPACING, 1.0])
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    # the "image" is the prediction, plus a constant so that intensity normalisation keeps it two-valued
    nib.save(nib.Nifti1Image(prediction.astype(np.float32) + 1.0, affine), data / "images" / "case.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), data / "labels" / "case.nii.gz")
    (data / "dataset.json").write_text(json.dumps({
        "training": [{"image": "images/case.nii.gz", "label": "labels/case.nii.gz"}],
        "test": [{"image": "images/case.nii.gz", "label": "labels/case.nii.gz"}],
    }))
    (tmp_path / "stand_in.py").write_text(textwrap.dedent(STAND_IN))
    bundle = copy_bundle(tmp_path / "bundle")
    torch.save({}, bundle / "models" / "model.pt")  # the stand-in has no weights

    monai_bundle(
        "run", "evaluating", *bundle_args(bundle, "train.json", "evaluate.json"), "--dataset_dir", str(data),
        "--in_channels", "1", "--network_def", "{'_target_': 'stand_in.MaskToLogits'}", "--num_workers", "0",
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    measured = {name: float(value) for name, value in csv.reader(open(bundle / "eval" / "metrics.csv"))}

    expected_dice = compute_dice(one_hot(prediction), one_hot(label), include_background=False).item()
    expected_mm = compute_hausdorff_distance(one_hot(prediction), one_hot(label), percentile=95, spacing=SPACING).item()
    in_voxels = compute_hausdorff_distance(one_hot(prediction), one_hot(label), percentile=95).item()
    assert abs(measured["val_mean_dice"] - expected_dice) < 0.02, (measured, expected_dice)
    assert abs(measured["val_hd95"] - expected_mm) < 0.5, (measured, expected_mm, in_voxels)
    # millimetres and voxels differ here, so the check tells them apart
    assert abs(in_voxels - expected_mm) > 2, (in_voxels, expected_mm)


def test_hd95_in_millimetres_for_a_batch_of_two_cases_each_with_its_spacing():
    from ignite.engine import Engine
    from monai.data import MetaTensor, decollate_batch

    from tokenseg.handlers import PhysicalHausdorffDistance

    label = np.zeros((30, 30, 12), np.uint8)
    label[10:20, 10:20, 3:8] = 1
    prediction = np.zeros_like(label)
    prediction[13:23, 10:20, 4:9] = 1
    spacings = [(0.8, 0.8, 4.0), (2.0, 1.0, 1.0)]
    expected = [
        compute_hausdorff_distance(one_hot(prediction), one_hot(label), percentile=95, spacing=s).item()
        for s in spacings
    ]
    assert abs(expected[0] - expected[1]) > 1  # the two spacings give two different distances

    def batch_of(mask: np.ndarray) -> MetaTensor:
        affines = torch.stack([torch.diag(torch.tensor([*s, 1.0], dtype=torch.float64)) for s in spacings])
        return MetaTensor(torch.cat([one_hot(mask)] * 2), affine=affines)

    for as_list in (True, False):  # the evaluator's decollated cases, and a whole batch
        pred, lab = batch_of(prediction), batch_of(label)
        if as_list:
            pred, lab = decollate_batch(pred), decollate_batch(lab)
        engine = Engine(lambda engine, batch: (pred, lab))
        PhysicalHausdorffDistance(include_background=False, percentile=95, reduction="none").attach(engine, "hd95")
        engine.run([0], max_epochs=1)
        measured = torch.as_tensor(engine.state.metrics["hd95"]).flatten().tolist()
        assert np.allclose(measured, expected, atol=1e-4), (as_list, measured, expected)
        # the handler called with the whole batch at once (ignite splits a list of cases, a direct call does not)
        handler = PhysicalHausdorffDistance(include_background=False, percentile=95, reduction="none")
        handler.update((pred, lab))
        measured = handler.metric_fn.aggregate().flatten().tolist()
        assert np.allclose(measured, expected, atol=1e-4), (as_list, measured, expected)
