"""Boundary-aware tokenizer: candidate tokens, VQ quantization, importance scores.

Shapes, for L levels with feature maps ``f_l`` (B, C_l, D_l, H_l, W_l) and
cell grids ``g_l`` of ``N_l`` cells (N = sum N_l candidate tokens):

1. each ``f_l`` is average-pooled onto ``g_l`` -> (B, C_l, *g_l) -> (B, N_l, C_l)
   and projected to the token width -> (B, N_l, E); levels are concatenated
   level-major, cells in C order: content tokens ``t`` (B, N, E);
2. ``t`` is quantized against the codebook (MONAI's EMA vector quantizer,
   straight-through): ``q`` (B, N, E), plus the commitment loss;
3. level and 3D sin-cos cell-centre embeddings are added after quantization
   (the codebook holds content only): ``z`` (B, N, E);
4. an MLP scores each token from ``[z, mean_N(z), ||t - q||]``: (B, N) logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from monai.networks.layers.vector_quantizer import EMAQuantizer, VectorQuantizer
from torch import nn

from tokenseg.networks.cells import pool_to_cells

__all__ = ["BoundaryAwareTokenizer", "TokenizerOutput", "sincos_cell_embedding"]


def sincos_cell_embedding(grids: Sequence[Sequence[int]], dim: int) -> torch.Tensor:
    """3D sin-cos embedding of every cell centre, in volume-relative coordinates.

    Cell centres are expressed in [0, 1] along each axis so that cells of
    different levels covering the same region get close embeddings.
    Returns (N, dim); ``dim // 6`` frequencies per axis, zero-padded to ``dim``.
    """
    n_freq = dim // 6
    freqs = torch.exp(torch.arange(n_freq, dtype=torch.float32) * (-math.log(100.0) / max(n_freq - 1, 1))) * 2 * math.pi
    rows = []
    for grid in grids:
        axes = [(torch.arange(g, dtype=torch.float32) + 0.5) / g for g in grid]
        centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        angles = centres[:, :, None] * freqs * 10.0  # (N_l, 3, n_freq)
        rows.append(torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(len(centres), -1))
    table = torch.cat(rows)
    return nn.functional.pad(table, (0, dim - table.shape[1]))


@dataclass
class TokenizerOutput:
    """What the tokenizer computes for a batch (N candidate tokens, width E)."""

    tokens: torch.Tensor  # (B, N, E) quantized tokens with level and position embeddings
    scores: torch.Tensor  # (B, N) importance logits
    vq_loss: torch.Tensor  # () commitment loss
    perplexity: torch.Tensor  # () codebook usage of this batch
    quantization_error: torch.Tensor  # (B, N) ||t - q(t)||


class BoundaryAwareTokenizer(nn.Module):
    """Turns the encoder's levels into N scored, quantized candidate tokens.

    Args:
        level_channels: channels C_l of each encoder level.
        grids: cell grid (gd, gh, gw) of each level; N = sum of their products.
        token_dim: token width E.
        codebook_size: number of codebook prototypes M.
        commitment_beta: weight of the commitment term ||t - sg[c]||^2.
        ema_decay: decay of the codebook's exponential moving averages.
        dead_code_threshold: in training, codes whose EMA usage falls below this
            are restarted on random tokens of the batch; with the codebook's
            usage starting at zero, the first batch initialises the whole
            codebook from data (a normal-initialised codebook collapses onto
            a few codes).
        score_hidden: hidden width of the importance MLP.
        dropout: dropout rate in the importance MLP.
    """

    def __init__(
        self,
        level_channels: Sequence[int],
        grids: Sequence[Sequence[int]],
        token_dim: int = 256,
        codebook_size: int = 4096,
        commitment_beta: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1e-3,
        score_hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.grids = [tuple(int(g) for g in grid) for grid in grids]
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(c, token_dim), nn.LayerNorm(token_dim)) for c in level_channels
        )
        self.quantizer = VectorQuantizer(
            EMAQuantizer(
                spatial_dims=2,  # MONAI's quantizer takes 2D/3D maps: tokens go in as (B, E, N, 1)
                num_embeddings=codebook_size,
                embedding_dim=token_dim,
                commitment_cost=commitment_beta,
                decay=ema_decay,
            )
        )
        self.dead_code_threshold = dead_code_threshold
        self.level_embedding = nn.Parameter(torch.zeros(len(self.grids), token_dim))
        nn.init.trunc_normal_(self.level_embedding, std=0.02)
        counts = [math.prod(g) for g in self.grids]
        self.register_buffer(
            "token_level", torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)), persistent=False
        )
        self.register_buffer("position_embedding", sincos_cell_embedding(self.grids, token_dim), persistent=False)
        self.scorer = nn.Sequential(
            nn.Linear(2 * token_dim + 1, score_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(score_hidden, 1),
        )

    @torch.no_grad()
    def restart_dead_codes(self, content: torch.Tensor) -> int:
        """Move unused codebook entries onto random tokens of ``content`` (B, N, E); returns how many moved."""
        codebook = self.quantizer.quantizer
        dead = (codebook.ema_cluster_size < self.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        flat = content.detach().reshape(-1, content.shape[-1]).float()
        picks = flat[torch.randint(len(flat), (dead.numel(),), device=flat.device)]
        picks = picks + 0.01 * flat.std() * torch.randn_like(picks)  # distinct codes for repeated picks
        codebook.embedding.weight[dead] = picks
        codebook.ema_w[dead] = picks
        codebook.ema_cluster_size[dead] = 1.0
        if dist.is_available() and dist.is_initialized():  # every rank keeps rank 0's codebook
            for tensor in (codebook.embedding.weight, codebook.ema_w, codebook.ema_cluster_size):
                dist.broadcast(tensor, src=0)
        return int(dead.numel())

    def forward(self, features: Sequence[torch.Tensor]) -> TokenizerOutput:
        content = torch.cat(
            [
                proj(pool_to_cells(f, grid).flatten(2).transpose(1, 2))  # (B, N_l, C_l) -> (B, N_l, E)
                for f, grid, proj in zip(features, self.grids, self.projections)
            ],
            dim=1,
        )
        if self.training:
            self.restart_dead_codes(content)
        # MONAI's quantizer is channel-first, (B, E, N, 1); it updates the codebook by EMA in training.
        vq_loss, quantized = self.quantizer(content.transpose(1, 2)[..., None])
        quantized = quantized[..., 0].transpose(1, 2)  # (B, N, E)
        error = (content - quantized).detach().norm(dim=-1)  # (B, N)
        tokens = quantized + self.level_embedding[self.token_level] + self.position_embedding
        summary = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
        scores = self.scorer(torch.cat([tokens, summary, error[..., None]], dim=-1)).squeeze(-1)
        return TokenizerOutput(tokens, scores, vq_loss, self.quantizer.perplexity, error)
