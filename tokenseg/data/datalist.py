"""Datalists in the Medical Segmentation Decathlon format.

``dataset.json`` lists ``training`` pairs (``{"image": ..., "label": ...}``)
and ``test`` images, with paths relative to the dataset folder. MSD tasks
(e.g. ``Task02_Heart``, ``Task01_BrainTumour``) have no ``validation`` list:
then a fixed, seeded share of ``training`` is held out for validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset

from tokenseg.data.checks import check_image_label_pair, read_image_info

__all__ = ["SPLITS", "load_datalist", "check_datalist", "image_entries"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

SPLITS = ("training", "validation", "test")


def _split_training(entries: list[dict], split: str, val_fraction: float, seed: int) -> list[dict]:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    n_val = int(round(len(entries) * val_fraction))
    if n_val == 0:
        return entries if split == "training" else []
    train, val = partition_dataset(entries, ratios=[len(entries) - n_val, n_val], shuffle=True, seed=seed)
    return train if split == "training" else val


def load_datalist(
    dataset_dir: str | os.PathLike,
    split: str = "training",
    datalist: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    require_labels: bool | None = None,
    check: bool = True,
) -> list[dict]:
    """The entries of one split, with absolute paths, checked.

    Args:
        dataset_dir: the dataset folder; relative paths in the datalist are relative to it.
        split: ``"training"``, ``"validation"`` or ``"test"``.
        datalist: the datalist JSON (default ``<dataset_dir>/dataset.json``).
        val_fraction: share of ``training`` held out as validation when the datalist has no ``validation`` list.
        seed: seed of that hold-out.
        require_labels: every entry must have a label (default: for training and validation).
        check: read every file's header first: it must exist, be an image, and its label must match it.

    Raises:
        FileNotFoundError: the datalist or a listed file is missing.
        ValueError: a bad entry, a file that is not an image, a label that does not fit its image.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    datalist_path = Path(datalist) if datalist else Path(dataset_dir) / "dataset.json"
    if not datalist_path.is_file():
        raise FileNotFoundError(
            f"{datalist_path}: datalist not found (dataset_dir is {dataset_dir}); for the demo dataset, the TokenSeg "
            "bundle's `python -m monai.bundle run demo_data` step writes it there."
        )
    try:
        content = json.loads(datalist_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{datalist_path}: not a JSON datalist ({error}).") from error
    key = split if split in content or split == "test" else "training"
    if key not in content:
        raise ValueError(f"{datalist_path}: no {key!r} list (keys: {sorted(content)}).")
    entries = load_decathlon_datalist(str(datalist_path), is_segmentation=True, data_list_key=key, base_dir=str(dataset_dir))
    if key != split:
        entries = _split_training(entries, split, val_fraction, seed)
    if require_labels is None:
        require_labels = split != "test"
    if check:
        check_datalist(entries, datalist_path, require_labels)
    return entries


def check_datalist(entries: list[dict], source: str | os.PathLike, require_labels: bool) -> None:
    """Check every entry of a datalist before any work starts; errors name ``source``, the entry and the file."""
    for index, entry in enumerate(entries):
        if "image" not in entry:
            raise ValueError(f"{source}: entry {index} ({entry}) has no 'image'.")
        if require_labels and "label" not in entry:
            raise ValueError(f"{source}: entry {index} ({entry['image']}) has no 'label'.")
        if "label" in entry:
            check_image_label_pair(entry["image"], entry["label"])
        else:
            read_image_info(entry["image"])


def _output_stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_entries(
    images: str | os.PathLike | list,
    output_dir: str | os.PathLike,
    num_channels: int | None = None,
    postfix: str = "seg",
) -> list[dict]:
    """Inference inputs as ``[{"image": path}]``, checked before anything is written.

    Each image (a file or a DICOM series folder) must exist, be readable and,
    when ``num_channels`` is given, have that many channels.
    Masks are written as ``<output_dir>/<name>_<postfix>.nii.gz``; two inputs
    that would write the same mask, or a mask that would replace an input,
    are refused.
    """
    paths = [Path(images)] if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
    if not paths:
        raise ValueError("no input images given for inference.")
    inputs = {p.resolve() for p in paths}
    outputs: dict[Path, Path] = {}
    for path in paths:
        info = read_image_info(path)
        if num_channels is not None and info.channels != num_channels:
            raise ValueError(f"{path}: expected a 3D image with {num_channels} channel(s), got {info.channels}.")
        output = (Path(output_dir) / f"{_output_stem(path)}_{postfix}.nii.gz").resolve()
        if output in inputs:
            raise ValueError(f"{path}: its mask would be written over the input file {output}; choose another output_dir.")
        if output in outputs:
            raise ValueError(f"{path} and {outputs[output]} would both write their mask to {output}.")
        outputs[output] = path
    return [{"image": str(p)} for p in paths]
