"""The work the trained TokenSeg does on real volumes: where its kept tokens go and what they cost.

    python -m benchmarks.kept_compute [--bundle bundle] [--split test]

With ``refinement="kept"`` (the default) the first level is convolved only
inside the kept first-level cells, so the work per window depends on where
the trained scorer puts its K tokens. This loads the bundle's checkpoint and
its validation preprocessing (image and label), runs the bundle's
sliding-window inferer over the demo set's cases of ``--split``, and for every
window counts (PyTorch's FLOP counter) the trained default's FLOPs and notes
its kept tokens per level and the share of them whose cell touches the
lesion's boundary band. It prints the means per window against the FLOPs of
the dense ablation (``selection="all", refinement="dense"``) and of MONAI's
UNet of the speed benchmark at the same patch (neither depends on the
weights), and the Dice of the segmentation.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import forward_gflops
from benchmarks.models import build_model
from benchmarks.trained_bundle import load_trained_bundle
from tokenseg.data.datalist import load_datalist
from tokenseg.metrics import boundary_hit_rate_per_level

REPO = Path(__file__).resolve().parents[1]


def window_slices(size: list[int], patch: list[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows MONAI's sliding-window inferer visits (the same scan interval and slicing)."""
    interval = [max(int(p * (1 - overlap)), 1) for p in patch]
    return dense_patch_slices(size, patch, interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "bundle")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    config, network = load_trained_bundle(args.bundle)
    preprocessing = config.get_parsed_content("validate#preprocessing")
    patch = [int(p) for p in config.get_parsed_content("patch_size")]
    overlap = float(config.get_parsed_content("validate#inferer#overlap"))
    entries = load_datalist(config.get_parsed_content("dataset_dir"), args.split)
    in_channels, out_channels = network.in_channels, network.out_channels

    windows, dice = [], []
    for entry in entries:
        case = preprocessing(entry)
        image, label = case["image"][None].as_tensor(), case["label"][None].as_tensor()
        logits = sliding_window_inference(image, patch, 4, network, overlap=overlap)
        prediction = one_hot(logits.argmax(1, keepdim=True), out_channels)
        dice.append(compute_dice(prediction, one_hot(label, out_channels), include_background=False).mean().item())
        for window in window_slices(list(image.shape[2:]), patch, overlap):
            crop = (slice(None), slice(None)) + tuple(window)
            with FlopCounterMode(display=False) as counter:
                output = network.forward_tokens(image[crop])
            levels = network.token_cells[output.kept_indices[0]][:, 0]
            touches_lesion = bool(label[crop].any())
            rates = boundary_hit_rate_per_level(output.kept_indices, label[crop], network.grids)
            windows.append({
                "case": Path(entry["image"]).name,
                "gflops": counter.get_total_flops() / 1e9,
                "kept_per_level": [int((levels == level).sum()) for level in range(1, len(network.grids) + 1)],
                "boundary_hit_rate_per_level": [None if math.isnan(r) else float(r) for r in rates] if touches_lesion
                else None,
            })

    x = torch.zeros(1, in_channels, *patch)
    dense = forward_gflops(build_model("tokenseg_dense", in_channels, out_channels, patch), x)
    unet = forward_gflops(build_model("unet", in_channels, out_channels, patch), x)
    gflops = statistics.mean(w["gflops"] for w in windows)
    levels = len(network.grids)
    kept = [statistics.mean(w["kept_per_level"][level] for w in windows) for level in range(levels)]
    with_lesion = [w for w in windows if w["boundary_hit_rate_per_level"] is not None]
    hit_rates = []
    for level in range(levels):
        rates = [w["boundary_hit_rate_per_level"][level] for w in with_lesion
                 if w["boundary_hit_rate_per_level"][level] is not None]
        hit_rates.append(statistics.mean(rates) if rates else None)
    report = {
        "checkpoint": str(args.bundle / "models" / "model.pt"),
        "split": args.split,
        "cases": len(entries),
        "windows": len(windows),
        "patch": patch,
        "test_dice": statistics.mean(dice),
        "gflops_per_window": gflops,
        "gflops_range": [min(w["gflops"] for w in windows), max(w["gflops"] for w in windows)],
        "dense_ablation_gflops": dense,
        "unet_gflops": unet,
        "kept_per_level": kept,
        "windows_with_lesion": len(with_lesion),
        "boundary_hit_rate_per_level": hit_rates,
        "per_window": windows,
    }
    print(f"{len(entries)} {args.split} cases, {len(windows)} windows of {patch}; Dice {report['test_dice']:.3f}")
    print("kept tokens per window by level (finest first): " + ", ".join(f"{k:.1f}" for k in kept))
    print(f"GFLOPs per window: {gflops:.2f} (range {report['gflops_range'][0]:.2f}-{report['gflops_range'][1]:.2f}); "
          f"dense ablation {dense:.2f} (ratio {gflops / dense:.2f}); UNet {unet:.2f} (ratio {gflops / unet:.2f})")
    print(f"share of kept tokens on the lesion boundary band, in the {len(with_lesion)} windows with lesion, "
          "by level: " + ", ".join("-" if r is None else f"{r:.2f}" for r in hit_rates))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kept_compute.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
