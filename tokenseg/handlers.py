"""Ignite handler that reports what TokenSeg computes besides the loss."""

from __future__ import annotations

from collections import defaultdict

import torch
from ignite.engine import Engine, Events

from tokenseg.losses import TokenSegLoss
from tokenseg.metrics import boundary_hit_rate

__all__ = ["TokenSegDiagnostics"]


class TokenSegDiagnostics:
    """Averages TokenSeg's diagnostics over each training epoch into ``engine.state.metrics``.

    Per iteration it reads each loss term (``loss_dice_ce``, ``loss_vq``,
    ``loss_boundary``, ``loss_total``), the codebook perplexity and the boundary hit rate of
    the kept tokens; at the end of the epoch their means land in
    ``engine.state.metrics``, where MONAI's ``StatsHandler`` and
    ``TensorBoardStatsHandler`` log them. Attach it before those handlers.

    Args:
        loss_function: the trainer's ``TokenSegLoss`` (it knows the network).
        label_key: key of the label in the trainer's batch.
    """

    def __init__(self, loss_function: TokenSegLoss, label_key: str = "label") -> None:
        self.loss_function = loss_function
        self.label_key = label_key
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()
        self._count = 0

    @torch.no_grad()
    def _accumulate(self, engine: Engine) -> None:
        network = self.loss_function.network
        if network.aux is None:
            return
        values = {f"loss_{name}": value for name, value in self.loss_function.last_terms.items()}
        values["codebook_perplexity"] = network.aux.perplexity.item()
        batch = engine.state.batch
        # MONAI engines decollate the batch into a list of samples when they post-process
        label = torch.stack([b[self.label_key] for b in batch]) if isinstance(batch, list) else batch[self.label_key]
        values["boundary_hit_rate"] = boundary_hit_rate(network, label.to(network.aux.scores.device)).item()
        for name, value in values.items():
            self._sums[name] += value
        self._count += 1

    def _publish(self, engine: Engine) -> None:
        for name, total in self._sums.items():
            engine.state.metrics[name] = total / max(self._count, 1)
