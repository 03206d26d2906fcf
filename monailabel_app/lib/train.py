"""Retraining the TokenSeg bundle from the saved final labels."""

from __future__ import annotations

import csv
import logging
import os
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class TokenSegTrainTask(BundleTrainTask):
    """MONAI Label's bundle train task with the app's defaults (epochs, validation split, device, tracking).

    Training starts from the current ``models/model.pt`` and the bundle's
    checkpoint saver writes the new one in its place, where inference picks
    it up at the next request (MONAI Label reloads a changed checkpoint).
    Validation runs every ``val_interval`` epochs (default: every epoch, so
    that even a one-epoch retraining is validated and saved); the last
    validation metrics, which the bundle writes to ``eval/metrics.csv``, are
    the task's result and the last lines of its log (``/train/`` status).

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` options.
        defaults: request values used when the client does not send them.
    """

    def __init__(self, path: str, conf: dict[str, str], defaults: dict[str, Any]) -> None:
        super().__init__(path, conf, enable_tracking=defaults.get("tracking") == "mlflow")
        self.defaults = defaults
        self.val_interval = int(conf.get("val_interval", 1))

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update({k: v for k, v in self.defaults.items() if k != "tracking"})
        return options

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        if pretrained:  # MONAI Label 0.8.5 crashes on os.path.exists(None) when asked not to start from the weights
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)

    def _update_overrides(self, overrides):
        overrides["val_interval"] = self.val_interval
        return overrides

    def __call__(self, request, datastore: Datastore):
        request = {**self.defaults, **request}
        if float(request.get("val_split", 0)) < 0:
            # MONAI Label's "-1: the bundle's own validation list" would validate on the bundle's demo data
            request["val_split"] = self.defaults["val_split"]
        if request.get("tracking") in (None, "", "none"):
            request["tracking"] = "None"
        logger.info(f"TokenSeg training on {len(datastore.get_labeled_images())} labelled images: {request}")
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
