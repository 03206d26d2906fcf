"""Write a TokenSeg bundle configured for one segmentation task.

A task is its label names and values, its input channels, and optionally the
voxel spacing and patch size. ``write_task_bundle`` copies a bundle and sets
these in every config that defines them (``class_names``, ``in_channels``,
``pixdim``, ``patch_size``) and in ``metadata.json`` (input ``channel_def``,
output ``channel_def`` with the label names, shapes), so that the bundle's
configs, its metadata and MONAI Label's ``/info`` all describe the same task.
The source bundle's checkpoints (the automatic model's ``models/model.pt`` and
the interactive model's ``models/model_deepedit.pt``, ``BUNDLE_MODELS``) are
carried over only when they fit the task's networks exactly;
``pretrained_state`` gives the part of one that fits when only some layers do
(the head differs when the label count does).

Command line (for bundle users; the MONAI Label app calls the same function)::

    python -m tokenseg.bundle_task --source bundle --out my_task \\
        --labels '{"tumour": 1}' --in_channels 1 --images /data/imagesTr

then train it with ``python -m monai.bundle run training --config_file my_task/configs/train.json ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from tokenseg.data.checks import read_image_info
from tokenseg.data.datalist import IMAGE_SUFFIXES

__all__ = [
    "BUNDLE_MODELS", "INTERACTIVE_TRAIN_CONFIGS", "INTERACTIVE_WEIGHTS", "TaskSpec", "parse_labels", "task_from_images",
    "write_task_bundle", "read_task", "pretrained_state", "image_files", "read_weights", "load_bundle",
]

logger = logging.getLogger(__name__)

METADATA = "metadata.json"
SIZE_MULTIPLE = 16  # 2 ** number of TokenSeg levels: every patch axis is a multiple of it
INTERACTIVE_WEIGHTS = "model_deepedit.pt"  # the interactive model's weights in models/
INTERACTIVE_TRAIN_CONFIGS = ("train.json", "train_deepedit.json")  # its training: the mixin over train.json
# each model of the bundle: its weights in models/ and the inference configs that build its network, in order
BUNDLE_MODELS = {
    "model.pt": ("inference.json",),
    INTERACTIVE_WEIGHTS: ("inference.json", "inference_deepedit.json"),
}


class TaskSpec(dict):
    """``{"labels": {name: value}, "in_channels": int, "pixdim": [3 floats], "patch_size": [3 ints]}``."""

    @property
    def class_names(self) -> list[str]:
        return ["background", *sorted(self["labels"], key=self["labels"].get)]


def parse_labels(labels: str | Mapping[str, int]) -> dict[str, int]:
    """Label names to values, as MONAI Label's ``--conf labels`` takes them (a JSON object, or a dict).

    Values must be 1..n, each once (0 is the background): the network has one
    output channel per value.
    """
    if isinstance(labels, str):
        try:
            labels = json.loads(labels)
        except json.JSONDecodeError as error:
            raise ValueError(f"labels must be a JSON object such as '{{\"tumour\": 1}}', got {labels!r} ({error}).")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a non-empty JSON object of names to values, got {labels!r}.")
    parsed = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name.strip() or name.strip().lower() == "background":
            raise ValueError(f"label names must be non-empty and not 'background', got {name!r}.")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"label {name!r} must have an integer value, got {value!r}.")
        parsed[name.strip()] = value
    if sorted(parsed.values()) != list(range(1, len(parsed) + 1)):
        raise ValueError(f"label values must be 1..{len(parsed)}, each once (0 is the background); got {parsed}.")
    return parsed


def _round_up(n: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


def task_from_images(
    images: Sequence[str | os.PathLike], default_pixdim: Sequence[float], default_patch: Sequence[int]
) -> tuple[list[float], list[int]]:
    """Spacing and patch size for a task, from its images' headers (as nnU-Net plans from the data).

    The spacing is the median spacing of the images (per axis); the patch is
    ``default_patch``, shrunk along any axis where the median image, at that
    spacing, is smaller (rounded up to a multiple of 16). Unreadable files are
    left out (with a warning); without readable images, the defaults.
    """
    infos = []
    for path in images:
        try:
            infos.append(read_image_info(path))
        except ValueError as error:
            logger.warning(f"spacing and patch size chosen without {path}: {error}")
    if not infos:
        return [float(s) for s in default_pixdim], [int(s) for s in default_patch]
    pixdim = [round(statistics.median(i.spacing[a] for i in infos), 4) for a in range(3)]
    extent = [statistics.median(i.shape[a] * i.spacing[a] for i in infos) for a in range(3)]
    patch = [min(int(p), _round_up(e / s)) for p, e, s in zip(default_patch, extent, pixdim)]
    return pixdim, patch


def read_task(bundle: str | os.PathLike) -> TaskSpec:
    """The task a bundle is configured for, from its ``configs/inference.json`` and metadata."""
    configs = Path(bundle) / "configs"
    inference = json.loads((configs / "inference.json").read_text())
    metadata = json.loads((configs / METADATA).read_text())
    channel_def = next(iter(metadata["network_data_format"]["outputs"].values()))["channel_def"]
    labels = {name: int(value) for value, name in channel_def.items() if int(value) != 0}
    return TaskSpec(
        labels=labels,
        in_channels=int(inference["in_channels"]),
        pixdim=[float(s) for s in inference["pixdim"]],
        patch_size=[int(s) for s in inference["patch_size"]],
    )


def _check_sizes(name: str, values: Sequence, kind: type) -> list:
    if len(values) != 3 or any(not v or float(v) <= 0 for v in values):
        raise ValueError(f"{name} must be three positive numbers, got {list(values)}.")
    values = [kind(v) for v in values]
    if name == "patch_size" and any(v % SIZE_MULTIPLE for v in values):
        raise ValueError(f"patch_size must be three multiples of {SIZE_MULTIPLE}, got {values}.")
    return values


def _metadata_for(metadata: dict, task: TaskSpec, channel_names: Sequence[str] | None, same_task: bool) -> dict:
    """``metadata`` with the task's channels, labels and patch (``network_data_format`` and the class texts)."""
    metadata = json.loads(json.dumps(metadata))
    fmt = metadata["network_data_format"]
    image, pred = next(iter(fmt["inputs"].values())), next(iter(fmt["outputs"].values()))
    if channel_names is None:  # keep the source's names when the channels are the same
        known = image.get("channel_def", {}) if image.get("num_channels") == task["in_channels"] else {}
        channel_names = [known.get(str(c), f"channel {c}") for c in range(task["in_channels"])]
    names = task.class_names
    image.update(num_channels=task["in_channels"], spatial_shape=task["patch_size"],
                 channel_def={str(c): name for c, name in enumerate(channel_names)})
    pred.update(num_channels=len(names), spatial_shape=task["patch_size"],
                channel_def={str(v): name for v, name in enumerate(names)})
    if not same_task:
        metadata.pop("eval_metrics", None)  # the source's results are not this task's
    metadata["image_classes"] = f"{task['in_channels']} channel(s): " + ", ".join(channel_names)
    metadata["label_classes"] = "single channel, " + ", ".join(f"{v} is {n}" for v, n in enumerate(names))
    metadata["pred_classes"] = f"{len(names)} channels one-hot: " + ", ".join(f"{v} {n}" for v, n in enumerate(names))
    return metadata


