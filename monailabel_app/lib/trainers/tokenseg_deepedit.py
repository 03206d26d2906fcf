"""Retraining the interactive TokenSeg from the saved final labels."""

from __future__ import annotations

import os
from typing import Any

from tokenseg.bundle_task import INTERACTIVE_TRAIN_CONFIGS, INTERACTIVE_WEIGHTS

from lib.trainers.tokenseg import TokenSegTrainTask


class InteractiveTrainTask(TokenSegTrainTask):
    """The interactive model's retraining: the bundle's ``train.json`` with ``train_deepedit.json`` over it.

    DeepEdit's training (MONAI's click simulation from the model's own
    errors, ``tokenseg.interaction.ClickInteraction``) on the same final
    labels and validation cases as the automatic model; its first training
    starts from the automatic model's weights (the mixin's ``warm_start`` step).
    """

    model_file = INTERACTIVE_WEIGHTS
    stats_file = "train_stats_deepedit.json"

    def __init__(self, path: str, conf: dict[str, str], defaults: dict[str, Any]) -> None:
        super().__init__(path, conf, defaults)
        self.bundle_config_path = self._configs(path)  # what monai.bundle.run reads, in order

    @staticmethod
    def _configs(path: str) -> list[str]:
        return [os.path.join(path, "configs", c) for c in INTERACTIVE_TRAIN_CONFIGS]

    def _load_bundle_config(self, path, config):
        return super()._load_bundle_config(path, self._configs(path))
