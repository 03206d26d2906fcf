"""TokenSeg's training objective."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from tokenseg.boundary import boundary_band, token_boundary_targets
from tokenseg.networks import TokenSegOutput

__all__ = ["TokenSegLoss"]


class TokenSegLoss(nn.Module):
    """Dice + cross-entropy on the mask, plus the VQ loss, plus the boundary loss.

    The boundary loss is binary cross-entropy of the network's importance
    scores against each token's boundary target (does its cell touch the
    label's boundary band?). The loss takes the network's training output
    (the dictionary a training-step forward pass returns, or a
    ``TokenSegOutput``) and the cell grids it was built with, as MONAI's
    deep-supervision loss takes DynUNet's heads: nothing of the network
    itself. The codebook moves in the network's own training step
    (``TokenCodebook``), not here.

    Args:
        grids: the cell grid of each level, finest first: ``TokenSeg.grids``, or
            ``tokenseg.networks.cells.token_grids(patch_size, tokens_per_level)`` in a config.
        vq_weight: weight of the VQ commitment loss.
        boundary_weight: weight of the boundary (importance) loss.
        band_radius: half-width of the boundary band in voxels.
        dice_ce_kwargs: extra arguments of MONAI's ``DiceCELoss``
            (default ``to_onehot_y=True, softmax=True``).
    """

    def __init__(
        self,
        grids: Sequence[Sequence[int]],
        vq_weight: float = 1.0,
        boundary_weight: float = 0.3,
        band_radius: int = 1,
        dice_ce_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if isinstance(grids, nn.Module):
            raise TypeError("TokenSegLoss takes the network's cell grids (network.grids), not the network.")
        self.grids = [[int(n) for n in grid] for grid in grids]
        self.vq_weight = vq_weight
        self.boundary_weight = boundary_weight
        self.band_radius = band_radius
        self.dice_ce = DiceCELoss(**{"to_onehot_y": True, "softmax": True, **(dice_ce_kwargs or {})})

    def terms(self, input: Mapping[str, torch.Tensor] | TokenSegOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term of the loss and their weighted ``total`` (arguments as ``forward``)."""
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
        token_targets = token_boundary_targets(boundary_band(target, self.band_radius), self.grids)
        if token_targets.shape != output.scores.shape:
            raise ValueError(
                f"TokenSegLoss: grids {self.grids} give {token_targets.shape[1]} tokens, the network scored "
                f"{output.scores.shape[1]}: pass the grids the network was built with."
            )
        boundary = F.binary_cross_entropy_with_logits(output.scores.float(), token_targets)
        vq = output.vq_loss.mean()
        total = segmentation + self.vq_weight * vq + self.boundary_weight * boundary
        return {"dice_ce": segmentation, "vq": vq, "boundary": boundary, "total": total}

    def forward(self, input: Mapping[str, torch.Tensor] | TokenSegOutput, target: torch.Tensor) -> torch.Tensor:
        """input: the network's training output; target: (B, 1, D, H, W) class indices (or one-hot if so configured)."""
        return self.terms(input, target)["total"]
