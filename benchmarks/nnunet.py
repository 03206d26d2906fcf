"""nnU-Net's residual-encoder U-Net (ResEnc M), planned for a patch the way nnU-Net plans it.

The network is ``ResidualEncoderUNet`` from ``dynamic-network-architectures``
(the package nnU-Net builds its networks from); the plan follows nnU-Net v2's
``ResEncUNetMPlanner``: 32 features at full resolution doubling per stage up
to 320, (1, 3, 4, 6, 6, ...) residual blocks per encoder stage, one
convolution per decoder stage, instance norm, leaky ReLU, no deep
supervision (the benchmark trains every model on one output). Pooling and
kernel sizes follow nnU-Net's topology rule: an axis is pooled while its
feature map stays at least 4 voxels and its spacing is within a factor 2 of
the finest one; its kernel is 3 once its spacing is within that factor, 1
before (so thick-slice data get in-plane kernels first).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["plan_resenc_m", "resenc_m"]

MIN_FEATURE_MAP = 4
BASE_FEATURES = 32
MAX_FEATURES = 320
BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6)


def plan_resenc_m(patch_size: Sequence[int], spacing: Sequence[float]) -> dict:
    """nnU-Net's topology for ``patch_size`` at ``spacing``: strides and kernel sizes per stage, features, blocks."""
    size, current = [float(s) for s in patch_size], [float(s) for s in spacing]
    kernel = [1] * len(size)
    strides, kernels = [[1] * len(size)], []
    while True:
        poolable = [axis for axis in range(len(size)) if size[axis] >= 2 * MIN_FEATURE_MAP]
        if not poolable:
            break
        finest = min(current[axis] for axis in poolable)
        poolable = [axis for axis in poolable if current[axis] / finest < 2]
        if len(poolable) == 1 and size[poolable[0]] < 3 * MIN_FEATURE_MAP:
            break
        kernel = [3 if k == 3 or current[axis] / min(current) < 2 else 1 for axis, k in enumerate(kernel)]
        stride = [2 if axis in poolable else 1 for axis in range(len(size))]
        for axis in poolable:
            current[axis] *= 2
            size[axis] = -(-size[axis] // 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * len(size))  # the bottleneck
    stages = len(strides)
    return {
        "strides": strides,
        "kernel_sizes": kernels,
        "features_per_stage": [min(BASE_FEATURES * 2**stage, MAX_FEATURES) for stage in range(stages)],
        "n_blocks_per_stage": list(BLOCKS_PER_STAGE[:stages]),
        "n_conv_per_stage_decoder": [1] * (stages - 1),
    }


def resenc_m(in_channels: int, out_channels: int, patch_size: Sequence[int], spacing: Sequence[float]) -> nn.Module:
    """ResEnc M for (B, in_channels, *patch_size) -> (B, out_channels, *patch_size) logits."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    plan = plan_resenc_m(patch_size, spacing)
    return ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=len(plan["strides"]),
        conv_op=nn.Conv3d,
        num_classes=out_channels,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
        **plan,
    )
