"""Small synthetic volumes generated in memory (no download), for demos and tests."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

__all__ = ["single_lesion_volume", "write_blob_cases"]


def single_lesion_volume(
    size: Sequence[int] = (32, 32, 32), in_channels: int = 1, noise: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ellipsoidal lesion with a bumpy surface in a noisy background.

    Returns:
        image: (1, in_channels, D, H, W) float; channel c is brighter in the
            lesion by (c + 1) / in_channels (a lesion enhancing over phases).
        label: (1, 1, D, H, W) float in {0, 1}.
    """
    generator = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*(torch.linspace(-1, 1, s) for s in size), indexing="ij")
    centre = (torch.rand(3, generator=generator) - 0.5) * 0.4
    radii = 0.3 + 0.2 * torch.rand(3, generator=generator)
    radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)).sqrt()
    angle = torch.atan2(grids[1] - centre[1], grids[0] - centre[0])
    label = (radius < 1.0 + 0.15 * torch.sin(5 * angle)).float()[None, None]
    phases = [label * (c + 1) / in_channels for c in range(in_channels)]
    image = torch.cat(phases, dim=1) + noise * torch.randn((1, in_channels, *size), generator=generator)
    return image, label


def write_blob_cases(
    folder: str | os.PathLike,
    num_cases: int,
    num_labels: int = 1,
    size: Sequence[int] = (48, 48, 24),
    spacing: Sequence[float] = (1.0, 1.0, 2.5),
    noise: float = 0.3,
    contrast: float = 1.0,
    seed: int = 0,
) -> list[tuple[Path, Path]]:
    """Write single-channel NIfTI cases with ``num_labels`` blob structures, and their labels.

    Each case is ``<folder>/case_NNN.nii.gz`` (float32, anisotropic ``spacing``,
    an oblique-free affine with a non-zero origin) and its label
    ``<folder>/labels/case_NNN.nii.gz`` (uint8, values 0..num_labels): structure
    ``k`` is an ellipsoid of intensity ``contrast`` times +1, -1, +2, -2, ... for
    k = 1, 2, 3, 4, ... over a zero background (Gaussian noise of s.d. ``noise``):
    each structure differs from the background and from the others. Returns ``[(image, label), ...]``.
    """
    folder = Path(folder)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    cases = []
    for index in range(num_cases):
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        label = torch.zeros(tuple(size), dtype=torch.uint8)
        for value in range(1, num_labels + 1):
            _, blob = single_lesion_volume(size, noise=0.0, seed=seed * 1000 + 100 * value + index)
            shift = int(size[0] * (0.5 * value - 0.25 * (num_labels + 1)))  # structures side by side along axis 0
            blob = torch.roll(blob[0, 0] > 0, shifts=shift, dims=0)
            label[blob & (label == 0)] = value
        levels = torch.tensor([0.0] + [(-1) ** (k + 1) * ((k + 1) // 2) for k in range(1, num_labels + 1)])
        image = contrast * levels[label.long()] + noise * torch.randn(tuple(size), generator=generator)
        image_path, label_path = folder / f"case_{index:03d}.nii.gz", folder / "labels" / f"case_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.numpy().astype(np.float32), affine), image_path)
        nib.save(nib.Nifti1Image(label.numpy(), affine), label_path)
        cases.append((image_path, label_path))
    return cases
