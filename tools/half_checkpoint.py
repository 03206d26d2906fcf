"""Store a trained checkpoint's floating-point tensors in float16, for shipping.

    python tools/half_checkpoint.py bundle/models/model.pt [--out bundle/models/model.pt]

The model zoo limits a bundle's files to 25 MB (bigger ones must be hosted
elsewhere and listed in ``large_files.yml``); TokenSeg 0.4's float32 weights
are 43 MB. ``load_state_dict`` casts each tensor to the parameter's dtype, so
the bundle, the MONAI Label app and fine-tuning load the float16 file into the
float32 network unchanged. Training checkpoints stay float32; only the shipped
file is halved. Written beside the target and renamed into place, as the
bundle's checkpoints are (``tokenseg.handlers.save_replacing``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tokenseg.handlers import save_replacing


def half_checkpoint(source: Path, target: Path) -> None:
    source_mib = source.stat().st_size / 2**20
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(f"{source}: expected a state dict of tensors (the bundle's model.pt), got {type(state).__name__}.")
    halved = {name: t.half() if t.is_floating_point() else t for name, t in state.items()}
    save_replacing(halved, target)
    print(f"{source} ({source_mib:.1f} MiB) -> {target} ({target.stat().st_size / 2**20:.1f} MiB, float16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, help="default: replace the checkpoint")
    args = parser.parse_args()
    half_checkpoint(args.checkpoint, args.out or args.checkpoint)


if __name__ == "__main__":
    main()
