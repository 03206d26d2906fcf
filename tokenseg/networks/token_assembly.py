"""Multi-layer Token Assembly (MTA): the full token sequence rebuilt from kept and pruned tokens.

Zhou et al., "Token Sparsification for Faster Medical Image Segmentation",
IPMI 2023 (arXiv 2303.06522). Sparse encoding -> token completion -> dense
decoding: instead of leaving the dropped tokens empty, each position takes
the token of the last layer in which it was still alive, each source
normalised and projected on its own, position embeddings are added and one
transformer block mixes the completed sequence.

In TokenSeg the token layers are the tokenizer (all N candidates alive) and
the mixer (the K kept ones), so a kept position takes the mixer's output and
a dropped position the tokenizer's quantized token:

    assembled_n = keep_n * proj_kept(mixed_n) + (1 - keep_n) * proj_pruned(token_n) + pos_n
    completed = TokenMixerBlock(assembled)      (B, N, E)

``keep`` is the selection's keep mask (0/1 forward; with soft top-K its
gradient reaches the scorer through this mix too).
"""

from __future__ import annotations

import torch
from torch import nn

from tokenseg.networks.blocks import TokenMixerBlock

__all__ = ["MultiLayerTokenAssembly"]


class MultiLayerTokenAssembly(nn.Module):
    """mixed (B, N, E) (the mixer's output at kept positions), tokens (B, N, E) (the tokenizer's), keep (B, N)
    -> completed tokens (B, N, E), every position filled.

    Args:
        num_tokens: N candidate tokens (one learned position embedding each).
        token_dim: token width E.
        num_heads: attention heads of the completion block.
        dropout: dropout rate.

    Examples::

        >>> mta = MultiLayerTokenAssembly(num_tokens=400, token_dim=256, num_heads=8)
        >>> keep = (torch.rand(2, 400) < 0.25).float()
        >>> mta(torch.rand(2, 400, 256), torch.rand(2, 400, 256), keep).shape
        torch.Size([2, 400, 256])
    """

    def __init__(self, num_tokens: int, token_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.kept_source = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, token_dim))
        self.pruned_source = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, token_dim))
        self.position = nn.Parameter(torch.zeros(1, num_tokens, token_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.block = TokenMixerBlock(token_dim, 4 * token_dim, num_heads, dropout)

    def forward(self, mixed: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        weight = keep[..., None].to(mixed.dtype)  # (B, N, 1)
        assembled = weight * self.kept_source(mixed) + (1 - weight) * self.pruned_source(tokens) + self.position
        return self.block(assembled)  # (B, N, E)
