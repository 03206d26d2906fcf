"""A cohort whose cases differ in difficulty, for active learning: single-channel brain-like MRI, generated.

The small-target dataset (``tokenseg.data.small_targets``) varies little
from case to case, so no labelling order can do much better than another.
Here each case draws its own difficulty, as cases of a real cohort differ:

- zero to three lesions (an empty case is 1 in 8), of 0.05% to 2% of the
  voxels in all (the size drawn log-uniformly);
- contrast to noise from 1.5 to 5 (lesion brightness over the tissue it sits
  in, in units of the noise's s.d.);
- a strong bias field in one case of four, bursts of noise (a few slices
  with three times the noise) in one of five.

The head model is the small-target one's (two tissues, fluid spaces, a rim,
Rician noise). Decathlon layout: ``training`` (the unlabelled pool an
annotator labels from) and ``test``; case ``i`` always comes from seed
``i``, and ``cohort_difficulty(i)`` tells what it drew.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tokenseg.data.generated import ensure_generated, write_decathlon
from tokenseg.data.small_targets import _smooth, make_head, mm_to_voxels

__all__ = ["COHORT_SPLITS", "COHORT_SHAPE", "COHORT_SPACING", "cohort_difficulty", "make_cohort_case",
           "ensure_cohort_dataset"]

COHORT_VERSION = 1
COHORT_SHAPE = (96, 96, 24)
COHORT_SPACING = (1.0, 1.0, 5.0)
COHORT_SPLITS = {"training": 40, "test": 10}


def cohort_difficulty(seed: int) -> dict:
    """What case ``seed`` draws: lesion count, total lesion share of the voxels, contrast to noise, artefacts."""
    rng = np.random.default_rng([seed, 1])
    count = 0 if rng.random() < 0.125 else int(rng.integers(1, 4))
    return {
        "lesions": count,
        "lesion_share": float(np.exp(rng.uniform(np.log(5e-4), np.log(2e-2)))) if count else 0.0,
        "cnr": float(rng.uniform(1.5, 5.0)),
        "strong_bias": bool(rng.random() < 0.25),
        "noise_burst": bool(rng.random() < 0.2),
    }


def make_cohort_case(seed: int, shape: tuple[int, int, int] = COHORT_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (X, Y, Z) float32 and label (X, Y, Z) uint8 (1 = lesion), of ``cohort_difficulty(seed)``."""
    draw = cohort_difficulty(seed)
    rng = np.random.default_rng([seed, 2])
    sigma_mm = lambda mm: mm_to_voxels(mm, COHORT_SPACING)  # noqa: E731
    coords, head_radius, head, brain, white, fluid = make_head(rng, shape, COHORT_SPACING)

    label = np.zeros(shape, np.uint8)
    if draw["lesions"]:
        # the total share split unevenly between the lesions; each an ellipsoid of that volume with a bumpy surface
        shares = draw["lesion_share"] * rng.dirichlet(np.full(draw["lesions"], 2.0))
        voxel_mm3 = float(np.prod(COHORT_SPACING))
        candidates = np.argwhere(brain & ~fluid & (head_radius < 0.7))
        for share in shares:
            volume = share * np.prod(shape) * voxel_mm3
            axes_ratio = rng.uniform(0.7, 1.3, 3)
            lesion_radii = (3 * volume / (4 * np.pi * np.prod(axes_ratio))) ** (1 / 3) * axes_ratio
            lesion_radii[2] = max(lesion_radii[2], 0.6 * COHORT_SPACING[2])  # at least one slice
            centre_l = coords[(slice(None), *candidates[rng.integers(len(candidates))])]
            offset = (coords - centre_l[:, None, None, None]) / lesion_radii[:, None, None, None]
            bumps = 0.15 * _smooth(rng, shape, sigma_mm(1.0))
            label |= (np.sqrt((offset**2).sum(0)) < 1.0 + bumps).astype(np.uint8)
    fluid &= label == 0
    tissue = np.where(white, 1.0, 0.8) * brain + 0.45 * (head & ~brain)
    tissue = np.where(fluid, 0.3, tissue) * (1.0 + 0.05 * _smooth(rng, shape, sigma_mm(1.5)))
    noise = 0.08
    signal = tissue + draw["cnr"] * noise * label

    bias = np.exp((0.35 if draw["strong_bias"] else 0.08) * _smooth(rng, shape, sigma_mm(30.0)))
    sigma = np.full(shape, noise)
    if draw["noise_burst"]:
        start = int(rng.integers(0, shape[2] - 3))
        sigma[..., start : start + 3] *= 3.0
    noisy = np.sqrt((signal * bias + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
    return noisy.astype(np.float32), label


def _write_dataset(folder: Path, splits: dict[str, int], shape: tuple[int, int, int]) -> None:
    header = {
        "name": "TokenSeg cohort: synthetic single-channel brain-like MRI, cases of varied difficulty",
        "description": __doc__.split("\n\n")[0],
        "tokenseg_cohort_version": COHORT_VERSION,
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "labels": {"0": "background", "1": "lesion"},
        "difficulty": [cohort_difficulty(seed) for seed in range(sum(splits.values()))],
    }
    write_decathlon(folder, lambda seed: make_cohort_case(seed, shape), splits, COHORT_SPACING, "cohort", header)


def ensure_cohort_dataset(
    dataset_dir: str | os.PathLike, splits: dict[str, int] = COHORT_SPLITS, shape: tuple[int, int, int] = COHORT_SHAPE
) -> str:
    """Return ``dataset_dir``, generating the cohort there if it holds none (``splits`` and ``shape``: a smaller
    cohort, e.g. for tests; keep one folder per size, as a folder's cohort is not checked for its size)."""
    return ensure_generated(
        dataset_dir, "tokenseg_cohort_version", COHORT_VERSION, lambda folder: _write_dataset(folder, splits, shape)
    )
