"""TokenSeg's own diagnostics; segmentation metrics come from MONAI."""

from __future__ import annotations

import torch

from tokenseg.boundary import boundary_band, token_boundary_targets
from tokenseg.networks import TokenSeg

__all__ = ["boundary_hit_rate"]


def boundary_hit_rate(network: TokenSeg, label: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Share of the tokens kept in ``network``'s last forward pass whose cell touches the label's boundary band.

    The paper reports over 60% for its K = 100 kept tokens.

    Args:
        network: a TokenSeg that has just run forward on the batch of ``label``.
        label: (B, 1, D, H, W) class indices or (B, C, D, H, W) one-hot, at the input's resolution.
        radius: boundary band half-width in voxels.

    Returns:
        () the hit rate over every kept token of the batch.
    """
    if network.aux is None:
        raise RuntimeError("boundary_hit_rate needs a forward pass of the network on the batch first.")
    targets = token_boundary_targets(boundary_band(label, radius), network.grids)
    kept_indices = network.aux.kept_indices
    if targets.shape[0] != kept_indices.shape[0]:
        raise ValueError(
            f"label batch ({targets.shape[0]}) does not match the network's last batch ({kept_indices.shape[0]})."
        )
    return targets.gather(1, kept_indices).mean()
