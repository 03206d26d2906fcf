"""How unsure TokenSeg is of an image: the scores behind the app's active-learning strategies.

``boundary_token_entropy``: the mean softmax entropy of the prediction inside
the cells of the kept tokens. TokenSeg keeps the tokens it scores as boundary
cells; the entropy there measures how ambiguous it finds those boundaries,
which is what an annotator would have to correct. The entropy of the whole
volume would be dominated by the large, confidently classified background.

``uncertain_volume``: the share of the image's voxels where the model is torn
between background and a label (foreground probability between ``low`` and
``1 - low``). A sum, not a mean: it grows with the number and size of the
lesions the model half-sees, so an image the model is sure is empty scores
nothing however unsure its boundaries, and a small unsure lesion is not
diluted by a large image.

``dropout_sampling``: puts a network in evaluation mode but for its dropout,
for Monte Carlo dropout (MONAI Label's epistemic scoring runs its infer task
"in train mode"): batch norm then keeps its learned statistics instead of
taking, and storing, those of the window being scored.

``image_embedding``: not a score but what diversity is measured on: the
deepest encoder level's features averaged over the image, so that a strategy
can prefer an unsure image unlike those already labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
from monai.inferers import sliding_window_inference

from tokenseg.networks import TokenSeg
from tokenseg.networks.cells import expand_cells

__all__ = ["dropout_sampling", "kept_cell_mask", "boundary_token_entropy", "uncertain_volume", "image_embedding"]


def dropout_sampling(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` in evaluation mode except its dropout layers, which sample; returned for chaining."""
    network.eval()
    for module in network.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.train()
    return network


def kept_cell_mask(network: TokenSeg, keep_mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 1, *size) mask of the voxels inside the cells of the tokens kept in ``keep_mask`` (B, N)."""
    keep = keep_mask.detach()
    mask = None
    per_level = keep.split(network.decoder.cells_per_level, dim=1)  # the decoder's own split of the token order
    for level, (level_keep, grid) in enumerate(zip(per_level, network.grids), start=1):
        painted = expand_cells(level_keep.reshape(-1, 1, *grid), list(size), stride=2**level)
        mask = painted if mask is None else torch.maximum(mask, painted)
    return mask


@torch.no_grad()
def boundary_token_entropy(
    network: TokenSeg, image: torch.Tensor, roi_size: Sequence[int], sw_batch_size: int = 4, overlap: float = 0.25
) -> float:
    """Mean prediction entropy (nats) inside the kept tokens' cells, over a sliding-window pass of ``image`` (1, C, ...)."""
    totals = torch.zeros(2, device=image.device)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        output = network.forward_tokens(window)
        logits = output.logits
        probabilities = logits.float().softmax(dim=1)
        entropy = -(probabilities * probabilities.clamp_min(1e-8).log()).sum(dim=1, keepdim=True)
        mask = kept_cell_mask(network, output.keep_mask, window.shape[2:])
        totals[0] += (entropy * mask).sum()
        totals[1] += mask.sum()
        return logits

    _sliding_window_in_eval(network, image, roi_size, sw_batch_size, predictor, overlap)
    return (totals[0] / totals[1].clamp_min(1)).item()


@torch.no_grad()
def uncertain_volume(
    network: TokenSeg, image: torch.Tensor, roi_size: Sequence[int], sw_batch_size: int = 4, overlap: float = 0.25,
    low: float = 0.1,
) -> float:
    """Share of the voxels of ``image`` (1, C, ...) whose foreground probability (1 - background's) lies in
    [``low``, 1 - ``low``], over a sliding-window pass."""

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return network(window).float().softmax(dim=1)

    probabilities = _sliding_window_in_eval(network, image, roi_size, sw_batch_size, predictor, overlap)
    foreground = 1.0 - probabilities[:, 0]
    return ((foreground >= low) & (foreground <= 1.0 - low)).float().mean().item()


@torch.no_grad()
def image_embedding(
    network: TokenSeg, image: torch.Tensor, roi_size: Sequence[int], sw_batch_size: int = 4, overlap: float = 0.25
) -> List[float]:
    """The deepest encoder level's features of ``image`` (1, C, ...), averaged over its voxels and over the
    sliding windows: a vector of ``widths[-1]`` numbers (only the encoder runs)."""
    per_window: List[torch.Tensor] = []

    def predictor(window: torch.Tensor) -> torch.Tensor:
        per_window.append(network.encode(window)[-1].float().mean(dim=(2, 3, 4)))
        return window.new_zeros(window.shape[0], 1, *window.shape[2:])  # nothing to stitch

    _sliding_window_in_eval(network, image, roi_size, sw_batch_size, predictor, overlap)
    return torch.cat(per_window).mean(dim=0).tolist()


def _sliding_window_in_eval(network, image, roi_size, sw_batch_size, predictor, overlap) -> torch.Tensor:
    was_training = network.training
    network.eval()
    try:
        return sliding_window_inference(image, roi_size, sw_batch_size, predictor, overlap=overlap)
    finally:
        network.train(was_training)  # the caller's network, as it was
