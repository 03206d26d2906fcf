"""Refinement that follows the tokens: the first level convolved only inside the kept cells.

A map (B, C, D, H, W) is cut into the cells of ``grid`` by the rule of
``tokenseg.networks.cells`` (position ``j`` of an axis of ``n`` positions
with ``g`` cells lies in cell ``floor(j * g / n)``, so cell ``i`` covers
``[ceil(i n / g), ceil((i + 1) n / g))``, at most ``c = ceil(n / g)``
positions). For the M kept cells of a batch:

1. ``gather_cells``: each cell and a ``halo`` of context on every side is
   read out of the map (zero beyond its border): (M, C, c_d + 2 halo, c_h + 2 halo, c_w + 2 halo);
2. shape-preserving convolutions ("same" padding) run on the M crops: the
   halo gives a cell's border its neighbours; the zero padding beyond the
   halo is the only difference from a dense pass;
3. ``paste_cells``: the crops' centres (M, C, c_d, c_h, c_w) replace their
   cells in a copy of another map (B, C, D, H, W); the part of a crop beyond
   its cell (where cells are uneven) is dropped, so nothing is written twice.

Reading and writing index the kept positions alone (one copy of the full
map, the one pasted into), and the convolutions' work is proportional to the
number of kept cells, not to the size of the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Tuple

import torch
from torch import nn

from tokenseg.networks.blocks import make_block, make_fuse

__all__ = ["kept_cells", "gather_cells", "paste_cells", "KeptCellUpBlock"]


def _cell_start(size: int, cells: int, index: torch.Tensor) -> torch.Tensor:
    """First position of cell ``index`` on an axis of ``size`` positions cut into ``cells``: ceil(index size / cells)."""
    return torch.div(index * size + cells - 1, cells, rounding_mode="floor")


def _windows(
    size: List[int], grid: List[int], cells: torch.Tensor, extent: List[int], before: int
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Each kept cell's window of ``extent`` positions per axis, from ``before`` positions before the cell's start.

    Returns the positions along D (M, e_d, 1, 1), H (M, 1, e_h, 1) and W
    (M, 1, 1, e_w), and (M, e_d, e_h, e_w): whether a position lies in the window's own cell.
    """
    positions: List[torch.Tensor] = []
    inside: List[torch.Tensor] = []
    for axis in range(3):
        start = _cell_start(size[axis], grid[axis], cells[:, axis])[:, None]
        end = _cell_start(size[axis], grid[axis], cells[:, axis] + 1)[:, None]
        position = start - before + torch.arange(extent[axis], device=cells.device)
        positions.append(position)
        inside.append((position >= start) & (position < end))
    axes = [positions[0][:, :, None, None], positions[1][:, None, :, None], positions[2][:, None, None, :]]
    own = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
    return axes, own


