"""MONAI Label's epistemic scoring (dropout sampling), as its radiology app serves it, for a task that may start untrained.

MONAI Label's ``EpistemicScoring`` runs an infer task in train mode with
dropout several times per unlabelled image and stores the entropy of the
samples (``epistemic_entropy``), which its ``Epistemic`` strategy serves. It
needs the model's infer task at construction; a task started from zero has no
checkpoint yet, so ``DropoutEpistemicScoring`` builds it, and MONAI Label's
scoring around it, at the first call after training has written one.
"""

from __future__ import annotations

import threading
from pathlib import Path

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.tasks.infer.bundle import BundleConstants
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring

from tokenseg.bundle_task import BUNDLE_MODELS

from lib.infers.tokenseg import BundleModel


class DropoutEpistemicScoring(ScoringMethod):
    """MONAI Label's ``EpistemicScoring`` of the task's automatic model, with ``dropout`` in every TokenSeg block.

    Args:
        bundle_path: the task's working bundle.
        conf: the app's ``--conf`` options.
        dropout: the dropout rate while sampling.
        simulation_size: samples per image.
    """

    def __init__(self, bundle_path: str, conf: dict[str, str], dropout: float = 0.2, simulation_size: int = 5) -> None:
        super().__init__(f"Epistemic entropy of {simulation_size} dropout samples of TokenSeg (MONAI Label's scoring)")
        self.bundle_path, self.conf, self.dropout, self.simulation_size = bundle_path, conf, dropout, simulation_size
        self.scoring: EpistemicScoring | None = None
        self._lock = threading.Lock()

    def __call__(self, request, datastore: Datastore):
        with self._lock:
            const = BundleConstants()
            if self.scoring is None and (Path(self.bundle_path) / "models" / const.model_pytorch()).exists():
                model = BundleModel(self.bundle_path, self.conf, const, InferType.SEGMENTATION, BUNDLE_MODELS["model.pt"],
                                    train_mode=True, skip_writer=True, dropout=self.dropout)
                self.scoring = EpistemicScoring(model, simulation_size=self.simulation_size)
        if self.scoring is None:
            return {"total": 0, "executed": 0, "skipped": 0, "reason": "no trained model yet"}
        return self.scoring({"simulation_size": self.simulation_size, **request}, datastore)
