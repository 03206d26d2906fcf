"""TokenSeg's training objective."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from tokenseg.boundary import boundary_band, token_boundary_targets
from tokenseg.networks import TokenSeg, TokenSegOutput

__all__ = ["TokenSegLoss"]


class TokenSegLoss(nn.Module):
    """Dice + cross-entropy on the mask, plus the VQ loss, plus the boundary loss.

    The boundary loss is binary cross-entropy of the network's importance
    scores against each token's boundary target (does its cell touch the
    label's boundary band?). It takes the network's training output (the
    dictionary a training-step forward pass returns, or a ``TokenSegOutput``),
    and it is where the training step moves the codebook: one EMA step
    towards the batch's tokens (``TokenCodebook.update``) while the network is
    in train mode.

    Each term of the last call is in ``last_terms`` (detached floats), for logging.

    Args:
        network: the TokenSeg being trained (not wrapped in DDP or DataParallel).
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

    def forward(self, input: Mapping[str, torch.Tensor] | TokenSegOutput, target: torch.Tensor) -> torch.Tensor:
        """input: the network's training output; target: (B, 1, D, H, W) class indices (or one-hot if so configured)."""
        if isinstance(input, torch.Tensor):
            raise TypeError(
                "TokenSegLoss needs the network's training output (the dictionary TokenSeg returns in train mode with "
                "gradients enabled, or network.forward_tokens(x)), got a tensor of logits."
            )
        output = input if isinstance(input, TokenSegOutput) else TokenSegOutput(**input)
        if output.logits.shape[0] != target.shape[0] or output.logits.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"TokenSegLoss: logits {tuple(output.logits.shape)} and target {tuple(target.shape)} do not match."
            )
        segmentation = self.dice_ce(output.logits, target)
        token_targets = token_boundary_targets(boundary_band(target, self.band_radius), self.network.grids)
        boundary = F.binary_cross_entropy_with_logits(output.scores.float(), token_targets)
        vq = output.vq_loss.mean()
        total = segmentation + self.vq_weight * vq + self.boundary_weight * boundary
        if self.network.training:
            self.network.tokenizer.codebook.update(output.content, output.code_indices)
        self.last_terms = {
            "dice_ce": segmentation.item(),
            "vq": vq.item(),
            "boundary": boundary.item(),
            "total": total.item(),
        }
        return total
