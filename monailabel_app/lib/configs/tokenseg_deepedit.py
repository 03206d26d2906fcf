"""The interactive TokenSeg (MONAI Label type ``deepedit``): clicks refine its segmentation; retraining."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from lib.infers.tokenseg_deepedit import InteractiveTokenSegInfer
from lib.task import AppTask
from lib.trainers.tokenseg_deepedit import InteractiveTrainTask


class TokenSegDeepEdit(TaskConfig):
    """The task's interactive model, from the same working bundle with its interactive mixins and weights.

    Its labels include the background: one click channel per class (DeepEdit's convention, which Slicer and
    OHIF follow). ``init`` takes ``task`` and ``train_defaults`` as ``lib.configs.tokenseg.TokenSeg`` does.
    """

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.task: AppTask = kwargs["task"]
        self.train_defaults: dict[str, Any] = kwargs["train_defaults"]
        self.bundle_path = str(self.task.bundle)
        self.labels = {"background": 0, **self.task.spec["labels"]}

    def infer(self) -> InferTask:
        return InteractiveTokenSegInfer(
            self.bundle_path,
            self.conf,
            self.labels,
            f"Interactive TokenSeg for {', '.join(self.task.spec['labels'])}: clicks refine it",
            "the automatic model's weights (every layer that fits) when it has any, else from scratch",
        )

    def trainer(self) -> TrainTask:
        return InteractiveTrainTask(self.bundle_path, self.conf, self.train_defaults)
