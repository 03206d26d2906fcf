"""Which K of the N candidate tokens are kept.

Modes (``SELECTION_MODES``):

- ``"soft_topk"``: Token Sparsification's STP. In training, one Gumbel
  sample (temperature ``tau``) perturbs the scores; the forward pass keeps
  the hard top-K, the backward pass follows a soft top-K (a sigmoid around
  the threshold between the K-th and (K+1)-th perturbed score). In
  evaluation, plain top-K of the scores: deterministic.
- ``"topk"``: plain top-K always; the scores learn only from their own loss.
- ``"random"``: K tokens drawn uniformly (an ablation); in evaluation the
  draw comes from a fixed seed so that inference stays deterministic.
- ``"all"``: every token kept (K = N, the dense ablation).
"""

from __future__ import annotations

import torch

__all__ = ["SELECTION_MODES", "select_tokens"]

SELECTION_MODES = ("soft_topk", "topk", "random", "all")
_EVAL_RANDOM_SEED = 0


def _gumbel_like(x: torch.Tensor) -> torch.Tensor:
    uniform = torch.rand_like(x).clamp_(1e-10, 1.0 - 1e-10)
    return -torch.log(-torch.log(uniform))


def select_tokens(
    scores: torch.Tensor, k: int, mode: str, training: bool, tau: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select ``k`` tokens per sample from ``scores`` (B, N).

    Returns:
        kept_indices: (B, K) long, ascending within each sample.
        keep_mask: (B, N), exactly 1.0 on kept and 0.0 on dropped tokens in
            the forward pass; in ``soft_topk`` training it carries the soft
            top-K gradient back to ``scores`` (straight-through).
    """
    batch, n = scores.shape
    if mode == "all":
        indices = torch.arange(n, device=scores.device).expand(batch, n)
        return indices, torch.ones_like(scores)
    if mode == "random":
        generator = None
        if not training:
            generator = torch.Generator(device=scores.device).manual_seed(_EVAL_RANDOM_SEED)
        noise = torch.rand(scores.shape, generator=generator, device=scores.device)
        indices = noise.topk(k, dim=1).indices.sort(dim=1).values
        return indices, torch.zeros_like(scores).scatter(1, indices, 1.0)
    if mode not in ("soft_topk", "topk"):
        raise ValueError(f"selection mode must be one of {SELECTION_MODES}, got {mode!r}.")

    perturbed = scores
    if mode == "soft_topk" and training:
        perturbed = scores + _gumbel_like(scores)
    top = perturbed.topk(min(k + 1, n), dim=1)
    indices = top.indices[:, :k].sort(dim=1).values
    hard = torch.zeros_like(scores).scatter(1, indices, 1.0)
    if mode == "topk" or not training or k == n:
        return indices, hard
    threshold = 0.5 * (top.values[:, k - 1] + top.values[:, k]).detach()
    soft = torch.sigmoid((perturbed - threshold[:, None]) / tau)
    return indices, hard + (soft - soft.detach())  # exactly `hard` in the forward pass
