"""The automatic TokenSeg (MONAI Label type ``segmentation``): inference, retraining and its active learning."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.utils.others.generic import strtobool

from lib.activelearning.diversity import UncertaintyWithDiversity
from lib.activelearning.epistemic import DropoutEpistemicScoring
from lib.activelearning.uncertainty import SCORES, TokenSegScoring
from lib.infers.tokenseg import TokenSegInfer
from lib.task import AppTask
from lib.trainers.tokenseg import TokenSegTrainTask


class TokenSeg(TaskConfig):
    """The task's automatic model, from the task's working bundle.

    ``init`` takes, besides MONAI Label's arguments, ``task`` (the app's
    ``lib.task.AppTask``: working bundle, labels, channels, initial weights)
    and ``train_defaults`` (the app's defaults of a training request).
    """

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.task: AppTask = kwargs["task"]
        self.train_defaults: dict[str, Any] = kwargs["train_defaults"]
        self.bundle_path = str(self.task.bundle)
        self.labels = self.task.spec["labels"]
        # MONAI Label's dropout-sampling strategy, off by default as in its radiology app: it runs the model
        # `epistemic_samples` times on every unlabelled image after each training
        self.epistemic = strtobool(conf.get("epistemic_enabled", "false"))
        self.epistemic_samples = int(conf.get("epistemic_samples", 5))

    def infer(self) -> InferTask:
        return TokenSegInfer(
            self.bundle_path, self.conf, self.labels, f"TokenSeg for {', '.join(self.labels)}", self.task.start_weights
        )

    def trainer(self) -> TrainTask:
        return TokenSegTrainTask(self.bundle_path, self.conf, self.train_defaults, self.task.pretrained_path)

    def strategy(self) -> dict[str, Strategy]:
        # MONAI Label's Epistemic strategy serves the unlabelled image of highest score under its key
        strategies = {key: Epistemic(k=1, key=key, desc=score.description)
                      for key, score in SCORES.items() if not score.every_image}
        strategies["tokenseg_uncertain_diverse"] = UncertaintyWithDiversity(
            "tokenseg_uncertain_volume", "tokenseg_embedding",
            "Unlabelled image with the most voxels TokenSeg is torn on, least like the labelled ones")
        if self.epistemic:
            strategies[f"{self.name}_epistemic"] = Epistemic()
        return strategies

    def scoring_method(self) -> dict[str, ScoringMethod]:
        methods = {key: TokenSegScoring(self.bundle_path, key, self.train_defaults["device"]) for key in SCORES}
        if self.epistemic:
            methods[f"{self.name}_epistemic"] = DropoutEpistemicScoring(
                self.bundle_path, self.conf, simulation_size=self.epistemic_samples
            )
        return methods