def _write_if_changed(path: Path, text: str) -> None:
    """Replace ``path`` atomically, and only when its text changes: a process may be reading it."""
    if path.is_file() and path.read_text() == text:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def write_task_bundle(
    source: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | Mapping[str, int],
    in_channels: int,
    pixdim: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    images: Sequence[str | os.PathLike] = (),
    channel_names: Sequence[str] | None = None,
    copy_weights: bool = True,
) -> TaskSpec:
    """Write ``out``: a copy of the bundle ``source`` configured for the task; returns the task.

    Args:
        source: a TokenSeg bundle folder (``configs/``, ``docs/``, ``LICENSE``, optional ``models/model.pt``).
        out: the folder to write (created; its configs are replaced, its ``models/`` is kept).
        labels: label names to values 1..n (a dict or its JSON text).
        in_channels: input channels of the task's images.
        pixdim, patch_size: the training spacing and patch; when not given, from ``images``
            (``task_from_images``), or the source bundle's.
        images: the task's images, to choose the spacing and patch from.
        channel_names: names of the input channels (metadata ``channel_def``).
        copy_weights: copy each of the source's checkpoints (``BUNDLE_MODELS``) that ``out``
            does not have and that loads exactly into the task's network.
    """
    source, out = Path(source), Path(out)
    if not (source / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{source} is not a TokenSeg bundle (no configs/inference.json).")
    if isinstance(in_channels, bool) or int(in_channels) < 1 or int(in_channels) != float(in_channels):
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
    if channel_names is not None and len(channel_names) != int(in_channels):
        raise ValueError(f"{len(channel_names)} channel names given for {in_channels} channel(s).")
    source_task = read_task(source)
    chosen_pixdim, chosen_patch = task_from_images(images, source_task["pixdim"], source_task["patch_size"])
    task = TaskSpec(
        labels=parse_labels(labels),
        in_channels=int(in_channels),
        pixdim=_check_sizes("pixdim", pixdim if pixdim is not None else chosen_pixdim, float),
        patch_size=_check_sizes("patch_size", patch_size if patch_size is not None else chosen_patch, int),
    )
    (out / "models").mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "docs", out / "docs", dirs_exist_ok=True)
    shutil.copy2(source / "LICENSE", out / "LICENSE")
    (out / "configs").mkdir(exist_ok=True)
    values = {"class_names": task.class_names, "in_channels": task["in_channels"], "pixdim": task["pixdim"],
              "patch_size": task["patch_size"]}
    for path in sorted((source / "configs").iterdir()):
        target = out / "configs" / path.name
        if path.name == METADATA:
            same_task = all(task[k] == source_task[k] for k in ("labels", "in_channels"))
            metadata = _metadata_for(json.loads(path.read_text()), task, channel_names, same_task)
            _write_if_changed(target, json.dumps(metadata, indent=4) + "\n")
        elif path.suffix == ".json" and not path.name.startswith("meta_schema"):
            config = json.loads(path.read_text())
            config.update({k: v for k, v in values.items() if k in config})
            _write_if_changed(target, json.dumps(config, indent=4) + "\n")
        else:
            _write_if_changed(target, path.read_text())
    for name, configs in BUNDLE_MODELS.items():
        checkpoint, source_checkpoint = out / "models" / name, source / "models" / name
        if copy_weights and not checkpoint.exists() and source_checkpoint.is_file():
            if pretrained_state(source_checkpoint, out, configs)[1]:
                partial = checkpoint.with_name(f".{checkpoint.name}.{os.getpid()}")
                shutil.copy2(source_checkpoint, partial)
                os.replace(partial, checkpoint)  # never a half-copied checkpoint where inference looks
    return task


