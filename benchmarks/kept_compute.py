"""The cost model: where a trained TokenSeg's FLOPs go, window by window, beside MONAI's UNet.

    python -m benchmarks.kept_compute [RUN ...] [--split test] [--out DIR]

With ``refinement="kept"`` (the default) the first level is convolved only
inside the kept first-level cells, so the work per window depends on where
the trained scorer puts its K tokens. Each ``RUN`` is a trained bundle folder
(default: the shipped ``bundle``) or a run folder of ``benchmarks/accuracy.py``
(its ``bundle`` copy and ``overrides.json``: a variant, or another dataset).
For each, the trained network segments the cases of ``--split`` with the
run's validation preprocessing and sliding-window inferer, and for every
window PyTorch's FLOP counter counts its forward pass by part
(``benchmarks.measure.TOKENSEG_PARTS``), with the kept tokens per level and
the share of kept tokens whose cell touches the lesion's boundary band.

It prints, and writes to ``--out`` as ``cost_model.{json,md,png}``, the mean
FLOPs per part per window as trained at the run's patch, the same network
at 96^3 with as many first-level cells kept as it keeps on average as
trained, and MONAI's UNet (the speed benchmark's settings) at both sizes,
with the ratios; and the Dice of the segmentation.
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

from benchmarks.kept_flops import module_gflops_with_kept_first_level
from benchmarks.measure import forward_gflops, module_gflops
from benchmarks.models import build_model
from benchmarks.trained_bundle import load_trained_bundle
from tokenseg.data.datalist import load_datalist
from tokenseg.metrics import boundary_hit_rate_per_level

REPO = Path(__file__).resolve().parents[1]
LARGE_WINDOW = [96, 96, 96]


def window_slices(size: list[int], patch: list[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows MONAI's sliding-window inferer visits (the same scan interval and slicing)."""
    interval = [max(int(p * (1 - overlap)), 1) for p in patch]
    return dense_patch_slices(size, patch, interval)


def load_run(run: Path):
    """A bundle folder, or a ``benchmarks/accuracy.py`` run folder: its config and trained network."""
    if (run / "overrides.json").is_file():
        return load_trained_bundle(run / "bundle", run / "overrides.json")
    return load_trained_bundle(run)


def trained_cost(run: Path, split: str) -> dict:
    """Per-window cost, kept tokens and boundary hits of ``run``'s trained network on ``split``."""
    config, network = load_run(run)
    preprocessing = config.get_parsed_content("validate#preprocessing")
    patch = [int(p) for p in config.get_parsed_content("patch_size")]
    overlap = float(config.get_parsed_content("validate#inferer#overlap"))
    entries = load_datalist(config.get_parsed_content("dataset_dir"), split)
    in_channels, out_channels = network.in_channels, network.out_channels
    levels = len(network.grids)

    windows, dice = [], []
    for entry in entries:
        case = preprocessing(entry)
        image, label = case["image"][None].as_tensor(), case["label"][None].as_tensor()
        logits = sliding_window_inference(image, patch, 4, network, overlap=overlap)
        prediction = one_hot(logits.argmax(1, keepdim=True), out_channels)
        dice.append(compute_dice(prediction, one_hot(label, out_channels), include_background=False).mean().item())
        for window in window_slices(list(image.shape[2:]), patch, overlap):
            crop = (slice(None), slice(None)) + tuple(window)
            output = network.forward_tokens(image[crop])
            kept_levels = network.token_cells[output.kept_indices[0]][:, 0]
            rates = boundary_hit_rate_per_level(output.kept_indices, label[crop], network.grids)
            windows.append({
                "case": Path(entry["image"]).name,
                "gflops_by_part": module_gflops(network, image[crop]),
                "kept_per_level": [int((kept_levels == level).sum()) for level in range(1, levels + 1)],
                "boundary_hit_rate_per_level": [None if math.isnan(r) else float(r) for r in rates]
                if bool(label[crop].any()) else None,
            })

    parts = list(windows[0]["gflops_by_part"])
    by_part = {part: statistics.fmean(w["gflops_by_part"][part] for w in windows) for part in parts}
    kept = [statistics.fmean(w["kept_per_level"][level] for w in windows) for level in range(levels)]
    with_lesion = [w for w in windows if w["boundary_hit_rate_per_level"] is not None]
    hit_rates = []
    for level in range(levels):
        rates = [w["boundary_hit_rate_per_level"][level] for w in with_lesion
                 if w["boundary_hit_rate_per_level"][level] is not None]
        hit_rates.append(statistics.fmean(rates) if rates else None)
    large = torch.zeros(1, in_channels, *LARGE_WINDOW)
    return {
        "run": str(run),
        "network": type(network).__name__,
        "dataset_dir": config.get_parsed_content("dataset_dir"),
        "split": split,
        "cases": len(entries),
        "windows": len(windows),
        "patch": patch,
        "in_channels": in_channels,
        "test_dice": statistics.fmean(dice),
        "gflops_by_part": by_part,
        "gflops_range": [min(w["gflops_by_part"]["total"] for w in windows),
                         max(w["gflops_by_part"]["total"] for w in windows)],
        "unet_gflops": forward_gflops(build_model("unet", in_channels, out_channels, patch),
                                      torch.zeros(1, in_channels, *patch)),
        "kept_per_level": kept,
        "windows_with_lesion": len(with_lesion),
        "boundary_hit_rate_per_level": hit_rates,
        # the same trained network on a 96^3 window, keeping as many first-level cells as it does on average
        "large_window": LARGE_WINDOW,
        "large_gflops_by_part": module_gflops_with_kept_first_level(network, large, round(kept[0])),
        "large_unet_gflops": forward_gflops(build_model("unet", in_channels, out_channels, LARGE_WINDOW), large),
        "per_window": windows,
    }


