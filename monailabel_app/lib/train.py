"""Retraining the TokenSeg bundle from the saved final labels."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)


class TokenSegTrainTask(BundleTrainTask):
    """MONAI Label's bundle train task with the app's defaults (epochs, validation split, device, tracking).

    Training starts from the current ``models/model.pt`` and the bundle's
    checkpoint saver writes the new one in its place, where inference picks
    it up at the next request (MONAI Label reloads a changed checkpoint).

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` options.
        defaults: request values used when the client does not send them.
    """

    def __init__(self, path: str, conf: dict[str, str], defaults: dict[str, Any]) -> None:
        super().__init__(path, conf, enable_tracking=defaults.get("tracking") == "mlflow")
        self.defaults = defaults

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update({k: v for k, v in self.defaults.items() if k != "tracking"})
        return options

    def __call__(self, request, datastore: Datastore):
        request = {**self.defaults, **request}
        if request.get("tracking") in (None, "", "none"):
            request["tracking"] = "None"
        logger.info(f"TokenSeg training on {len(datastore.get_labeled_images())} labelled images: {request}")
        return super().__call__(request, datastore)
