"""Real-world files through the bundle's inference, and bad input with clear errors and nothing lost."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tokenseg.data.demo import ensure_demo_dataset
from tokenseg.networks import TokenSeg

from bundle_helpers import bundle_args, copy_bundle, monai_bundle, write_datalist

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_affine_from_itk(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (x, y, z) and RAS affine of an image as ITK (SimpleITK) reads it, independently of MONAI."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    dim = image.GetDimension()  # 4 for a multi-channel NIfTI: channels are the last axis
    direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing()[:3])
    affine[:3, 3] = image.GetOrigin()[:3]
    return tuple(image.GetSize()[:3]), LPS_TO_RAS @ affine


def blob(shape, channels=1, seed=0) -> np.ndarray:
    """(x, y, z[, c]) float32 volume with a bright ellipsoid."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    inside = sum(g**2 for g in grid) < 0.3
    data = [inside * (c + 1.0) + 0.1 * rng.standard_normal(shape) for c in range(channels)]
    return np.stack(data, -1).astype(np.float32) if channels > 1 else data[0].astype(np.float32)


def write_sitk(array_xyz: np.ndarray, path: Path, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(np.transpose(array_xyz, (2, 1, 0)))  # SimpleITK arrays are (z, y, x)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(array_xyz: np.ndarray, folder: Path, spacing, origin) -> Path:
    """An MR DICOM series, one file per slice, as a scanner would write it."""
    folder.mkdir()
    volume = sitk.GetImageFromArray(np.transpose((array_xyz * 500).astype(np.int16), (2, 1, 0)))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{z + 1}",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{p:.4f}" for p in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:.4f}",
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(slice_)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    bundle = copy_bundle(tmp_path_factory.mktemp("inputs") / "bundle")
    for channels in (1, 3):  # weights need not be trained to check geometry
        torch.manual_seed(channels)
        net = TokenSeg(channels, 2, img_size=(64, 64, 32))
        torch.save(net.state_dict(), bundle / "models" / f"model_{channels}ch.pt")
    return bundle


def infer(bundle: Path, images: list[Path], out: Path, channels: int, check: bool = True):
    return monai_bundle(
        "run", "inference", *bundle_args(bundle, "inference.json"),
        "--datalist", json.dumps([str(p) for p in images]), "--output_dir", str(out),
        "--in_channels", str(channels), "--ckpt_path", str(bundle / "models" / f"model_{channels}ch.pt"),
        "--num_workers", "0", check=check,
    )


def assert_same_space(image: Path, mask: Path) -> None:
    shape, affine = ras_affine_from_itk(image)
    result = nib.load(mask)
    assert result.shape == shape, (image, result.shape, shape)
    np.testing.assert_allclose(result.affine, affine, atol=1e-3, err_msg=str(image))


def test_real_world_files_come_back_in_their_own_space(bundle, tmp_path):
    theta = math.radians(20)
    rotation = (math.cos(theta), -math.sin(theta), 0.0, math.sin(theta), math.cos(theta), 0.0, 0.0, 0.0, 1.0)
    lps_flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    single_channel = {
        "nrrd": write_sitk(blob((80, 70, 30)), tmp_path / "scan.nrrd", (0.9, 0.9, 2.5), (10.0, -20.0, 5.0)),
        "dicom": write_dicom_series(blob((64, 64, 24)), tmp_path / "dicom_series", (1.2, 1.2, 3.0), (-40.0, -30.0, 12.0)),
        "oblique": write_sitk(blob((72, 72, 36)), tmp_path / "oblique.nii.gz", (1.5, 1.5, 3.0), (5.0, 5.0, 5.0), rotation),
        "anisotropic": write_sitk(blob((120, 110, 20)), tmp_path / "aniso.mha", (0.6, 0.7, 4.5), direction=lps_flipped),
        "smaller_than_patch": write_sitk(blob((30, 26, 10)), tmp_path / "small.nii.gz", (1.5, 1.5, 3.0)),
    }
    out = tmp_path / "masks"
    infer(bundle, list(single_channel.values()), out, channels=1)
    for name, image in single_channel.items():
        stem = image.name.split(".")[0]
        assert_same_space(image, out / f"{stem}_seg.nii.gz")

    three_phase = tmp_path / "dce.nii.gz"
    nib.save(nib.Nifti1Image(blob((70, 60, 30), channels=3), np.diag([1.4, 1.4, 2.8, 1.0])), three_phase)
    infer(bundle, [three_phase], out, channels=3)
    assert_same_space(three_phase, out / "dce_seg.nii.gz")
    assert len(list(out.iterdir())) == 6  # one mask per input; no input was written over


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    demo = Path(ensure_demo_dataset(folder / "demo"))
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"not really gzip" * 50)
    text = folder / "notes.txt"
    text.write_text("this is not an image")
    small_label = folder / "small_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 20), np.uint8), np.diag([1.5, 1.5, 3.0, 1.0])), small_label)
    return demo, corrupt, text, small_label


@pytest.mark.parametrize("problem", ["missing image", "label shape", "corrupt file", "no label", "not an image"])
def test_bad_training_data_fails_clearly_and_keeps_the_checkpoint(problem, bad_inputs, tmp_path):
    demo, corrupt, text, small_label = bad_inputs
    bundle = copy_bundle(tmp_path / "bundle")
    checkpoint = bundle / "models" / "model.pt"
    checkpoint.write_bytes(b"the previous checkpoint")
    before = sha(checkpoint)
    datalist = json.loads(write_datalist(tmp_path / "list.json", demo, 3, 1, 1).read_text())
    entry = datalist["training"][1]
    bad_file, message = {
        "missing image": (str(demo / "imagesTr" / "gone.nii.gz"), "no such file"),
        "label shape": (str(small_label), "has spatial shape"),
        "corrupt file": (str(corrupt), "not a readable image"),
        "no label": (None, "has no 'label'"),
        "not an image": (str(text), "not a readable image"),
    }[problem]
    if problem == "no label":
        del entry["label"]
        bad_file = entry["image"]
    elif problem == "label shape":
        entry["label"] = bad_file
    else:
        entry["image"] = bad_file
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    proc = monai_bundle(
        "run", "training", *bundle_args(bundle, "train.json"), "--dataset_dir", str(demo),
        "--datalist", str(tmp_path / "list.json"), "--epochs", "1", "--num_workers", "0", check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr and Path(bad_file).name in proc.stderr, proc.stderr[-3000:]
    assert sha(checkpoint) == before


@pytest.mark.parametrize("problem", ["missing image", "corrupt file", "not an image", "wrong channels", "overwrite input"])
def test_bad_inference_input_fails_clearly_and_keeps_outputs(problem, bundle, bad_inputs, tmp_path):
    demo, corrupt, text, _ = bad_inputs
    out = tmp_path / "masks"
    out.mkdir()
    earlier = out / "breast_020_seg.nii.gz"
    earlier.write_bytes(b"an earlier result")
    good = demo / "imagesTs" / "breast_020.nii.gz"
    images, channels, message = {
        "missing image": ([good, demo / "missing.nii.gz"], 3, "no such file"),
        "corrupt file": ([good, corrupt], 3, "not a readable image"),
        "not an image": ([good, text], 3, "not a readable image"),
        "wrong channels": ([good, demo / "labelsTr" / "breast_000.nii.gz"], 3, "expected a 3D image with 3 channel"),
        "overwrite input": ([good, earlier], 3, "would be written over the input"),
    }[problem]
    proc = infer(bundle, images, out, channels, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert earlier.read_bytes() == b"an earlier result"  # the failure came before anything was written
