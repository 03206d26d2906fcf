"""Checks of image files before any work starts: readable, and labels that fit their images.

Reading only headers keeps the check cheap for large datasets. Every error
names the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

__all__ = ["ImageInfo", "read_image_info", "check_image_label_pair", "check_label_values"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class ImageInfo(tuple):
    """(spatial_shape, spacing, channels) of an image, from its header only."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self[0]

    @property
    def spacing(self) -> tuple[float, ...]:
        return self[1]

    @property
    def channels(self) -> int:
        return self[2]


def read_image_info(path: str | os.PathLike) -> ImageInfo:
    """Spatial shape and spacing of a NIfTI, NRRD, MHA, ... file or a DICOM series folder.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable 3D image (corrupt, not an image, a folder without DICOM).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    try:
        if path.is_dir():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise ValueError("a folder without a DICOM series")
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            shape = (*reader.GetSize()[:2], len(files))
            spacing = reader.GetSpacing()[:3]
            channels = reader.GetNumberOfComponents()
        elif path.name.endswith(NIFTI_SUFFIXES):
            header = nib.load(str(path)).header
            data_shape = header.get_data_shape()
            shape = tuple(int(s) for s in data_shape[:3])
            spacing = tuple(float(s) for s in header.get_zooms()[:3])
            channels = int(np.prod(data_shape[3:])) if len(data_shape) > 3 else 1  # channels last, as in MSD
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape, spacing = reader.GetSize()[:3], reader.GetSpacing()[:3]
            channels = reader.GetNumberOfComponents() * int(np.prod(reader.GetSize()[3:]))
    except Exception as error:  # the readers raise many kinds; the caller needs one
        raise ValueError(f"{path}: not a readable image ({error}).") from error
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(f"{path}: expected a 3D image, got spatial shape {tuple(shape)}.")
    return ImageInfo((tuple(int(s) for s in shape), tuple(float(s) for s in spacing), int(channels)))


def check_image_label_pair(image: str | os.PathLike, label: str | os.PathLike) -> None:
    """Raise ValueError naming both files when the label's grid does not match its image's."""
    image_info, label_info = read_image_info(image), read_image_info(label)
    if image_info.shape != label_info.shape:
        raise ValueError(
            f"label {label} has spatial shape {label_info.shape}, but its image {image} has {image_info.shape}."
        )
    if not np.allclose(image_info.spacing, label_info.spacing, rtol=1e-3):
        raise ValueError(
            f"label {label} has spacing {label_info.spacing}, but its image {image} has {image_info.spacing}."
        )


def check_label_values(label: str | os.PathLike, allowed: set[int]) -> None:
    """Raise ValueError naming the file when the label holds values outside ``allowed`` (reads the voxels)."""
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(label))))
    unexpected = sorted(v.item() for v in values if v not in allowed or v != int(v))
    if unexpected:
        raise ValueError(
            f"label {label} has values {unexpected[:10]} outside this task's labels {sorted(allowed)} (0 is background)."
        )
