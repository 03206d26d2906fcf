"""The app's segmentation task: its working bundle, made from ``--conf`` options and the studies' images.

The working bundle (``<model_dir>/tokenseg``) is written by
``tokenseg.bundle_task.write_task_bundle``, the same function bundle users
call, so its configs, metadata and ``/info`` labels agree. It is rewritten on
every start; its checkpoint is kept (retrained weights survive restarts), and
a checkpoint of another task (other labels or channels) stops the start
rather than being overwritten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from monailabel.utils.others.generic import strtobool

from tokenseg.bundle_task import TaskSpec, image_files, parse_labels, read_task, write_task_bundle

logger = logging.getLogger(__name__)


def _sizes(conf: dict[str, str], key: str) -> list[float] | None:
    """``--conf spacing '[1, 1, 2.5]'`` or ``--conf spacing 1,1,2.5``."""
    if key not in conf:
        return None
    text = conf[key].strip()
    try:
        values = json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
    except ValueError as error:
        raise ValueError(f"--conf {key} must be three numbers such as 1,1,2.5; got {text!r} ({error}).") from error
    if len(values) != 3:
        raise ValueError(f"--conf {key} must be three numbers such as 1,1,2.5; got {text!r}.")
    return values


@dataclass
class AppTask:
    """The task the app serves and where its weights come from."""

    bundle: Path  # the working bundle
    spec: TaskSpec
    start_weights: str  # the weights training starts from, in words: for the log and /info ("initial_weights")
    pretrained_path: Path | None  # a checkpoint to start training from when the task has none yet (partial fit)

    @property
    def checkpoint(self) -> Path:
        return self.bundle / "models" / "model.pt"


def studies_images(studies: str) -> list[Path]:
    """The image files of a studies folder (none for a DICOMweb URL)."""
    if studies.startswith(("http://", "https://")) or not Path(studies).is_dir():
        return []
    return image_files(studies)


def prepare_task(source: Path, working: Path, conf: dict[str, str], studies: str) -> AppTask:
    """Write the working bundle for the task that ``conf`` names (default: the source bundle's own task)."""
    source_task = read_task(source)
    labels = parse_labels(conf["labels"]) if "labels" in conf else source_task["labels"]
    try:
        in_channels = int(conf.get("in_channels", source_task["in_channels"]))
    except ValueError as error:
        raise ValueError(f"--conf in_channels must be a positive integer, got {conf['in_channels']!r}.") from error
    identity = (labels, in_channels)
    existing = read_task(working) if (working / "configs" / "inference.json").is_file() else None
    checkpoint = working / "models" / "model.pt"
    if existing and checkpoint.exists() and (existing["labels"], existing["in_channels"]) != identity:
        raise RuntimeError(
            f"{working} holds a model for another task (labels {existing['labels']}, {existing['in_channels']} "
            f"channel(s)), not for labels {labels} with {in_channels} channel(s): use another --conf model_dir, "
            f"or move {working} away to start this task from zero."
        )
    # spacing and patch: as given, else as the working copy (or the source) already has them for this task,
    # else chosen from the studies' images
    known = next((t for t in (existing, source_task) if t and (t["labels"], t["in_channels"]) == identity), None)
    pixdim = _sizes(conf, "spacing") or (known["pixdim"] if known else None)
    patch_size = _sizes(conf, "patch_size") or (known["patch_size"] if known else None)
    use_pretrained = strtobool(conf.get("use_pretrained_model", "true"))
    images = studies_images(studies) if pixdim is None or patch_size is None else []
    had_checkpoint = checkpoint.exists()
    spec = write_task_bundle(source, working, labels, in_channels, pixdim, patch_size, images, copy_weights=use_pretrained)

    source_checkpoint, pretrained_path = source / "models" / "model.pt", None
    if had_checkpoint:
        start = f"the task's own checkpoint {checkpoint}"
    elif checkpoint.exists():
        start = f"the shipped weights of {source} (they fit this task)"
    elif not use_pretrained:
        start = "none: from scratch (use_pretrained_model false)"
    elif not source_checkpoint.is_file():
        start = f"none: from scratch ({source} has no weights)"
    elif source_task["in_channels"] != in_channels:
        start = (f"none: from scratch (the shipped weights take {source_task['in_channels']} channel(s), "
                 f"this task {in_channels})")
    else:  # the channels fit but write_task_bundle found the weights do not fit whole: the output layer differs
        pretrained_path = source_checkpoint
        start = f"the shipped weights of {source} but the output layer (the one for {len(labels)} label(s) starts fresh)"
    logger.info(f"TokenSeg task: labels {labels}, {in_channels} channel(s), spacing {spec['pixdim']}, "
                f"patch {spec['patch_size']}; initial weights: {start}")
    return AppTask(working, spec, start, pretrained_path)
