"""Boundary-aware tokenizer: candidate tokens, VQ quantization, importance scores.

Shapes, for L levels with feature maps ``f_l`` (B, C_l, D_l, H_l, W_l) and
cell grids ``g_l`` of ``N_l`` cells (N = sum N_l candidate tokens):

1. each ``f_l`` is average-pooled onto ``g_l`` -> (B, C_l, *g_l) -> (B, N_l, C_l)
   and projected to the token width -> (B, N_l, E); levels are concatenated
   level-major, cells in C order: content tokens ``t`` (B, N, E);
2. ``t`` is quantized against the codebook (the nearest of M codes, by
   MONAI's ``EMAQuantizer``; straight-through): ``q`` (B, N, E), plus the
   per-sample commitment loss (B,) and the code indices (B, N);
3. level and 3D sin-cos cell-centre embeddings are added after quantization
   (the codebook holds content only): ``z`` (B, N, E);
4. an MLP scores each token from ``[z, mean_N(z), ||t - q||]``: (B, N) logits.

The codebook moves (EMA, dead-code restarts, ``TokenCodebook.update``) in
the training step only, as MONAI's ``EMAQuantizer`` moves its codebook in
its own forward pass: train mode with gradients enabled. Inference, in eval
mode or in train mode under ``torch.no_grad`` (MONAI Label's dropout
sampling), leaves the network as it was, and the forward pass scripts for
TorchScript (inference only: the update is not scripted).
"""


# No "from __future__ import annotations" here: TorchScript reads the signature of the codebook's update,
# which the scripted forward names, from real annotations.
import math
from collections.abc import Sequence
from typing import List, NamedTuple, Tuple

import torch
import torch.distributed as dist
from monai.networks.layers.vector_quantizer import EMAQuantizer
from torch import nn

from tokenseg.networks.cells import pool_to_cells

__all__ = ["BoundaryAwareTokenizer", "NoCodebook", "TokenCodebook", "TokenizerOutput", "sincos_cell_embedding"]


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


class TokenizerOutput(NamedTuple):
    """What the tokenizer computes for a batch (N candidate tokens, width E)."""

    tokens: torch.Tensor  # (B, N, E) quantized tokens with level and position embeddings
    scores: torch.Tensor  # (B, N) importance logits
    vq_loss: torch.Tensor  # (B,) commitment loss of each sample
    content: torch.Tensor  # (B, N, E) content tokens before quantization
    code_indices: torch.Tensor  # (B, N) codebook entry of each token


