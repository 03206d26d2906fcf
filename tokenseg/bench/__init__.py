"""Benchmarks of TokenSeg against MONAI's segmentation networks (``python -m tokenseg.bench``)."""

from tokenseg.bench import models

__all__ = ["models"]
