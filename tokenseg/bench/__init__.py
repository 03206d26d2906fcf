"""Benchmarks of TokenSeg against MONAI's segmentation networks (``python -m tokenseg.bench``)."""