def cost_table(reports: list[dict]) -> list[str]:
    """GFLOPs per part (rows) of every run at its patch and at 96^3 (columns), UNet and the ratios last."""
    header = "| part | " + " | ".join(f"{Path(r['run']).name} {'x'.join(map(str, r['patch']))} | 96^3"
                                        for r in reports) + " |"
    lines = [header, "|---" * (1 + 2 * len(reports)) + "|"]
    parts = list(dict.fromkeys(p for r in reports for p in r["gflops_by_part"] if p != "total"))
    for part in parts:
        cells = [f"{r['gflops_by_part'].get(part, 0.0):.3f} | {r['large_gflops_by_part'].get(part, 0.0):.3f}"
                 for r in reports]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    totals = [f"**{r['gflops_by_part']['total']:.3f}** | **{r['large_gflops_by_part']['total']:.3f}**" for r in reports]
    unet = [f"{r['unet_gflops']:.3f} | {r['large_unet_gflops']:.3f}" for r in reports]
    ratio = [f"{r['gflops_by_part']['total'] / r['unet_gflops']:.2f}x | "
             f"{r['large_gflops_by_part']['total'] / r['large_unet_gflops']:.2f}x" for r in reports]
    return lines + [f"| total | {' | '.join(totals)} |", f"| MONAI UNet | {' | '.join(unet)} |",
                    f"| TokenSeg / UNet | {' | '.join(ratio)} |"]


def plot(reports: list[dict], path: Path) -> None:
    """Stacked bars: GFLOPs per part of each run at its patch and at 96^3, beside UNet's total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    parts = list(dict.fromkeys(p for r in reports for p in r["gflops_by_part"] if p != "total"))
    for axis, key, unet_key, title in ((axes[0], "gflops_by_part", "unet_gflops", "as trained, at the patch"),
                                        (axes[1], "large_gflops_by_part", "large_unet_gflops", "at 96^3")):
        names = [f"{Path(r['run']).name}\n{'x'.join(map(str, r['patch']))}" for r in reports]
        bottom = [0.0] * len(reports)
        for index, part in enumerate(parts):
            heights = [r[key].get(part, 0.0) for r in reports]
            axis.bar(names, heights, bottom=bottom, color=f"C{index}", label=part)
            bottom = [b + h for b, h in zip(bottom, heights)]
        axis.scatter(names, [r[unet_key] for r in reports], marker="_", s=2000, color="black", label="MONAI UNet",
                     zorder=3)
        axis.set(ylabel="GFLOPs per window", title=title)
        axis.tick_params(axis="x", labelsize=7, labelrotation=15)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="*", default=[REPO / "bundle"])
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--out", type=Path, default=None, help="write cost_model.{json,md,png} here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    reports = []
    for run in args.runs:
        report = trained_cost(run, args.split)
        reports.append(report)
        print(f"{run}: {report['cases']} {args.split} cases, {report['windows']} windows of {report['patch']}; "
              f"Dice {report['test_dice']:.3f}; kept tokens per window by level (finest first): "
              + ", ".join(f"{k:.1f}" for k in report["kept_per_level"])
              + "; share on the boundary band by level: "
              + ", ".join("-" if r is None else f"{r:.2f}" for r in report["boundary_hit_rate_per_level"]), flush=True)
    lines = cost_table(reports)
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cost_model.json").write_text(json.dumps(reports, indent=1))
        (args.out / "cost_model.md").write_text("\n".join(lines) + "\n")
        plot(reports, args.out / "cost_model.png")


if __name__ == "__main__":
    main()
