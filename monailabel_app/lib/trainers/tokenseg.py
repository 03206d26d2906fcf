"""Retraining the TokenSeg bundle's automatic model from the saved final labels."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)

SPLIT_FILE = "validation_split.json"


def assign_split(assigned: dict[str, str], images: list[str], val_split: float) -> dict[str, str]:
    """Training or validation for each of ``images``, keeping every earlier assignment.

    Images not in ``assigned`` are added in name order: to validation while
    validation holds fewer than ``val_split`` of all assigned images and
    training keeps at least one, else to training. So the validation cases a
    team compares retrainings on stay the same, and new labels keep the
    proportion.
    """
    assigned = {k: v for k, v in assigned.items() if k in images}
    for image in sorted(set(images) - set(assigned)):
        counts = [list(assigned.values()).count(s) for s in ("training", "validation")]
        wanted = round(val_split * (len(assigned) + 1))
        assigned[image] = "validation" if counts[0] >= 1 and counts[1] < wanted else "training"
    return assigned


class TokenSegTrainTask(BundleTrainTask):
    """MONAI Label's bundle train task with the app's defaults (epochs, validation split, device, tracking).

    Training starts from the task's ``models/model.pt`` (or, before the
    task's first training, from ``pretrained_path`` when given: the layers
    whose shapes fit) and the bundle's checkpoint saver writes the new one in
    its place, where inference picks it up at the next request. Validation
    runs every ``val_interval`` epochs (default: every epoch, so that even a
    one-epoch retraining is validated and saved) on cases that stay the same
    from one retraining to the next (``validation_split.json`` in the bundle).
    While training runs, ``eval/train_stats.json`` holds the progress that
    ``/info`` ``train_stats`` serves (epoch, total_epochs, best_metric,
    total_time: what Slicer's progress bar reads), written by MONAI Label's own
    ``PublishStatsAndModel``. The last validation metrics, which the bundle
    writes to ``eval/metrics.csv``, are the task's result (``/train/`` status).
    Besides MONAI Label's keys, a request may give ``seed`` (the bundle's
    determinism seed), ``early_stop_patience`` (stop once the validation
    Dice has not improved for that many validations; MONAI's ``EarlyStopHandler``)
    and ``early_stop_min_delta`` (the least rise that counts as improving; default 0).

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` options.
        defaults: request values used when the client does not send them.
        pretrained_path: a checkpoint to start from while the task has none.
    """

    model_file = "model.pt"  # in the bundle's models/
    stats_file = "train_stats.json"  # in the bundle's eval/

    def __init__(
        self, path: str, conf: dict[str, str], defaults: dict[str, Any], pretrained_path: str | os.PathLike | None = None
    ) -> None:
        super().__init__(path, conf, enable_tracking=defaults.get("tracking") == "mlflow")
        self.defaults = defaults
        self.val_interval = int(conf.get("val_interval", 1))
        self.pretrained_path = pretrained_path
        self.split_path = Path(path) / SPLIT_FILE
        self.stats_path = Path(path) / "eval" / self.stats_file
        self.request: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update({k: v for k, v in self.defaults.items() if k != "tracking"})
        options["model_filename"] = [self.model_file]
        return options

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not trained yet, or being rewritten this moment
            return {}

    def _partition_datalist(self, datalist, request, shuffle=False):
        val_split = float(request.get("val_split", self.defaults["val_split"]))
        previous = json.loads(self.split_path.read_text()) if self.split_path.exists() else {}
        split = assign_split(previous, [d["image"] for d in datalist], max(val_split, 0.0))
        self.split_path.write_text(json.dumps(split, indent=2, sort_keys=True))
        train = [d for d in datalist if split[d["image"]] == "training"]
        val = [d for d in datalist if split[d["image"]] == "validation"]
        logger.info(f"TokenSeg training on {len(train)} images, validating on {len(val)} (kept in {self.split_path})")
        return train, val

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        if not pretrained:  # MONAI Label 0.8.5 crashes on os.path.exists(None) when asked not to start from the weights
            return
        if os.path.exists(model_pytorch) or not self.pretrained_path:
            return super()._load_checkpoint(model_pytorch, pretrained, train_handlers)
        logger.info(f"TokenSeg starts from the layers of {self.pretrained_path} that fit this task")
        train_handlers.insert(0, {
            "_target_": "CheckpointLoader",
            "load_path": str(self.pretrained_path),
            "load_dict": {self.model_dict_key: "$@network"},
            "map_location": "cpu",
            "strict_shape": False,  # skips the layers whose shapes differ (the head, for another label count)
        })

    def _update_overrides(self, overrides):
        overrides["val_interval"] = self.val_interval
        if "seed" in self.request:  # the bundle's determinism seed (the annotation-loop benchmark varies it)
            overrides["seed"] = int(self.request["seed"])
        patience = int(self.request.get("early_stop_patience", 0))
        early_stop = patience > 0 and bool(overrides.get(self.const.key_validate_dataset_data()))
        if early_stop:
            # stop when the stable validation cases' Dice has not improved for `patience` validations; attached to
            # the evaluator at run time, since a handler of the evaluator naming the trainer would make the
            # config circular (the trainer's ValidationHandler already names the evaluator)
            overrides["early_stopper"] = {
                "_target_": "EarlyStopHandler",
                "patience": patience,
                "score_function": "$lambda engine: engine.state.metrics['val_mean_dice']",
                "min_delta": float(self.request.get("early_stop_min_delta", 0.0)),
                "trainer": "@train#trainer",
            }
        overrides["train_stats_publisher"] = {
            "_target_": "monailabel.tasks.train.handler.PublishStatsAndModel",
            "stats_path": str(self.stats_path),
            "publish_path": None,
            "key_metric_filename": self.model_file,
            "start_ts": time.time(),
            "run_id": "run",
            "output_dir": str(self.stats_path.parent),
            "trainer": "@train#trainer",
            # without validation images the train metric is the best there is (not the evaluator's -1)
            "evaluator": "@validate#evaluator" if overrides.get(self.const.key_validate_dataset_data()) else None,
        }
        # attached after the bundle's own handlers, so that each epoch's stats include its validation; under
        # multi-GPU training (torchrun, the bundle's multi_gpu_train.json) by rank 0 alone, the one that saves
        overrides["run"] = [
            "$@train_stats_publisher.attach(@train#trainer) if not torch.distributed.is_initialized() "
            "or torch.distributed.get_rank() == 0 else None",
            *(["$@early_stopper.attach(@validate#evaluator)"] if early_stop else []),
            *self.bundle_config["run"],
        ]
        return overrides

    def __call__(self, request, datastore: Datastore):
        request = {**self.defaults, **request, "model_filename": self.model_file}
        self.request = request  # what _update_overrides reads (seed, early stopping)
        if float(request.get("val_split", 0)) < 0:
            # MONAI Label's "-1: the bundle's own validation list" would validate on the bundle's demo data
            request["val_split"] = self.defaults["val_split"]
        if request.get("tracking") in (None, "", "none"):
            request["tracking"] = "None"
        logger.info(f"TokenSeg training on {len(datastore.get_labeled_images())} labelled images: {request}")
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        super().__call__(request, datastore)
        metrics = self._validation_metrics(since=start)
        logger.info(f"TokenSeg retraining finished; last validation: {metrics or 'none (no validation images)'}")
        return metrics

    def _validation_metrics(self, since: float) -> dict[str, float]:
        path = os.path.join(self.bundle_path, "eval", "metrics.csv")
        if not os.path.exists(path) or os.path.getmtime(path) < since:
            return {}
        with open(path) as f:
            return {name: float(value) for name, value in csv.reader(f)}
