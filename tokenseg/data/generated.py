"""Generated datasets (no download): written once into a folder in the Medical Segmentation Decathlon layout.

``ensure_generated`` is safe when several processes (e.g. ``torchrun`` ranks)
call it at once: one writes under a lock into a temporary folder and moves it
into place. The dataset's version is recorded in its ``dataset.json``; a
folder holding anything else is never replaced.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["ensure_generated", "write_decathlon"]

logger = logging.getLogger(__name__)

Case = Callable[[int], "tuple[np.ndarray, np.ndarray]"]


def write_decathlon(
    folder: Path,
    make_case: Case,
    splits: Mapping[str, int],
    spacing: Sequence[float],
    prefix: str,
    header: Mapping,
) -> None:
    """Write cases ``make_case(0), make_case(1), ...`` (image, label arrays) as NIfTI, and ``dataset.json``.

    Args:
        folder: an empty folder.
        make_case: seed -> (image (X, Y, Z[, C]) float32, label (X, Y, Z) uint8).
        splits: cases per split, in order (``training``, ``validation``, ``test``); case ``i`` comes from seed ``i``.
        spacing: voxel size in mm (the affine's diagonal).
        prefix: file names are ``<prefix>_<seed>.nii.gz``.
        header: the rest of ``dataset.json`` (name, modality, labels, version, ...).
    """
    affine = np.diag([*spacing, 1.0])
    entries: dict[str, list] = {split: [] for split in splits}
    seed = 0
    for split, count in splits.items():
        image_dir, label_dir = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
        (folder / image_dir).mkdir(exist_ok=True)
        (folder / label_dir).mkdir(exist_ok=True)
        for _ in range(count):
            name = f"{prefix}_{seed:03d}.nii.gz"
            image, label = make_case(seed)
            nib.save(nib.Nifti1Image(image, affine), folder / image_dir / name)
            nib.save(nib.Nifti1Image(label, affine), folder / label_dir / name)
            entries[split].append({"image": f"./{image_dir}/{name}", "label": f"./{label_dir}/{name}"})
            seed += 1
    counts = {"numTraining": sum(n for s, n in splits.items() if s != "test"), "numTest": splits.get("test", 0)}
    (folder / "dataset.json").write_text(json.dumps({**header, **counts, **entries}, indent=2))


def _recorded_version(datalist: Path, version_key: str) -> int | None:
    try:
        return json.loads(datalist.read_text()).get(version_key)
    except (OSError, ValueError, AttributeError):
        return None


def ensure_generated(folder: str | os.PathLike, version_key: str, version: int, write: Callable[[Path], None]) -> str:
    """Return ``folder``, first writing the dataset with ``write(staging_folder)`` if it is missing or out of date.

    Args:
        folder: where the dataset lives.
        version_key: the ``dataset.json`` key that records which generated dataset it is.
        version: the current version; another one is regenerated.
        write: writes the whole dataset into the (empty) folder it is given.

    Raises:
        FileExistsError: ``folder`` holds something that is not this generated dataset.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = _recorded_version(folder / "dataset.json", version_key)
        if recorded == version:
            return str(folder)
        if recorded is None and folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not a TokenSeg generated dataset ({version_key}); "
                                  "not overwriting it.")
        logger.info(f"generating {version_key.removeprefix('tokenseg_').removesuffix('_version')} data in {folder}")
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write(staging)
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(folder)
