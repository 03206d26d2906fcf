"""Click simulation in training, as DeepEdit trains: MONAI's ``Interaction`` for images of several channels.

MONAI's ``monai.apps.deepedit.interaction.Interaction`` runs the network,
finds where it is wrong and adds clicks there (its ``transforms``) before
each training step, with probability ``deepgrow_probability``; otherwise it
trains the automatic model by zeroing the guidance channels. That branch
zeroes every channel after the first, of the first sample only, which for a
3-phase DCE-MRI image would blank two of its phases and leave other samples'
clicks in place. ``ClickInteraction`` keeps MONAI's click branch as it is and
zeroes exactly the guidance channels of every sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.apps.deepedit.interaction import Interaction
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils.enums import CommonKeys

__all__ = ["ClickInteraction"]


class ClickInteraction(Interaction):
    """DeepEdit's click simulation for images of ``number_intensity_ch`` channels (an ignite iteration update).

    Args:
        deepgrow_probability: probability that an iteration simulates clicks; otherwise it trains without any.
        transforms: the click transforms (prediction -> discrepancy -> new clicks -> guidance channels).
        train: training (the click probability decays over the interactions) or evaluation.
        number_intensity_ch: image channels before the guidance channels.
        label_names: the labels, names to values.
        click_probability_key: the key of the click probability that ``AddRandomGuidanceDeepEditd`` reads.
        max_interactions: rounds of prediction and clicks before the step.
    """

    def __init__(
        self,
        deepgrow_probability: float,
        transforms: Sequence[Callable] | Callable,
        train: bool,
        number_intensity_ch: int,
        label_names: dict[str, int] | None = None,
        click_probability_key: str = "probability",
        max_interactions: int = 1,
    ) -> None:
        super().__init__(1.0, transforms, train, label_names, click_probability_key, max_interactions)
        self.click_probability = deepgrow_probability
        self.number_intensity_ch = number_intensity_ch

    def __call__(self, engine: SupervisedTrainer | SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        if np.random.random() < self.click_probability:
            return super().__call__(engine, batchdata)
        batchdata[CommonKeys.IMAGE][:, self.number_intensity_ch:] = 0  # no clicks: the automatic model
        engine.state.batch = batchdata
        return engine._iteration(engine, batchdata)
