"""The small-target dataset: single-channel brain-like MRI with one small, low-contrast lesion, generated.

A public analogue of the case where TokenSeg once learned nothing: a
single-channel brain MRI of 256 x 256 x 25 voxels at 0.78 x 0.78 x 6.5 mm
with a tumour covering 0.25% of the voxels. Each case is 128 x 128 x 24
voxels at 0.8 x 0.8 x 5.0 mm (thick slices, as clinical MRI often has):

- a head-shaped ellipsoid of two tissues (a thresholded smooth random field,
  grey-like 0.8 and white-like 1.0) with a darker rim (skull and scalp) and
  dark fluid spaces, in air;
- one lesion, an irregular ellipsoid 13 to 21 mm across in-plane and three
  to five slices thick: 0.1% to 0.5% of the voxels;
- intensity close to its surroundings: the lesion is 0.25 brighter than the
  tissue it sits in, against tissue texture of s.d. 0.08 and Rician noise of
  s.d. 0.1 (a contrast-to-noise ratio near 2 per voxel), under a smooth bias field.

Decathlon layout with fixed splits (12 training, 10 validation, 20 test:
enough test cases that a difference of a few Dice points between two
models shows over 5 seeds); case ``i`` always comes from seed ``i``, so the
12 training cases are those of version 1, which had 4 validation and 4 test cases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter

from tokenseg.data.generated import ensure_generated, write_decathlon

__all__ = ["SMALL_TARGET_SPLITS", "make_small_target_case", "ensure_small_target_dataset", "default_small_target_dir"]

SMALL_TARGET_VERSION = 2
SMALL_TARGET_SHAPE = (128, 128, 24)
SMALL_TARGET_SPACING = (0.8, 0.8, 5.0)
SMALL_TARGET_SPLITS = {"training": 12, "validation": 10, "test": 20}


def default_small_target_dir() -> Path:
    """``$TOKENSEG_SMALL_TARGET_DIR`` or ``~/.cache/tokenseg/small_targets``."""
    return Path(os.environ.get("TOKENSEG_SMALL_TARGET_DIR", Path.home() / ".cache" / "tokenseg" / "small_targets"))


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


class Head(NamedTuple):
    """A head-shaped phantom's geometry on a voxel grid (arrays (X, Y, Z), coordinates (3, X, Y, Z) in mm)."""

    coords: np.ndarray  # voxel centres in mm
    radius: np.ndarray  # elliptic radius from the head's centre: 1 at the scalp
    head: np.ndarray  # inside the scalp
    brain: np.ndarray  # inside the skull
    white: np.ndarray  # white-like tissue (the rest of the brain is grey-like)
    fluid: np.ndarray  # dark fluid spaces


def mm_to_voxels(mm: float, spacing: tuple[float, ...]) -> tuple[float, ...]:
    """A smoothing width in mm as voxels along each axis (anisotropic grids)."""
    return tuple(mm / s for s in spacing)


def make_head(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Head:
    """A head: an ellipsoid of two tissues (a thresholded smooth random field) with a rim and fluid spaces."""
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    extent = np.array([n * s for n, s in zip(shape, spacing)])
    centre = extent / 2 + rng.uniform(-4, 4, 3) * np.array([1, 1, 0.5])
    radii = extent * np.array([0.4, 0.46, 0.7]) * rng.uniform(0.92, 1.0, 3)
    radius = np.sqrt((((coords - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    brain = radius < 0.9
    white = brain & (_smooth(rng, shape, mm_to_voxels(4.0, spacing)) + 0.6 * (1 - radius) > 0.3)
    fluid = brain & (_smooth(rng, shape, mm_to_voxels(6.0, spacing)) > 1.6)
    return Head(coords, radius, radius < 1.0, brain, white, fluid)


def make_small_target_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (X, Y, Z) float32 and label (X, Y, Z) uint8 (1 = lesion)."""
    rng = np.random.default_rng(seed)
    shape = SMALL_TARGET_SHAPE
    sigma_mm = lambda mm: mm_to_voxels(mm, SMALL_TARGET_SPACING)  # noqa: E731
    coords, head_radius, head, brain, white, fluid = make_head(rng, shape, SMALL_TARGET_SPACING)

    # The lesion: inside the brain, away from its edge; an ellipsoid with a bumpy surface.
    candidates = np.argwhere(brain & ~fluid & (head_radius < 0.7))
    lesion_centre = coords[(slice(None), *candidates[rng.integers(len(candidates))])]
    lesion_radii = np.array([*rng.uniform(6.5, 10.5, 2), rng.uniform(7.0, 11.0)])  # mm: 13-21 across, 3-5 slices
    offset = (coords - lesion_centre[:, None, None, None]) / lesion_radii[:, None, None, None]
    bumps = 0.15 * _smooth(rng, shape, sigma_mm(1.0))
    label = (np.sqrt((offset**2).sum(0)) < 1.0 + bumps).astype(np.uint8)
    fluid &= label == 0  # the lesion displaces fluid
    tissue = np.where(white, 1.0, 0.8) * brain + 0.45 * (head & ~brain)
    tissue = np.where(fluid, 0.3, tissue) * (1.0 + 0.08 * _smooth(rng, shape, sigma_mm(1.5)))
    signal = tissue + 0.25 * label

    bias = np.exp(0.1 * _smooth(rng, shape, sigma_mm(30.0)))
    sigma = 0.1
    noisy = np.sqrt((signal * bias + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
    return noisy.astype(np.float32), label


def _write_dataset(folder: Path) -> None:
    header = {
        "name": "TokenSeg small targets: synthetic single-channel brain-like MRI with one small lesion",
        "description": __doc__.split("\n\n")[0],
        "tokenseg_small_targets_version": SMALL_TARGET_VERSION,
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": {"0": "background", "1": "lesion"},
    }
    write_decathlon(folder, make_small_target_case, SMALL_TARGET_SPLITS, SMALL_TARGET_SPACING, "brain", header)


def ensure_small_target_dataset(dataset_dir: str | os.PathLike | None = None) -> str:
    """Return the small-target dataset's folder (default ``default_small_target_dir()``), generating it if needed."""
    return ensure_generated(
        dataset_dir or default_small_target_dir(), "tokenseg_small_targets_version", SMALL_TARGET_VERSION, _write_dataset
    )
