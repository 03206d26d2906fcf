"""Sparse-to-dense decoder: kept tokens back into their cells, then a light U-Net path up.

For each level l, the N_l tokens of that level (B, N_l, E) are projected to
C_l channels and zeroed where the token was dropped (B, N_l, C_l), laid on
the level's cell grid (B, C_l, *g_l), painted over the cells' positions
(B, C_l, D_l, H_l, W_l) and added to the encoder feature through a learned
per-channel gate that starts small (training starts close to a plain U-Net,
while every token parameter already gets a gradient): ``TokenInjection``.
Then the coarsest level is upsampled level by level, at stride 2, each step
an ``AddSkipUpBlock``. The last step, to the first level (half resolution,
the most expensive), depends on ``refinement``:

- ``"kept"``: a ``KeptCellUpBlock``: convolutions (the first level's encoder
  blocks and the decoder's) only inside the kept first-level cells; its skip
  is the tokens alone, and the stem's output enters in the kept cells only;
- ``"dense"``: an ``AddSkipUpBlock`` like the others, its skip the encoder's
  refined first level plus the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import nn

from tokenseg.networks.blocks import make_fuse
from tokenseg.networks.cells import expand_cells
from tokenseg.networks.refinement import KeptCellUpBlock

__all__ = ["AddSkipUpBlock", "TokenInjection", "SparseToDenseDecoder", "REFINEMENT_MODES"]

REFINEMENT_MODES = ("kept", "dense")


class AddSkipUpBlock(nn.Module):
    """One decoder step: (B, C_in, D, H, W) and skip (B, C_out, 2D, 2H, 2W) -> (B, C_out, 2D, 2H, 2W).

    A 2x2x2 transposed convolution to the skip's width, the skip added (not
    concatenated), then the fuse of ``block_type`` (``make_fuse``: one 3x3x3
    convolution, norm and activation, or a decomposed block). Adding
    instead of MONAI's ``UnetUpBlock`` (concatenate, then two convolutions
    on 2 C_out channels) costs a third of the multiply-adds at the finest,
    most expensive level (measured at 96^3: 10.9 instead of 16.2 GFLOPs for the network).

    Args:
        in_channels: channels of the coarser input.
        out_channels: channels of the skip and of the output.
        norm_name, act_name: MONAI norm and activation names.
        dropout: dropout rate after the convolution.
        block_type: ``"residual"`` or ``"decomposed"`` (``tokenseg.networks.blocks.BLOCK_TYPES``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_name: str | tuple = "batch",
        act_name: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        block_type: str = "residual",
    ) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.fuse = make_fuse(block_type, out_channels, norm_name, act_name, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.upsample(x) + skip)


class TokenInjection(nn.Module):
    """Adds one level's tokens into its feature map: (B, C, D_l, H_l, W_l) -> same shape.

    Args:
        token_dim: token width E.
        channels: channels C of the level.
        grid: the level's cell grid (gd, gh, gw), N_l cells.
    """

    def __init__(self, token_dim: int, channels: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid: List[int] = [int(g) for g in grid]
        # No bias: a dropped cell adds nothing, and a kept cell adds only what its token says (a bias
        # would paint a blocky kept/dropped pattern into the features).
        self.reproject = nn.Linear(token_dim, channels, bias=False)
        self.gate = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, feature: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """feature (B, C, D_l, H_l, W_l); tokens (B, N_l, E); keep (B, N_l), 0 on dropped tokens."""
        return feature + self.painted(tokens, keep, list(feature.shape[2:]))

    def painted(self, tokens: torch.Tensor, keep: torch.Tensor, size: List[int]) -> torch.Tensor:
        """What the tokens add alone: (B, C, *size), zero in dropped cells."""
        values = self.reproject(tokens) * keep[..., None].to(tokens.dtype)  # (B, N_l, C), zero in dropped cells
        cells = values.transpose(1, 2).reshape(tokens.shape[0], -1, self.grid[0], self.grid[1], self.grid[2])
        return torch.tanh(self.gate).view(1, -1, 1, 1, 1) * expand_cells(cells, size)  # (B, C, *size)


class SparseToDenseDecoder(nn.Module):
    """Args:
    level_channels: channels C_l of each encoder level, finest first.
    grids: cell grid of each level (as in the tokenizer).
    token_dim: token width E.
    norm_name, act_name: MONAI norm and activation names.
    dropout: dropout rate in the upsampling blocks.
    refinement: ``"kept"`` or ``"dense"`` (see the module docstring).
    first_level_depth: the first level's encoder blocks, which ``"kept"``
        refinement runs here, in the kept cells.
    block_type: the family of those blocks and of every step's fuse (``make_fuse``).
    halo: context positions read around each kept cell (``KeptCellUpBlock``).
    kept_cell_norm: whether the kept cells' blocks normalise (``norm_name``, computed on each cell's crop).
    """

    def __init__(
        self,
        level_channels: Sequence[int],
        grids: Sequence[Sequence[int]],
        token_dim: int,
        norm_name: str | tuple = "batch",
        act_name: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        refinement: str = "kept",
        first_level_depth: int = 1,
        block_type: str = "residual",
        halo: int = 1,
        kept_cell_norm: bool = True,
    ) -> None:
        super().__init__()
        if refinement not in REFINEMENT_MODES:
            raise ValueError(f"refinement must be one of {REFINEMENT_MODES}, got {refinement!r}.")
        self.cells_per_level: List[int] = [math.prod(g) for g in grids]
        self.injections = nn.ModuleList(TokenInjection(token_dim, c, g) for c, g in zip(level_channels, grids))
        dense_steps = range(len(level_channels) - 1) if refinement == "dense" else range(1, len(level_channels) - 1)
        self.up_blocks = nn.ModuleList(
            AddSkipUpBlock(level_channels[i + 1], level_channels[i], norm_name, act_name, dropout, block_type)
            for i in reversed(dense_steps)
        )
        self.kept_cell_step: Optional[KeptCellUpBlock] = None
        if refinement == "kept":
            self.kept_cell_step = KeptCellUpBlock(
                level_channels[1], level_channels[0], grids[0], first_level_depth, block_type,
                norm_name if kept_cell_norm else None, act_name, dropout, halo,
            )

    def forward(
        self, features: List[torch.Tensor], tokens: torch.Tensor, keep_mask: torch.Tensor, paint_mask: torch.Tensor
    ) -> torch.Tensor:
        """features: finest first (with ``"kept"`` refinement the first is the stem's output); tokens (B, N, E);
        keep_mask (B, N): the kept tokens, whose first-level cells are refined; paint_mask (B, N): the tokens
        painted into their cells (the keep mask, or all ones when the dropped tokens were completed).

        Returns (B, C_1, D_1, H_1, W_1) at the first level's resolution.
        """
        level_tokens = tokens.split(self.cells_per_level, dim=1)
        level_keep = keep_mask.split(self.cells_per_level, dim=1)
        level_paint = paint_mask.split(self.cells_per_level, dim=1)
        levels: List[torch.Tensor] = []
        for level, injection in enumerate(self.injections):
            if level == 0 and self.kept_cell_step is not None:  # the stem enters in kept cells only
                levels.append(injection.painted(level_tokens[0], level_paint[0], list(features[0].shape[2:])))
            else:
                levels.append(injection(features[level], level_tokens[level], level_paint[level]))
        x = levels[-1]
        for step, up in enumerate(self.up_blocks):
            x = up(x, levels[-2 - step])
        if self.kept_cell_step is not None:
            x = self.kept_cell_step(x, levels[0], features[0], level_keep[0])
        return x
