"""TokenSeg's own diagnostics; segmentation metrics come from MONAI."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenseg.boundary import boundary_band, token_boundary_targets

__all__ = ["boundary_hit_rate", "codebook_perplexity"]


def boundary_hit_rate(
    kept_indices: torch.Tensor, label: torch.Tensor, grids: Sequence[Sequence[int]], radius: int = 1
) -> torch.Tensor:
    """Share of the kept tokens whose cell touches the label's boundary band.

    The paper reports over 60% for its K = 100 kept tokens.

    Args:
        kept_indices: (B, K) kept tokens of a forward pass (``TokenSegOutput.kept_indices``).
        label: (B, 1, D, H, W) class indices or (B, C, D, H, W) one-hot, at the input's resolution.
        grids: the network's cell grids (``TokenSeg.grids``).
        radius: boundary band half-width in voxels.

    Returns:
        () the hit rate over every kept token of the batch.
    """
    targets = token_boundary_targets(boundary_band(label, radius), grids)
    if targets.shape[0] != kept_indices.shape[0]:
        raise ValueError(f"label batch ({targets.shape[0]}) does not match the kept tokens' ({kept_indices.shape[0]}).")
    return targets.gather(1, kept_indices.to(targets.device)).mean()


def codebook_perplexity(code_indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of the codes' usage in ``code_indices`` (any shape): how many codes are in effective use."""
    usage = torch.bincount(code_indices.reshape(-1), minlength=num_codes).float()
    probabilities = usage / usage.sum()
    return torch.exp(-(probabilities * probabilities.clamp_min(1e-10).log()).sum())
