"""Which candidate tokens hold a click: the cells the interactive model must keep.

A click is the annotator saying "this place matters", so TokenSeg keeps the
token of every cell under a click, at every level, whatever its score. The
clicks arrive as DeepEdit's guidance channels (a Gaussian of peak 1 at each
click, ``monai.apps.deepedit``'s ``AddGuidanceSignalDeepEditd``); a voxel at or
above ``CLICK_THRESHOLD`` (within about a voxel of a click at the default
sigma of 3) marks its cell. Cells follow the tokenizer's rule
(``tokenseg.networks.cells``), so the marked cell is the one whose token
describes the click.
"""

from __future__ import annotations

from typing import List

import torch

from tokenseg.networks.cells import pool_to_cells

__all__ = ["CLICK_THRESHOLD", "clicked_cells"]

CLICK_THRESHOLD = 0.9


def clicked_cells(guidance: torch.Tensor, grids: List[List[int]], threshold: float = CLICK_THRESHOLD) -> torch.Tensor:
    """guidance (B, G, D, H, W) -> (B, N) float 0/1: 1 where a candidate token's cell holds a click.

    Tokens are in the tokenizer's order: level-major (finest first), cells in C order; level ``l``
    (1-based) has stride ``2 ** l`` against the input.
    """
    peaks = (guidance.amax(dim=1, keepdim=True) >= threshold).float()  # (B, 1, D, H, W)
    marked: List[torch.Tensor] = []
    for level, grid in enumerate(grids, start=1):
        counts = pool_to_cells(peaks, grid, stride=1 << level, reduce="sum")  # (B, 1, *grid)
        marked.append((counts.flatten(1) > 0).float())  # (B, N_l)
    return torch.cat(marked, dim=1)
