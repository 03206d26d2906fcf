"""Which K of the N candidate tokens are kept.

Modes (``SELECTION_MODES``):

- ``"soft_topk"``: Token Sparsification's STP. In training, one Gumbel
  sample (temperature ``tau``) perturbs the scores; the forward pass keeps
  the hard top-K, the backward pass follows a soft top-K (a sigmoid around
  the threshold between the K-th and (K+1)-th perturbed score). In
  evaluation, plain top-K of the scores: deterministic.
- ``"topk"``: plain top-K always; the scores learn only from their own loss.
- ``"random"``: K tokens drawn uniformly (an ablation); in evaluation the
  fixed ``eval_noise`` decides, so that inference stays deterministic.
- ``"all"``: every token kept (K = N, the dense ablation).

``select_tokens`` ranks all N candidates together, so how many of the K
kept fall on each level is the scores' choice; ``select_tokens_per_level``
keeps a fixed K_l of each level's candidates instead.

Selection runs in float32 whatever the scores' dtype: under autocast they
are float16 or bfloat16, where the Gumbel clamp rounds to 0 (log(0) = -inf)
and ties between near-equal scores change K.
"""

from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["SELECTION_MODES", "select_tokens", "select_tokens_per_level"]

SELECTION_MODES = ("soft_topk", "topk", "random", "all")


def _gumbel(shape: list[int], device: torch.device) -> torch.Tensor:
    uniform = torch.rand(shape, dtype=torch.float32, device=device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def select_tokens(
    scores: torch.Tensor,
    k: int,
    mode: str,
    training: bool,
    tau: float = 1.0,
    eval_noise: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select ``k`` tokens per sample from ``scores`` (B, N).

    Args:
        eval_noise: (N,) the fixed draw of ``"random"`` selection in evaluation.

    Returns:
        kept_indices: (B, K) long, ascending within each sample.
        keep_mask: (B, N) float32, exactly 1.0 on kept and 0.0 on dropped tokens
            in the forward pass; in ``soft_topk`` training it carries the soft
            top-K gradient back to ``scores`` (straight-through).
    """
    scores = scores.float()
    batch, n = scores.shape
    if mode == "all":
        indices = torch.arange(n, device=scores.device).expand(batch, n)
        return indices, torch.ones_like(scores)
    if mode == "random":
        if training or eval_noise is None:
            noise = torch.rand(scores.shape, device=scores.device)
        else:
            noise = eval_noise.to(scores.device).expand(batch, n)
        indices = noise.topk(k, dim=1).indices.sort(dim=1).values
        return indices, torch.zeros_like(scores).scatter(1, indices, 1.0)
    if mode != "soft_topk" and mode != "topk":
        raise ValueError(f"selection mode must be one of soft_topk, topk, random, all, got {mode}.")

    perturbed = scores
    if mode == "soft_topk" and training:
        perturbed = scores + _gumbel(list(scores.shape), scores.device)
    top = perturbed.topk(min(k + 1, n), dim=1)
    indices = top.indices[:, :k].sort(dim=1).values
    hard = torch.zeros_like(scores).scatter(1, indices, 1.0)
    if mode == "topk" or not training or k == n:
        return indices, hard
    threshold = 0.5 * (top.values[:, k - 1] + top.values[:, k]).detach()
    soft = torch.sigmoid((perturbed - threshold[:, None]) / tau)
    return indices, hard + (soft - soft.detach())  # exactly `hard` in the forward pass


def select_tokens_per_level(
    scores: torch.Tensor,
    ks: List[int],
    level_sizes: List[int],
    mode: str,
    training: bool,
    tau: float = 1.0,
    eval_noise: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``select_tokens`` on each level's candidates alone: ``ks[l]`` of the ``level_sizes[l]`` candidates of level l.

    With one level of all N candidates (``ks=[K]``, ``level_sizes=[N]``) it is ``select_tokens``: ``TokenSeg`` selects
    through it either way.

    Args:
        scores: (B, N), the levels' candidates one after the other (N = sum of ``level_sizes``).
        ks: K_l per level, each between 0 and its level's size.
        eval_noise: (N,) as in ``select_tokens``.

    Returns:
        kept_indices: (B, sum K_l) long, ascending within each sample (levels are in token order).
        keep_mask: (B, N) float32, as in ``select_tokens`` (its soft top-K threshold is each level's own).
    """
    indices: List[torch.Tensor] = []
    masks: List[torch.Tensor] = []
    offset = 0
    for level_scores, k in zip(scores.split(level_sizes, dim=1), ks):
        size = level_scores.shape[1]
        if k == 0:
            indices.append(torch.zeros(scores.shape[0], 0, dtype=torch.long, device=scores.device))
            masks.append(torch.zeros_like(level_scores, dtype=torch.float32))
        else:
            level_noise: Optional[torch.Tensor] = None
            if eval_noise is not None:
                level_noise = eval_noise[offset : offset + size]
            level_indices, level_mask = select_tokens(level_scores, k, mode, training, tau, level_noise)
            indices.append(level_indices + offset)
            masks.append(level_mask)
        offset += size
    return torch.cat(indices, dim=1), torch.cat(masks, dim=1)
