"""Boundary band of a label and the boundary target of each candidate token."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tokenseg.networks.cells import pool_to_cells

__all__ = ["boundary_band", "token_boundary_targets"]


def _class_indices(label: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) class indices, or (B, C, ...) one-hot -> (B, 1, ...) float class indices."""
    if label.ndim != 5:
        raise ValueError(f"label must be (B, 1, D, H, W) or one-hot (B, C, D, H, W), got shape {tuple(label.shape)}.")
    if label.shape[1] > 1:
        label = label.argmax(dim=1, keepdim=True)
    return label.float()


def boundary_band(label: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Voxels within ``radius`` of a voxel of another class (dilation minus erosion).

    Args:
        label: (B, 1, D, H, W) class indices or (B, C, D, H, W) one-hot.
        radius: band half-width in voxels; the band is ``2 * radius`` voxels
            thick across a boundary (``radius`` on each side).

    Returns:
        (B, 1, D, H, W) float, 1 inside the band.
    """
    labels = _class_indices(label)
    window = 2 * radius + 1
    dilated = F.max_pool3d(labels, window, stride=1, padding=radius)
    eroded = -F.max_pool3d(-labels, window, stride=1, padding=radius)
    return (dilated != eroded).float()


def token_boundary_targets(band: torch.Tensor, grids: Sequence[Sequence[int]]) -> torch.Tensor:
    """1 for each candidate token whose cell touches the band, else 0.

    Args:
        band: (B, 1, D, H, W) full-resolution boundary band.
        grids: cell grid of each level, finest (stride 2) first, as in ``TokenSeg.grids``.

    Returns:
        (B, N) float, tokens in the network's order (level-major, cells in C order).
    """
    targets = [
        pool_to_cells(band, grid, stride=2**level, reduce="sum").flatten(1) > 0
        for level, grid in enumerate(grids, start=1)
    ]
    return torch.cat(targets, dim=1).float()
