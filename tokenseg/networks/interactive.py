"""The interactive model starts from the automatic one: every weight they share, and the same function at first.

The interactive TokenSeg differs from the automatic one only in its input:
``guidance_channels`` more channels (DeepEdit's clicks), so only the first
convolution's weight has another shape. ``load_automatic_weights`` copies every
tensor whose name and shape match (MONAI's ``copy_model_state``) and, for a
weight that differs only in its input channels, copies the image channels'
slice and zeroes the guidance channels' one: before training, the
interactive model with no clicks computes exactly what the automatic model does.
"""

from __future__ import annotations

import os

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from tokenseg.bundle_task import read_weights

__all__ = ["load_automatic_weights"]


def load_automatic_weights(network: nn.Module, checkpoint: str | os.PathLike) -> list[str]:
    """Load the automatic model's ``checkpoint`` into the interactive ``network``; returns the tensors set."""
    source = read_weights(checkpoint)
    state, updated, _ = copy_model_state(network, source, inplace=False)
    for name, value in source.items():
        target = state.get(name)
        if target is None or target.ndim < 2 or target.shape == value.shape:
            continue
        if target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:] and target.shape[1] > value.shape[1]:
            widened = torch.zeros_like(target)
            widened[:, : value.shape[1]] = value
            state[name] = widened
            updated.append(name)
    network.load_state_dict(state)
    return updated