def kept_cells(keep: torch.Tensor, grid: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The cells ``keep`` (B, gd * gh * gw, cells in C order) marks with 1: their sample (M,) and cell index (M, 3)."""
    kept = (keep.detach() > 0.5).nonzero()  # (M, 2): sample, cell in C order
    batch_index, cell = kept[:, 0], kept[:, 1]
    cells = torch.stack([torch.div(cell, grid[1] * grid[2], rounding_mode="floor"),
                         torch.div(cell, grid[2], rounding_mode="floor") % grid[1], cell % grid[2]], dim=1)
    return batch_index, cells


def gather_cells(
    x: torch.Tensor, batch_index: torch.Tensor, cells: torch.Tensor, grid: List[int], halo: int
) -> torch.Tensor:
    """x (B, C, D, H, W); kept cells as sample ``batch_index`` (M,) and cell ``cells`` (M, 3) on ``grid`` ->
    crops (M, C, c_d + 2 halo, c_h + 2 halo, c_w + 2 halo), zero beyond the map."""
    size = [int(s) for s in x.shape[2:]]
    window = [(n + g - 1) // g + 2 * halo for n, g in zip(size, grid)]
    axes, _ = _windows(size, grid, cells, window, halo)
    outside = torch.zeros(axes[0].shape[0], window[0], window[1], window[2], dtype=torch.bool, device=x.device)
    for axis in range(3):
        outside = outside | (axes[axis] < 0) | (axes[axis] >= size[axis])
    d, h, w = (axes[axis].clamp(0, size[axis] - 1) for axis in range(3))
    crops = x[batch_index[:, None, None, None], :, d, h, w]  # (M, *window, C)
    return crops.masked_fill(outside[..., None], 0.0).permute(0, 4, 1, 2, 3).contiguous()


def paste_cells(
    base: torch.Tensor, crops: torch.Tensor, batch_index: torch.Tensor, cells: torch.Tensor, grid: List[int]
) -> torch.Tensor:
    """``base`` (B, C, D, H, W) with the kept cells replaced by ``crops`` (M, C, c_d, c_h, c_w), each holding
    its cell's values from the cell's start (positions past an uneven cell's end are ignored)."""
    size = [int(s) for s in base.shape[2:]]
    axes, own = _windows(size, grid, cells, [int(s) for s in crops.shape[2:]], 0)
    index = [batch_index[:, None, None, None].expand_as(own)[own]] + [a.expand_as(own)[own] for a in axes]
    pasted = base.clone()
    pasted[index[0], :, index[1], index[2], index[3]] = crops.permute(0, 2, 3, 4, 1)[own].to(base.dtype)
    return pasted


class KeptCellUpBlock(nn.Module):
    """The decoder's last step when the first level is refined only in its kept cells.

    x (B, C_2, D_2, H_2, W_2), tokens (B, C_1, 2 D_2, 2 H_2, 2 W_2) (the first
    level's painted tokens), stem (B, C_1, ...) and keep (B, N_1)
    -> (B, C_1, 2 D_2, 2 H_2, 2 W_2):

    - everywhere: ``coarse = upsample(x) + tokens``, no convolution;
    - in kept cells: ``fuse(coarse + blocks(stem))``, the first level's
      encoder blocks and the fuse of a dense ``AddSkipUpBlock`` step, run
      on those cells (with ``halo``) alone.

    The stem's output reaches the head only through the kept cells' blocks:
    added everywhere (TokenSeg 0.5), it was a shallow path from a single
    strided convolution to the head (``CHANGELOG.md``, 0.6.0).

    The output is the refined value in kept cells and ``coarse`` elsewhere;
    the keep mask's soft gradient (soft top-K) sees the difference refinement
    made in the kept cells.

    Args:
        in_channels: C_2.
        out_channels: C_1.
        grid: the first level's cell grid (N_1 cells).
        depth: encoder blocks of the first level.
        block_type, norm_name, act_name, dropout: as the encoder's (``norm_name`` ``None``: no norm).
        halo: context voxels read around each kept cell: with 1 the first convolution sees the true
            neighbours of the cell's border; the later ones see the halo's own (zero-padded) results.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grid: Sequence[int],
        depth: int,
        block_type: str,
        norm_name: str | tuple | None,
        act_name: str | tuple,
        dropout: float,
        halo: int = 1,
    ) -> None:
        super().__init__()
        self.grid: List[int] = [int(g) for g in grid]
        self.halo = halo
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.blocks = nn.Sequential(
            *(make_block(block_type, out_channels, norm_name, act_name, dropout) for _ in range(depth))
        )
        self.fuse = make_fuse(block_type, out_channels, norm_name, act_name, dropout)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, stem: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        coarse = self.upsample(x) + tokens
        g = self.grid
        batch_index, cells = kept_cells(keep, g)
        e = self.halo
        coarse_crops = gather_cells(coarse, batch_index, cells, g, e)  # (M, C_1, *crop)
        stem_crops = gather_cells(stem, batch_index, cells, g, e)
        refined = self.fuse(coarse_crops + self.blocks(stem_crops))
        d, h, w = refined.shape[2] - e, refined.shape[3] - e, refined.shape[4] - e
        refined, coarse_centres = refined[:, :, e:d, e:h, e:w], coarse_crops[:, :, e:d, e:h, e:w]  # (M, C_1, *cell)
        # forward: exactly `refined` (keep is 1 there); backward: d/d keep = refined - coarse
        cell = (cells[:, 0] * g[1] + cells[:, 1]) * g[2] + cells[:, 2]
        weight = keep[batch_index, cell].to(refined.dtype)[:, None, None, None, None]
        return paste_cells(coarse, coarse_centres + weight * (refined - coarse_centres), batch_index, cells, g)