class TokenCodebook(EMAQuantizer):
    """MONAI's ``EMAQuantizer`` for tokens, whose forward pass only looks codes up.

    Tokens (B, N, E) -> straight-through quantized tokens (B, N, E), code
    indices (B, N) and the per-sample commitment loss (B,). In a training step
    (train mode with gradients enabled) the forward pass then moves the
    codebook one EMA step towards the batch's tokens (``update``); otherwise
    it only looks codes up.

    Args:
        num_embeddings: codebook entries M.
        embedding_dim: token width E.
        commitment_cost: weight of the commitment term ||t - sg[c]||^2.
        decay: decay of the EMA statistics.
        dead_code_threshold: codes whose EMA usage falls below this are
            restarted on random tokens of the batch; the first update puts every
            code on the batch's tokens (a normal-initialised codebook collapses
            onto a few codes).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        dead_code_threshold: float = 1e-3,
    ) -> None:
        # MONAI's quantizer takes 2D/3D channel-first maps: tokens go in as (B, E, N, 1)
        super().__init__(2, num_embeddings, embedding_dim, commitment_cost, decay)
        self.dead_code_threshold = dead_code_threshold

    def forward(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, code_indices = self.quantize(tokens.transpose(1, 2)[..., None])  # nearest codes, in float32
        code_indices = code_indices[..., 0]  # (B, N)
        codes = self.embedding(code_indices).to(tokens.dtype)  # (B, N, E)
        loss = self.commitment_cost * (codes.detach() - tokens).pow(2).mean(dim=(1, 2))
        if self.training and torch.is_grad_enabled():  # the training step: after the look-up, as EMAQuantizer does
            self.update(tokens, code_indices)
        return tokens + (codes - tokens).detach(), code_indices, loss

    @torch.jit.unused
    def distributed_synchronization(self, encodings_sum: torch.Tensor, dw: torch.Tensor) -> None:
        super().distributed_synchronization(encodings_sum, dw)

    @torch.jit.unused
    def update(self, tokens: torch.Tensor, code_indices: torch.Tensor) -> None:
        """One EMA step towards ``tokens`` (B, N, E) as assigned by ``code_indices`` (B, N), then dead-code restarts.

        Under DDP every rank calls it with its own batch: the statistics are
        summed over ranks (MONAI's ``distributed_synchronization``) and the
        restarted codes come from rank 0, so every rank keeps the same codebook.
        """
        with torch.no_grad():  # an EMA step, not a gradient step
            flat = tokens.detach().reshape(-1, tokens.shape[-1]).float()
            if not bool(self.ema_cluster_size.any()):
                # First step: the codes were random, so are this batch's assignments; an EMA step from empty
                # statistics would divide by ~0 and throw the used codes far away. Start every code on the data.
                self._restart_dead_codes(flat)
                return
            encodings = nn.functional.one_hot(code_indices.reshape(-1), self.num_embeddings).float()
            encodings_sum = encodings.sum(0)
            dw = encodings.t() @ flat
            self.distributed_synchronization(encodings_sum, dw)
            self.ema_cluster_size.mul_(self.decay).add_(encodings_sum, alpha=1 - self.decay)
            n = self.ema_cluster_size.sum()
            # Laplace smoothing of the cluster sizes, as MONAI's EMAQuantizer does
            sizes = (self.ema_cluster_size + self.epsilon) / (n + self.num_embeddings * self.epsilon) * n
            self.ema_w.mul_(self.decay).add_(dw, alpha=1 - self.decay)
            self.embedding.weight.copy_(self.ema_w / sizes[:, None])
            self._restart_dead_codes(flat)

    @torch.jit.unused
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        """Move unused entries onto random rows of ``flat`` (B * N, E)."""
        dead = (self.ema_cluster_size < self.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        picks = flat[torch.randint(len(flat), (dead.numel(),), device=flat.device)]
        picks = picks + 0.01 * flat.std() * torch.randn_like(picks)  # distinct codes for repeated picks
        self.embedding.weight[dead] = picks
        self.ema_w[dead] = picks
        self.ema_cluster_size[dead] = 1.0
        if dist.is_available() and dist.is_initialized():  # every rank keeps rank 0's codebook
            for tensor in (self.embedding.weight, self.ema_w, self.ema_cluster_size):
                dist.broadcast(tensor, src=0)


class NoCodebook(nn.Module):
    """The no-VQ ablation (``codebook_size=0``): tokens pass unquantized, one code index 0, no commitment loss."""

    num_embeddings: int = 1

    def forward(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, count = tokens.shape[0], tokens.shape[1]
        code_indices = torch.zeros(batch, count, dtype=torch.long, device=tokens.device)
        return tokens, code_indices, tokens.new_zeros(batch)


class BoundaryAwareTokenizer(nn.Module):
    """Turns the encoder's levels into N scored, quantized candidate tokens.

    Args:
        level_channels: channels C_l of each encoder level.
        grids: cell grid (gd, gh, gw) of each level; N = sum of their products.
        token_dim: token width E.
        codebook_size: number of codebook prototypes M; 0 for no quantization (``NoCodebook``).
        commitment_beta: weight of the commitment term ||t - sg[c]||^2.
        ema_decay: decay of the codebook's exponential moving averages.
        dead_code_threshold: see ``TokenCodebook``.
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
        self.grids: List[List[int]] = [[int(g) for g in grid] for grid in grids]
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(c, token_dim), nn.LayerNorm(token_dim)) for c in level_channels
        )
        self.codebook = (
            TokenCodebook(codebook_size, token_dim, commitment_beta, ema_decay, dead_code_threshold)
            if codebook_size
            else NoCodebook()
        )
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

    def forward(self, features: List[torch.Tensor]) -> TokenizerOutput:
        levels: List[torch.Tensor] = []
        for level, projection in enumerate(self.projections):
            cells = pool_to_cells(features[level], self.grids[level])  # (B, C_l, *g_l)
            levels.append(projection(cells.flatten(2).transpose(1, 2)))  # (B, N_l, C_l) -> (B, N_l, E)
        content = torch.cat(levels, dim=1)  # (B, N, E)
        quantized, code_indices, vq_loss = self.codebook(content)  # (B, N, E), (B, N), (B,)
        error = torch.linalg.vector_norm((content - quantized).detach(), dim=-1)  # (B, N)
        tokens = quantized + self.level_embedding[self.token_level] + self.position_embedding
        summary = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
        scores = self.scorer(torch.cat([tokens, summary, error[..., None]], dim=-1)).squeeze(-1)
        return TokenizerOutput(tokens, scores, vq_loss, content, code_indices)
