"""Dual Cross-Attention (DCA) over the skip features, in 3D.

Ates et al., "Dual Cross-Attention for Medical Image Segmentation",
Engineering Applications of Artificial Intelligence 2023 (arXiv 2303.17696).
The published module is 2D; here it runs on the encoder's skip levels of a
3D network. For S skip features f_s (B, C_s, D/2^s, H/2^s, W/2^s), s = 1..S:

- patch tokens: f_s average-pooled by 2^(L-s) to the bottleneck's grid
  (L = S + 1 levels) -> t_s (B, P, C_s), P = D H W / 8^L positions, the same
  for every level, so the levels can attend to one another;
- channel cross-attention: each level's channels query the channels of all
  levels, t_s += (softmax(q_s^T k / sqrt(C)) v^T)^T, q_s (B, P, C_s),
  k = v (B, P, C) with C = sum C_s: (B, C_s, C) attention over channels;
- spatial cross-attention: positions query positions of all levels,
  t_s += softmax(q k^T / sqrt(C)) v_s, q = k (B, P, C), v_s (B, P, C_s):
  (B, P, P) attention;
- back to each level: t_s (B, C_s, D/2^L, ...) upsampled by 2^(L-s), 1x1x1
  convolution, norm, activation, added to f_s: same shapes as the input.

As in the paper the projections are depthwise (one weight per channel and
token), so the module takes any patch whose levels the network takes, and
costs little: at 96^3 P = 216 and the attention maps are (C_s, C) and
(P, P).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List, Tuple

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn import functional as F

__all__ = ["DualCrossAttention"]


class DepthwiseProjection(nn.Module):
    """Per-channel affine map of tokens (B, P, C) -> (B, P, C): the paper's 1x1 depthwise projection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.weight + self.bias


class LevelProjections(nn.Module):
    """One level's part of a cross-attention: its LayerNorm, its own projection (query or value) and the
    output projection, on tokens (B, P, C_s)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.project = DepthwiseProjection(channels)
        self.output = DepthwiseProjection(channels)


class LevelCrossAttention(nn.Module):
    """What channel and spatial cross-attention share: each level's ``LevelProjections``, the joint width
    C = sum C_s and its scale, and the normed tokens with their concatenation."""

    def __init__(self, level_channels: Sequence[int]) -> None:
        super().__init__()
        self.joint_channels = sum(level_channels)
        self.levels = nn.ModuleList(LevelProjections(c) for c in level_channels)
        self.scale = 1.0 / math.sqrt(self.joint_channels)

    def normed(self, tokens: List[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """tokens: one (B, P, C_s) per level -> each level's normed tokens and their concatenation (B, P, C)."""
        normed = [part.norm(tokens[level]) for level, part in enumerate(self.levels)]
        return normed, torch.cat(normed, dim=2)


class ChannelCrossAttention(LevelCrossAttention):
    """Each level's channels attend to the channels of all levels (each level projects its queries).

    tokens: one (B, P, C_s) per level -> the same list (residual added), C = sum C_s.
    """

    def __init__(self, level_channels: Sequence[int]) -> None:
        super().__init__(level_channels)
        self.key = DepthwiseProjection(self.joint_channels)
        self.value = DepthwiseProjection(self.joint_channels)

    def forward(self, tokens: List[torch.Tensor]) -> List[torch.Tensor]:
        normed, joint = self.normed(tokens)
        key, value = self.key(joint), self.value(joint)
        out: List[torch.Tensor] = []
        for level, part in enumerate(self.levels):
            query = part.project(normed[level])  # (B, P, C_s)
            attention = torch.softmax(query.transpose(1, 2) @ key * self.scale, dim=-1)  # (B, C_s, C)
            out.append(tokens[level] + part.output((attention @ value.transpose(1, 2)).transpose(1, 2)))  # (B, P, C_s)
        return out


class SpatialCrossAttention(LevelCrossAttention):
    """Each level's positions attend to the positions of all levels, with the joint channels as keys (each
    level projects its values).

    tokens: one (B, P, C_s) per level -> the same list (residual added).
    """

    def __init__(self, level_channels: Sequence[int]) -> None:
        super().__init__(level_channels)
        self.query = DepthwiseProjection(self.joint_channels)
        self.key = DepthwiseProjection(self.joint_channels)

    def forward(self, tokens: List[torch.Tensor]) -> List[torch.Tensor]:
        normed, joint = self.normed(tokens)
        attention = torch.softmax(self.query(joint) @ self.key(joint).transpose(1, 2) * self.scale, dim=-1)  # (B, P, P)
        out: List[torch.Tensor] = []
        for level, part in enumerate(self.levels):
            out.append(tokens[level] + part.output(attention @ part.project(normed[level])))  # (B, P, C_s)
        return out


class DualCrossAttention(nn.Module):
    """DCA on the skip levels: features f_s (B, C_s, D_s, H_s, W_s), finest first, each level half the previous
    resolution, the last one 2x the bottleneck's -> the same shapes (see the module docstring).

    Args:
        level_channels: C_s of the S skip levels, finest first.
        norm_name, act_name: MONAI norm and activation names of the output convolutions.

    Examples::

        >>> dca = DualCrossAttention([32, 64, 128])
        >>> skips = [torch.rand(2, 32, 32, 32, 16), torch.rand(2, 64, 16, 16, 8), torch.rand(2, 128, 8, 8, 4)]
        >>> [f.shape[1] for f in dca(skips)]
        [32, 64, 128]
    """

    def __init__(
        self,
        level_channels: Sequence[int],
        norm_name: str | tuple = "batch",
        act_name: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    ) -> None:
        super().__init__()
        self.levels = len(level_channels)
        self.channel_attention = ChannelCrossAttention(level_channels)
        self.spatial_attention = SpatialCrossAttention(level_channels)
        self.outputs = nn.ModuleList(
            Convolution(3, c, c, kernel_size=1, norm=norm_name, act=act_name) for c in level_channels
        )

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        tokens: List[torch.Tensor] = []
        for level, feature in enumerate(features):
            patch = 1 << (self.levels - level)  # 2^(S - s): pools level s to the bottleneck's grid
            tokens.append(F.avg_pool3d(feature, [patch, patch, patch]).flatten(2).transpose(1, 2))  # (B, P, C_s)
        grid = [s // (1 << self.levels) for s in features[0].shape[2:]]
        tokens = self.spatial_attention(self.channel_attention(tokens))
        out: List[torch.Tensor] = []
        for level, output in enumerate(self.outputs):
            feature = features[level]
            t = tokens[level].transpose(1, 2).reshape(feature.shape[0], feature.shape[1], grid[0], grid[1], grid[2])
            t = F.interpolate(t, size=feature.shape[2:], mode="trilinear", align_corners=False)
            out.append(feature + output(t))
        return out
