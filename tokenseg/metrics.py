"""TokenSeg's own diagnostics; segmentation metrics come from MONAI."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tokenseg.boundary import boundary_band, token_boundary_targets

__all__ = [
    "boundary_hit_rate",
    "boundary_hit_rate_per_level",
    "codebook_perplexity",
    "kept_boundary_hits",
    "hit_rate_per_level",
]


def kept_boundary_hits(
    kept_indices: torch.Tensor, label: torch.Tensor, grids: Sequence[Sequence[int]], radius: int = 1
) -> torch.Tensor:
    """(B, K) 1 where the kept token's cell touches the label's boundary band (arguments as ``boundary_hit_rate``)."""
    targets = token_boundary_targets(boundary_band(label, radius), grids)
    if targets.shape[0] != kept_indices.shape[0]:
        raise ValueError(f"label batch ({targets.shape[0]}) does not match the kept tokens' ({kept_indices.shape[0]}).")
    return targets.gather(1, kept_indices.to(targets.device))


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
    return kept_boundary_hits(kept_indices, label, grids, radius).mean()


def boundary_hit_rate_per_level(
    kept_indices: torch.Tensor, label: torch.Tensor, grids: Sequence[Sequence[int]], radius: int = 1
) -> torch.Tensor:
    """``boundary_hit_rate`` of the kept tokens of each level: (L,), finest level first, NaN where none was kept."""
    return hit_rate_per_level(kept_boundary_hits(kept_indices, label, grids, radius), kept_indices, grids)


def hit_rate_per_level(hits: torch.Tensor, kept_indices: torch.Tensor, grids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean of ``hits`` (B, K) over the kept tokens of each level: (L,), NaN where none was kept."""
    level_ends = torch.tensor([math.prod(g) for g in grids], device=hits.device).cumsum(0)
    levels = torch.bucketize(kept_indices.to(hits.device), level_ends, right=True)  # (B, K), 0 = finest
    rates = [hits[levels == level].mean() for level in range(len(grids))]  # the mean of nothing is NaN
    return torch.stack(rates)


def codebook_perplexity(code_indices: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the codes' usage in ``code_indices`` (any shape): how many codes are in effective use."""
    usage = torch.bincount(code_indices.reshape(-1)).float()
    probabilities = usage / usage.sum()
    return torch.exp(-(probabilities * probabilities.clamp_min(1e-10).log()).sum())
