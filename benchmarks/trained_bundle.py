"""A trained bundle's network and config, read back for the benchmarks that study a trained model
(``benchmarks/kept_compute.py``, ``benchmarks/components.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from tokenseg.bundle_task import load_bundle

__all__ = ["load_trained_bundle"]


def load_trained_bundle(bundle: Path, overrides: Path | None = None) -> tuple[ConfigParser, torch.nn.Module]:
    """``bundle``'s training config (with the JSON ``overrides`` of a benchmark run, if given) and its network
    with ``models/model.pt`` loaded, in evaluation mode on the CPU."""
    return load_bundle(bundle, ("train.json",), overrides=json.loads(overrides.read_text()) if overrides else None)
