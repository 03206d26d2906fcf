"""The embedded demo dataset: synthetic breast DCE-MRI, generated on first use.

Each case is a unilateral breast volume of 96 x 96 x 48 voxels at
1.5 x 1.5 x 3.0 mm (anisotropic, as breast DCE-MRI usually is), in RAS, with
three contrast phases as channels (pre-contrast, early and late
post-contrast):

- air outside the body, a breast dome of fat with fibroglandular tissue
  (a thresholded smooth random field, denser towards the centre), and the
  chest wall behind it;
- one to three lesions with irregular, spiculated boundaries (a lobulated
  radius function plus thin spicules) and heterogeneous interiors (smooth
  texture, some with a necrotic core and rim enhancement), enhancing
  strongly in the early phase and washing out or plateauing after;
- a smooth multiplicative bias field and Rician noise.

Files are written as NIfTI in the Medical Segmentation Decathlon layout
(``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``, ``dataset.json``)
with fixed ``training``, ``validation`` and ``test`` splits. Generation is
deterministic: case ``i`` always comes from seed ``i``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from tokenseg.data.generated import ensure_generated, write_decathlon

__all__ = ["DEMO_VERSION", "DEMO_SPLITS", "default_demo_dir", "ensure_demo_dataset", "make_case"]

DEMO_VERSION = 1
DEMO_SHAPE = (96, 96, 48)
DEMO_SPACING = (1.5, 1.5, 3.0)
DEMO_SPLITS = {"training": 16, "validation": 4, "test": 4}
PHASES = ("pre-contrast", "early post-contrast", "late post-contrast")


def default_demo_dir() -> Path:
    """Where the demo lives unless told otherwise: ``$TOKENSEG_DEMO_DIR`` or ``~/.cache/tokenseg/demo``."""
    return Path(os.environ.get("TOKENSEG_DEMO_DIR", Path.home() / ".cache" / "tokenseg" / "demo"))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lesion(rng: np.random.Generator, coords: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Mask of one spiculated, lobulated lesion; coords (3, X, Y, Z) in mm."""
    offset = coords - centre[:, None, None, None]
    distance = np.linalg.norm(offset, axis=0) + 1e-6
    direction = offset / distance
    boundary = np.full(distance.shape, radius)
    for u in _unit_vectors(rng, 5):  # lobulation: broad bumps
        boundary += radius * rng.uniform(0.1, 0.3) * np.clip((direction * u[:, None, None, None]).sum(0), 0, None) ** 2
    for u in _unit_vectors(rng, rng.integers(4, 10)):  # spiculation: thin spikes
        cosine = np.clip((direction * u[:, None, None, None]).sum(0), 0, None)
        boundary += radius * rng.uniform(0.5, 1.2) * cosine**80
    return distance < boundary


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: image (X, Y, Z, 3) float32 and label (X, Y, Z) uint8 (1 = lesion)."""
    rng = np.random.default_rng(seed)
    shape = DEMO_SHAPE
    axes = [np.arange(n) * s for n, s in zip(shape, DEMO_SPACING)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))  # (3, X, Y, Z) in mm
    extent = np.array([n * s for n, s in zip(shape, DEMO_SPACING)])

    # Breast dome in front (+y, anterior) of the chest wall at the back of the volume.
    chest_y = extent[1] * rng.uniform(0.12, 0.2)
    dome_centre = np.array([extent[0] / 2 + rng.uniform(-8, 8), chest_y, extent[2] / 2])
    dome_radii = np.array([extent[0] * 0.42, extent[1] * rng.uniform(0.65, 0.78), extent[2] * 0.45])
    dome = (((coords - dome_centre[:, None, None, None]) / dome_radii[:, None, None, None]) ** 2).sum(0) < 1
    chest_wall = coords[1] < chest_y
    breast = dome & ~chest_wall

    # Fibroglandular tissue: a smooth random field thresholded, denser near the dome's core.
    core = np.exp(-((((coords - dome_centre[:, None, None, None]) / (0.6 * dome_radii[:, None, None, None])) ** 2).sum(0)))
    fgt = breast & (_smooth_field(rng, shape, 2.0) + 1.5 * core > rng.uniform(0.8, 1.2))

    label = np.zeros(shape, dtype=np.uint8)
    enhancement = np.zeros(shape, dtype=np.float32)
    inside = np.argwhere(breast & (core > 0.3))
    for _ in range(rng.integers(1, 4)):
        centre = coords[(slice(None), *inside[rng.integers(len(inside))])]
        radius = rng.uniform(5.0, 12.0)
        mask = _lesion(rng, coords, centre, radius) & breast
        texture = 1.0 + 0.25 * _smooth_field(rng, shape, 1.5)
        if rng.random() < 0.4:  # necrotic core: weak centre, enhancing rim
            depth = np.linalg.norm(coords - centre[:, None, None, None], axis=0) / radius
            texture *= np.clip(depth, 0.3, 1.0)
        enhancement[mask] = texture[mask]
        label[mask] = 1
    washout = rng.uniform(-0.25, 0.05)  # late-phase change relative to early: washout or plateau

    tissue = np.where(fgt, 0.55, 0.3) * breast + 0.45 * chest_wall * dome
    tissue = tissue * (1.0 + 0.05 * _smooth_field(rng, shape, 1.0))
    phases = [
        tissue + 0.02 * enhancement,
        tissue + 0.12 * fgt + 0.9 * enhancement,
        tissue + 0.16 * fgt + (0.9 + washout) * enhancement,
    ]
    bias = np.exp(0.15 * _smooth_field(rng, shape, 12.0))
    sigma = 0.03

    def rician(signal: np.ndarray) -> np.ndarray:  # magnitude of a complex signal with Gaussian noise
        return np.sqrt((signal + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)

    image = np.stack([rician(p * bias) for p in phases], axis=-1).astype(np.float32)
    return image, label


def _write_dataset(folder: Path) -> None:
    header = {
        "name": "TokenSeg demo: synthetic breast DCE-MRI",
        "description": __doc__.split("\n\n")[0],
        "tokenseg_demo_version": DEMO_VERSION,
        "tensorImageSize": "4D",
        "modality": {str(i): phase for i, phase in enumerate(PHASES)},
        "labels": {"0": "background", "1": "lesion"},
    }
    write_decathlon(folder, make_case, DEMO_SPLITS, DEMO_SPACING, "breast", header)


def ensure_demo_dataset(dataset_dir: str | os.PathLike | None = None) -> str:
    """Return the demo dataset's folder (default ``default_demo_dir()``), generating it first if missing or out of date.

    Safe when several processes (e.g. ``torchrun`` ranks) call it at once; never replaces another dataset.
    """
    return ensure_generated(dataset_dir or default_demo_dir(), "tokenseg_demo_version", DEMO_VERSION, _write_dataset)
