"""TokenSeg's training objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from tokenseg.boundary import boundary_band, token_boundary_targets
from tokenseg.networks import TokenSeg

__all__ = ["TokenSegLoss"]


class TokenSegLoss(nn.Module):
    """Dice + cross-entropy on the mask, plus the VQ loss, plus the boundary loss.

    The boundary loss is binary cross-entropy of the network's importance
    scores against each token's boundary target (does its cell touch the
    label's boundary band?). The VQ and boundary terms come from the
    network's last forward pass (``network.aux``), so call this right after
    the forward pass whose logits it gets, as ignite's ``SupervisedTrainer`` does.

    Each term of the last call is in ``last_terms`` (detached floats), for logging.

    Args:
        network: the TokenSeg being trained (not wrapped in DDP).
        vq_weight: weight of the VQ commitment loss.
        boundary_weight: weight of the boundary (importance) loss.
        band_radius: half-width of the boundary band in voxels.
        dice_ce_kwargs: extra arguments of MONAI's ``DiceCELoss``
            (default ``to_onehot_y=True, softmax=True``).
    """

    def __init__(
        self,
        network: TokenSeg,
        vq_weight: float = 1.0,
        boundary_weight: float = 0.3,
        band_radius: int = 1,
        dice_ce_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self._network = (network,)  # a tuple, so the network is not registered as the loss's submodule
        self.vq_weight = vq_weight
        self.boundary_weight = boundary_weight
        self.band_radius = band_radius
        self.dice_ce = DiceCELoss(**{"to_onehot_y": True, "softmax": True, **(dice_ce_kwargs or {})})
        self.last_terms: dict[str, float] = {}

    @property
    def network(self) -> TokenSeg:
        return self._network[0]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input: logits (B, C, D, H, W); target: (B, 1, D, H, W) class indices (or one-hot if so configured)."""
        aux = self.network.aux
        if aux is None:
            raise RuntimeError("TokenSegLoss needs the network's forward pass on this batch first.")
        if input.shape[0] != aux.scores.shape[0] or input.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"TokenSegLoss: logits {tuple(input.shape)}, target {tuple(target.shape)} and the network's last "
                f"batch of {aux.scores.shape[0]} do not match."
            )
        segmentation = self.dice_ce(input, target)
        token_targets = token_boundary_targets(boundary_band(target, self.band_radius), self.network.grids)
        boundary = F.binary_cross_entropy_with_logits(aux.scores, token_targets.to(aux.scores.dtype))
        total = segmentation + self.vq_weight * aux.vq_loss + self.boundary_weight * boundary
        self.last_terms = {
            "dice_ce": segmentation.item(),
            "vq": aux.vq_loss.item(),
            "boundary": boundary.item(),
            "total": total.item(),
        }
        return total
