"""Accuracy against cost: test Dice against GFLOPs per window (and training memory), with the Pareto front.

    python -m benchmarks.pareto runs/acc_small/accuracy.json [more accuracy.json ...] \
        [--bench runs/bench/bench.json] --out docs/bench/pareto_small_targets.png

Each accuracy JSON (``benchmarks/accuracy.py``) gives every model's mean
test Dice on one dataset at one budget; models from several files (of one
dataset) are plotted together, a model named in several taken from the first,
each labelled with its file's budget when the budgets differ. The x axis is the
GFLOPs of one forward pass at the file's patch with the dataset's input
channels (PyTorch's FLOP counter); a TokenSeg model is counted with the most
first-level cells it can keep, its most expensive case: all K = 100 kept
tokens there when it ranks all levels together (trained, it keeps fewer:
``benchmarks/kept_compute.py``), its K_1 with K per level. With ``--bench`` (the
JSON of ``benchmarks/cost.py`` at the same patch) a second panel puts the
training step's peak memory on the x axis. A point is on the front when no
other point has at most its cost and at least its Dice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.kept_flops import gflops_with_kept_first_level, most_kept_first_level
from benchmarks.measure import forward_gflops
from benchmarks.models import build_model
from tokenseg.networks import TokenSeg

__all__ = ["pareto_front", "window_gflops", "main"]

# input channels of the accuracy benchmark's datasets (its DATASETS overrides; the demo set's bundle default)
DATASET_CHANNELS = {"demo": 3, "small_targets": 1}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the (cost, dice) points no other point beats on both (less cost and higher Dice), by cost."""
    front = [name for name, (cost, dice) in points.items()
             if not any(c <= cost and d >= dice and (c, d) != (cost, dice) for c, d in points.values())]
    return sorted(front, key=lambda name: points[name][0])


def window_gflops(model: str, in_channels: int, patch: list[int]) -> float:
    """GFLOPs of one forward pass of ``model`` on a window of ``patch``; TokenSeg with K first-level cells kept."""
    network = build_model(model, in_channels, 2, patch)
    x = torch.zeros(1, in_channels, *patch)
    if isinstance(network, TokenSeg):
        return gflops_with_kept_first_level(network, x, most_kept_first_level(network))
    return forward_gflops(network, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("accuracy", type=Path, nargs="+")
    parser.add_argument("--bench", type=Path, default=None, help="JSON of benchmarks/cost.py: training memory")
    parser.add_argument("--out", type=Path, required=True, help="the plot (PNG); a .md table is written beside it")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text())["results"] if args.bench else []
    reports = [json.loads(path.read_text()) for path in args.accuracy]
    budgets = {r["optimisation_steps"] for r in reports}
    points, memory, rows, seen = {}, {}, [], set()
    for report in reports:
        channels = DATASET_CHANNELS[report["dataset_name"]]
        for model, result in report["models"].items():
            if model in seen:
                continue
            seen.add(model)
            name = f"{model} ({report['optimisation_steps']} steps)" if len(budgets) > 1 else model
            gflops = window_gflops(model, channels, report["patch_size"])
            points[name] = (gflops, result["test_dice"])
            train = next((r for r in bench if r["model"] == model and r["mode"] == "train"
                          and r["size"] == report["patch_size"] and "skipped" not in r), None)
            if train:
                memory[name] = (train["peak_memory_mib"], result["test_dice"])
            train_mib = f"{train['peak_memory_mib']:.0f}" if train else ""
            rows.append(f"| {name} | {result['test_dice']:.3f} | {gflops:.2f} | {train_mib} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    panels = [(points, "GFLOPs per window (TokenSeg: the most first-level cells it keeps)")]
    if memory:
        panels.append((memory, "training-step peak memory (MiB), batch 1, CPU"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (panel, xlabel) in zip(axes[0], panels):
        for name, (cost, dice) in panel.items():
            axis.scatter(cost, dice, s=40)
            axis.annotate(name, (cost, dice), fontsize=7)
        front = pareto_front(panel)
        axis.step([panel[m][0] for m in front], [panel[m][1] for m in front], where="post", color="grey",
                  linestyle="--", label="Pareto front")
        axis.set(xlabel=xlabel, ylabel="test Dice (mean over seeds)", xscale="log")
        # plain numbers: over a narrow range the log axis would label its ticks in powers of ten
        axis.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        axis.grid(alpha=0.3, which="both")
        axis.legend(loc="lower right")
    figure.suptitle(reports[0]["dataset"].split(":")[0])
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    front = pareto_front(points)
    lines = ["| model | test Dice | GFLOPs per window | train MiB |", "|---|---|---|---|", *rows, "",
             "On the Dice-GFLOPs Pareto front: " + ", ".join(front) + "."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
