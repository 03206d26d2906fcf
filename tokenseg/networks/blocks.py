"""Blocks of TokenSeg: the encoder's convolutional blocks and the token mixer's transformer block.

Two block types share one interface, ``block(channels) -> nn.Module`` that
keeps shape (B, C, D, H, W):

- ``"residual"``: MONAI's ``UnetResBlock`` (two 3x3x3 convolutions and a
  residual connection).
- ``"decomposed"``: DCFormer's decomposed convolution: three parallel
  depthwise 1-D convolutions along D, H and W, each with its own norm,
  summed, then a pointwise MLP; both with residual connections.

``TokenMixerBlock`` is a pre-norm transformer block over the kept tokens.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, MLPBlock, SABlock, UnetResBlock
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = [
    "AxisDepthwiseConv", "DecomposedConvBlock", "make_block", "make_fuse", "EncoderStage", "TokenMixerBlock", "BLOCK_TYPES"
]

BLOCK_TYPES = ("residual", "decomposed")


class AxisDepthwiseConv(nn.Module):
    """Depthwise 1-D convolution along one spatial axis: (B, C, D, H, W) -> same shape ("same" zero padding).

    Computed as a 2-D depthwise convolution of the map reshaped so that the
    axis is a row axis: PyTorch's CPU kernels for depthwise 3-D convolutions
    are several times slower than its 2-D ones, forward and backward
    (measured at TokenSeg's level sizes: 3-10x along D and H).

    Args:
        channels: C.
        kernel_size: length k of the kernel (odd).
        axis: 0, 1 or 2 for D, H or W.
    """

    def __init__(self, channels: int, kernel_size: int, axis: int) -> None:
        super().__init__()
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (D, H, W), got {axis}.")
        self.axis = axis
        self.padding = kernel_size // 2
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=self.padding, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        weight, bias, p = self.conv.weight, self.conv.bias, self.padding
        if self.axis == 0:  # D rows, H * W columns
            y = nn.functional.conv2d(x.reshape(b, c, d, h * w), weight.unsqueeze(-1), bias, padding=(p, 0), groups=c)
            return y.view(b, c, d, h, w)
        if self.axis == 1:  # each of the B * D slices: H rows, W columns
            slices = x.transpose(1, 2).reshape(b * d, c, h, w)
            y = nn.functional.conv2d(slices, weight.unsqueeze(-1), bias, padding=(p, 0), groups=c)
            return y.view(b, d, c, h, w).transpose(1, 2)
        # D * H rows, W columns
        y = nn.functional.conv2d(x.reshape(b, c, d * h, w), weight.unsqueeze(-2), bias, padding=(0, p), groups=c)
        return y.view(b, c, d, h, w)


class DecomposedConvBlock(nn.Module):
    """DCFormer-style decomposed convolution block; keeps (B, C, D, H, W).

    Args:
        channels: number of channels C.
        kernel_size: length of each 1-D depthwise kernel.
        mlp_ratio: hidden width of the pointwise MLP relative to C.
        norm_name: MONAI norm name used after each 1-D convolution; ``None``: no norm.
        act_name: MONAI activation name inside the MLP.
        dropout: dropout rate inside the MLP.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        mlp_ratio: float = 2.0,
        norm_name: str | tuple | None = "batch",
        act_name: str | tuple = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.Identity() if norm_name is None else get_norm_layer(norm_name, spatial_dims=3, channels=channels)

        self.axis_branches = nn.ModuleList(
            nn.Sequential(AxisDepthwiseConv(channels, kernel_size, axis), norm()) for axis in range(3)
        )
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            norm(),
            nn.Conv3d(channels, hidden, 1),
            get_act_layer(act_name),
            nn.Dropout(dropout),
            nn.Conv3d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.zeros_like(x)
        for branch in self.axis_branches:
            mixed = mixed + branch(x)
        x = x + mixed
        return x + self.mlp(x)


def make_block(
    block_type: str, channels: int, norm_name: str | tuple | None, act_name: str | tuple, dropout: float
) -> nn.Module:
    """Build one shape-preserving encoder block of ``block_type`` (see ``BLOCK_TYPES``); ``norm_name`` ``None``
    (no norm) only for ``"decomposed"``."""
    if block_type == "residual":
        if norm_name is None:
            raise ValueError("residual blocks need a norm (norm_name None is for decomposed blocks).")
        return UnetResBlock(
            3, channels, channels, kernel_size=3, stride=1, norm_name=norm_name, act_name=act_name, dropout=dropout
        )
    if block_type == "decomposed":
        return DecomposedConvBlock(channels, norm_name=norm_name, act_name=act_name, dropout=dropout)
    raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}.")


def make_fuse(
    block_type: str, channels: int, norm_name: str | tuple | None, act_name: str | tuple, dropout: float
) -> nn.Module:
    """The decoder's shape-preserving convolution after a skip is added, in the family of ``block_type``:
    one 3x3x3 convolution with norm and activation (``"residual"``) or one ``DecomposedConvBlock``
    (``"decomposed"``, 6x fewer multiply-adds at 32 channels, 12x at 64)."""
    if block_type == "residual" and norm_name is not None:
        return Convolution(3, channels, channels, kernel_size=3, norm=norm_name, act=act_name, dropout=dropout)
    return make_block(block_type, channels, norm_name, act_name, dropout)


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


class TokenMixerBlock(nn.Module):
    """Pre-norm transformer block over tokens (B, K, E) -> (B, K, E), from MONAI's ``SABlock`` and ``MLPBlock``.

    MONAI's ``TransformerBlock`` without its cross-attention branch, which it
    builds even when unused: unused parameters break ``DistributedDataParallel``
    and the branch does not script.

    Args:
        token_dim: token width E.
        mlp_dim: hidden width of the MLP.
        num_heads: attention heads.
        dropout: dropout rate.
    """

    def __init__(self, token_dim: int, mlp_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(token_dim)
        self.attn = SABlock(token_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = MLPBlock(token_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
