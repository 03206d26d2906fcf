"""Convolutional blocks of the TokenSeg encoder.

Two block types share one interface, ``block(channels) -> nn.Module`` that
keeps shape (B, C, D, H, W):

- ``"residual"``: MONAI's ``UnetResBlock`` (two 3x3x3 convolutions and a
  residual connection).
- ``"decomposed"``: DCFormer's decomposed convolution: three parallel
  depthwise 1-D convolutions along D, H and W, each with its own norm,
  summed, then a pointwise MLP; both with residual connections.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, UnetResBlock
from monai.networks.layers.utils import get_norm_layer
from torch import nn

__all__ = ["DecomposedConvBlock", "make_block", "EncoderStage", "BLOCK_TYPES"]

BLOCK_TYPES = ("residual", "decomposed")


class DecomposedConvBlock(nn.Module):
    """DCFormer-style decomposed convolution block; keeps (B, C, D, H, W).

    Args:
        channels: number of channels C.
        kernel_size: length of each 1-D depthwise kernel.
        mlp_ratio: hidden width of the pointwise MLP relative to C.
        norm_name: MONAI norm name used after each 1-D convolution.
        dropout: dropout rate inside the MLP.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        mlp_ratio: float = 2.0,
        norm_name: str | tuple = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        kernels = [(kernel_size, 1, 1), (1, kernel_size, 1), (1, 1, kernel_size)]
        paddings = [(pad, 0, 0), (0, pad, 0), (0, 0, pad)]
        self.axis_convs = nn.ModuleList(
            nn.Conv3d(channels, channels, k, padding=p, groups=channels) for k, p in zip(kernels, paddings)
        )
        self.axis_norms = nn.ModuleList(
            get_norm_layer(norm_name, spatial_dims=3, channels=channels) for _ in range(3)
        )
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            get_norm_layer(norm_name, spatial_dims=3, channels=channels),
            nn.Conv3d(channels, hidden, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv3d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = sum(norm(conv(x)) for conv, norm in zip(self.axis_convs, self.axis_norms))
        x = x + mixed
        return x + self.mlp(x)


def make_block(
    block_type: str, channels: int, norm_name: str | tuple, act_name: str | tuple, dropout: float
) -> nn.Module:
    """Build one shape-preserving encoder block of ``block_type`` (see ``BLOCK_TYPES``)."""
    if block_type == "residual":
        return UnetResBlock(
            3, channels, channels, kernel_size=3, stride=1, norm_name=norm_name, act_name=act_name, dropout=dropout
        )
    if block_type == "decomposed":
        return DecomposedConvBlock(channels, norm_name=norm_name, dropout=dropout)
    raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}.")


class EncoderStage(nn.Sequential):
    """One encoder level: a strided 3x3x3 convolution halving the resolution,
    then ``depth`` blocks: (B, C_in, D, H, W) -> (B, C_out, D/2, H/2, W/2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        block_type: str,
        norm_name: str | tuple,
        act_name: str | tuple,
        dropout: float,
    ) -> None:
        down = Convolution(
            3, in_channels, out_channels, strides=2, kernel_size=3, norm=norm_name, act=act_name, dropout=dropout
        )
        blocks = [make_block(block_type, out_channels, norm_name, act_name, dropout) for _ in range(depth)]
        super().__init__(down, *blocks)