def read_weights(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint, whether saved bare or as the bundle's ``{"model": ...}``."""
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return weights.get("model", weights)


def load_bundle(
    bundle: str | os.PathLike,
    configs: Sequence[str] = BUNDLE_MODELS["model.pt"],
    weights: str | None = "model.pt",
    overrides: Mapping | None = None,
    device: str | torch.device = "cpu",
):
    """A bundle's parsed configuration and its network, with ``models/<weights>`` loaded, in evaluation mode.

    The one way the project reads a bundle's model back (the app's scoring, the task writer, the benchmarks).

    Args:
        bundle: the bundle folder.
        configs: its config files, in the order they apply (default: the automatic model's inference).
        weights: the checkpoint in ``models/`` (float16 ones are cast to the network's dtype); None: not loaded.
        overrides: config values set after reading (e.g. a benchmark's network settings).
        device: where the network goes (the config's ``device`` is set to it).

    Returns:
        ``(parser, network)``: a ``monai.bundle.ConfigParser`` and the ``network_def`` instance.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle) / "configs" / name) for name in configs])
    parser.update(dict(overrides or {}))
    parser["bundle_root"] = str(bundle)
    parser["device"] = f"$torch.device('{torch.device(device)}')"
    network = parser.get_parsed_content("network_def")
    if weights is not None:
        network.load_state_dict(read_weights(Path(bundle) / "models" / weights))
    return parser, network.to(device).eval()


def pretrained_state(
    checkpoint: str | os.PathLike, bundle: str | os.PathLike, configs: Sequence[str] = BUNDLE_MODELS["model.pt"]
) -> tuple[dict, bool]:
    """The weights of ``checkpoint`` that fit the network that ``bundle``'s inference ``configs`` build.

    Returns ``(state, complete)``: the tensors whose names and shapes match
    (others, such as a head for another label count, are left out) and
    whether they are the whole network.
    """
    target = load_bundle(bundle, configs, weights=None)[1].state_dict()
    state = {k: v for k, v in read_weights(checkpoint).items() if k in target and target[k].shape == v.shape}
    return state, state.keys() == target.keys()


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files (NIfTI, NRRD, MHA, ...) directly in ``folder``, sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenseg.bundle_task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="the TokenSeg bundle to start from (e.g. bundle/)")
    parser.add_argument("--out", required=True, help="the bundle folder to write")
    parser.add_argument("--labels", required=True, help='label names to values, e.g. \'{"tumour": 1}\'')
    parser.add_argument("--in_channels", type=int, required=True)
    parser.add_argument("--pixdim", type=float, nargs=3, help="training spacing in mm (default: from --images)")
    parser.add_argument("--patch_size", type=int, nargs=3, help="training patch, multiples of 16 (default: from --images)")
    parser.add_argument("--images", help="a folder of the task's images, to choose spacing and patch from")
    parser.add_argument("--channel_names", nargs="+", help="names of the input channels")
    args = parser.parse_args(argv)
    images = image_files(args.images) if args.images else []
    try:
        task = write_task_bundle(args.source, args.out, args.labels, args.in_channels, args.pixdim, args.patch_size,
                                 images, args.channel_names)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    weights = "the source's weights" if (Path(args.out) / "models" / "model.pt").exists() else "no weights (train it)"
    print(f"wrote {args.out}: {dict(task)}; {weights}")


if __name__ == "__main__":
    main()
