"""Small synthetic volumes generated in memory (no download), for demos and tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["single_lesion_volume"]


def single_lesion_volume(
    size: Sequence[int] = (32, 32, 32), in_channels: int = 1, noise: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ellipsoidal lesion with a bumpy surface in a noisy background.

    Returns:
        image: (1, in_channels, D, H, W) float; channel c is brighter in the
            lesion by (c + 1) / in_channels (a lesion enhancing over phases).
        label: (1, 1, D, H, W) float in {0, 1}.
    """
    generator = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*(torch.linspace(-1, 1, s) for s in size), indexing="ij")
    centre = (torch.rand(3, generator=generator) - 0.5) * 0.4
    radii = 0.3 + 0.2 * torch.rand(3, generator=generator)
    radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)).sqrt()
    angle = torch.atan2(grids[1] - centre[1], grids[0] - centre[0])
    label = (radius < 1.0 + 0.15 * torch.sin(5 * angle)).float()[None, None]
    phases = [label * (c + 1) / in_channels for c in range(in_channels)]
    image = torch.cat(phases, dim=1) + noise * torch.randn((1, in_channels, *size), generator=generator)
    return image, label
