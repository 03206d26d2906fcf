"""Cell grids: how a feature map is cut into tokens and how tokens go back.

A level of spatial size ``(d, h, w)`` is partitioned into a grid of
``(gd, gh, gw)`` non-overlapping cells: position ``j`` along an axis of size
``n`` with ``g`` cells belongs to cell ``floor(j * g / n)``. The same rule
serves pooling features into cells, painting cell values back onto the
level, and mapping full-resolution voxels (a label) onto a level's cells, so
the three always agree, whatever the sizes (``n`` need not be a multiple of
``g``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import List, Optional

import torch

__all__ = ["choose_grid", "token_grids", "axis_assignment", "pool_to_cells", "expand_cells"]


def choose_grid(level_size: Sequence[int], max_cells: int) -> tuple[int, int, int]:
    """Choose the cell grid of one level.

    Returns the grid ``(gd, gh, gw)`` with the most cells not above
    ``max_cells`` such that no axis gets more cells than it has positions;
    among equal counts, the one whose cells are closest to cubes.

    Args:
        level_size: spatial size ``(d, h, w)`` of the level's feature map.
        max_cells: requested number of cells (tokens) for this level.
    """
    if max_cells < 1:
        raise ValueError(f"tokens per level must be >= 1, got {max_cells}.")
    best: tuple[int, float, tuple[int, int, int]] | None = None
    d, h, w = (int(s) for s in level_size)
    for gd, gh in itertools.product(range(1, min(d, max_cells) + 1), range(1, min(h, max_cells) + 1)):
        if gd * gh > max_cells:
            continue
        gw = min(w, max_cells // (gd * gh))
        cell_logs = [math.log(n / g) for n, g in ((d, gd), (h, gh), (w, gw))]
        mean = sum(cell_logs) / 3
        anisotropy = sum((c - mean) ** 2 for c in cell_logs)
        key = (gd * gh * gw, -anisotropy, (gd, gh, gw))
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return best[2]



def token_grids(img_size: Sequence[int], tokens_per_level: Sequence[int]) -> List[List[int]]:
    """The cell grid of every level (finest, stride 2, first) for a patch of ``img_size`` (D, H, W).

    Level ``l`` (1-based) has ``img_size / 2 ** l`` positions and gets the grid of ``choose_grid`` for its
    requested count; TokenSeg's candidate tokens and the loss's boundary targets both follow these grids.
    """
    return [
        list(choose_grid([s // 2**level for s in img_size], requested))
        for level, requested in enumerate(tokens_per_level, start=1)
    ]

def axis_assignment(size: int, cells: int, stride: int = 1, device: Optional[torch.device] = None) -> torch.Tensor:
    """One-hot ``(cells, size)`` matrix assigning each position of an axis to its cell.

    ``stride`` > 1 maps a full-resolution axis of ``size`` voxels onto the
    cells of a level downsampled by ``stride`` (voxel ``j`` lies at level
    position ``j // stride``).
    """
    level_size = size // stride
    position = torch.arange(size, device=device) // stride
    cell = (position * cells) // level_size
    return (cell[None, :] == torch.arange(cells, device=device)[:, None]).float()


def _apply_axes(x: torch.Tensor, matrices: List[torch.Tensor]) -> torch.Tensor:
    """Contract the three spatial axes of ``x`` (B, C, D, H, W) with one matrix each."""
    md, mh, mw = matrices[0].to(x.dtype), matrices[1].to(x.dtype), matrices[2].to(x.dtype)
    return torch.einsum("bcdhw,id,jh,kw->bcijk", x, md, mh, mw)


def _axis_matrices(size: List[int], grid: List[int], stride: int, device: torch.device) -> List[torch.Tensor]:
    """The (cells, positions) assignment matrix of each of the three axes."""
    return [axis_assignment(size[axis], grid[axis], stride, device) for axis in range(3)]


def pool_to_cells(x: torch.Tensor, grid: List[int], stride: int = 1, reduce: str = "mean") -> torch.Tensor:
    """Pool ``x`` (B, C, D, H, W) onto ``grid``: (B, C, gd, gh, gw).

    Args:
        x: a level's feature map (``stride=1``), or a full-resolution map to
            be pooled onto the cells of a level at ``stride``.
        grid: cells per axis.
        stride: the level's downsampling factor relative to ``x``.
        reduce: ``"mean"`` (feature pooling) or ``"sum"`` (counting voxels).
    """
    matrices = _axis_matrices(list(x.shape[2:]), grid, stride, x.device)
    pooled = _apply_axes(x, matrices)
    if reduce == "sum":
        return pooled
    if reduce != "mean":
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce}.")
    counts = torch.einsum("i,j,k->ijk", matrices[0].sum(dim=1), matrices[1].sum(dim=1), matrices[2].sum(dim=1))
    return pooled / counts.to(x.dtype)


def expand_cells(cells: torch.Tensor, size: List[int], stride: int = 1) -> torch.Tensor:
    """Paint each cell of ``cells`` (B, C, gd, gh, gw) over its positions: (B, C, *size).

    ``stride`` > 1 paints the cells of a level downsampled by ``stride`` onto a
    full-resolution grid of ``size`` voxels.
    """
    matrices = _axis_matrices(size, list(cells.shape[2:]), stride, cells.device)
    return _apply_axes(cells, [m.t() for m in matrices])
