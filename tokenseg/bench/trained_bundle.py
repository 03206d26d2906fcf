"""A trained bundle's network and config, read back for the benchmarks that study a trained model
(``benchmarks/kept_compute.py``, ``benchmarks/components.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigParser

__all__ = ["load_trained_bundle"]


def load_trained_bundle(bundle: Path, overrides: Path | None = None) -> tuple[ConfigParser, torch.nn.Module]:
    """``bundle``'s training config (with the JSON ``overrides`` of a benchmark run, if given) and its network
    with ``models/model.pt`` loaded, in evaluation mode on the CPU."""
    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "train.json"))
    if overrides is not None:
        config.update(json.loads(overrides.read_text()))
    config["bundle_root"] = str(bundle)
    network = config.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    return config, network.eval()
