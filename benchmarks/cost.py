"""Benchmark TokenSeg against MONAI's UNet, SegResNet, UNETR and SwinUNETR, side by side.

    python -m benchmarks.cost --out runs/bench

Each (model, size, mode) is measured in its own process (``benchmarks.measure``)
so that peak memories never mix; a measurement that fails or runs out of time is
recorded as skipped with its reason. Writes ``bench.json`` (every figure and the
machine), ``bench.md`` (tables, TokenSeg's ratios against each baseline, growth
with input size, and the efficiency targets met or missed) and plots of memory
and latency against input size to ``--out``. With ``--accuracy FILE`` (the JSON
of ``benchmarks/accuracy.py``) it adds the accuracy table, the Dice target and a
plot of test Dice against training memory with its Pareto front.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.models import ABLATIONS, MODEL_SETTINGS, MODELS
from benchmarks.pareto import pareto_front
from benchmarks.tables import accuracy_table

logger = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]  # benchmarks.measure runs from here

BASELINES = ("unet", "segresnet", "unetr", "swinunetr")


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_one(model: str, size: Sequence[int], mode: str, args, volume: Sequence[int] | None = None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.measure", "--model", model, "--size", *map(str, size),
           "--mode", mode, "--repeats", str(args.repeats), "--in-channels", str(args.in_channels)]
    if volume:
        cmd += ["--volume", *map(str, volume)]
    record = {"model": model, "size": list(size), "mode": mode, **({"volume": list(volume)} if volume else {})}
    limit = int(args.memory_limit_gb * 2**30)

    def cap_memory() -> None:  # a model that does not fit fails alone instead of exhausting the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        cap = None if torch.cuda.is_available() else cap_memory
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {**record, "skipped": f"over the {args.timeout} s limit"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**record, "skipped": f"failed: {reason[:300]}"}
    return json.loads(lines[-1][len("RESULT "):])


def ratios(results: list[dict], size: Sequence[int]) -> dict:
    """TokenSeg's figures divided by each baseline's, at one size."""
    def get(model: str, mode: str):
        return next((r for r in results if r["model"] == model and r["mode"] == mode and r["size"] == list(size)
                     and "skipped" not in r), None)

    out = {}
    for baseline in BASELINES:
        row = {}
        for mode, key, name in (("infer", "seconds_median", "latency"), ("infer", "peak_memory_mib", "infer_memory"),
                                ("train", "seconds_median", "train_step"), ("train", "peak_memory_mib", "train_memory")):
            ours, theirs = get("tokenseg", mode), get(baseline, mode)
            if ours and theirs and theirs[key] > 0:
                row[name] = round(ours[key] / theirs[key], 3)
        if row:
            out[baseline] = row
    return out


def growth(results: list[dict]) -> dict:
    """How memory and latency grow with the input: least-squares slopes over the cubic sizes that ran,
    in MiB and seconds per million voxels, per model and mode."""
    out = {}
    for r in results:
        if r["mode"] in ("infer", "train") and "skipped" not in r and len(set(r["size"])) == 1:
            out.setdefault(r["model"], {}).setdefault(r["mode"], []).append(r)
    slopes = {}
    for model, modes in out.items():
        for mode, rows in modes.items():
            if len(rows) < 2:
                continue
            voxels = np.array([math.prod(r["size"]) / 1e6 for r in rows])
            slopes.setdefault(model, {})[mode] = {
                "mib_per_mvoxel": round(float(np.polyfit(voxels, [r["peak_memory_mib"] for r in rows], 1)[0]), 1),
                "seconds_per_mvoxel": round(float(np.polyfit(voxels, [r["seconds_median"] for r in rows], 1)[0]), 3),
                "sizes": [r["size"][0] for r in rows],
            }
    return slopes


# The efficiency targets: TokenSeg's figure over the baseline's at TARGET_SIZE must not exceed the limit
# (1: no more than the baseline; 0.36 and 0.32: the paper's -64% memory and -68% latency against UNETR).
TARGET_SIZE = "96x96x96"
RATIO_TARGETS = (
    ("train_memory", "unet", 1.0), ("train_memory", "segresnet", 1.0), ("train_memory", "unetr", 0.36),
    ("latency", "unet", 1.0), ("latency", "segresnet", 1.0), ("latency", "unetr", 0.32),
)
DICE_MARGIN = 0.01  # TokenSeg's test Dice may trail the best baseline's by at most this


def targets(report: dict) -> list[dict]:
    """Each target with what this run measured and whether it is met (targets whose figures are missing are left out)."""
    out = []
    at_size = report["ratios"].get(TARGET_SIZE, {})
    for figure, baseline, limit in RATIO_TARGETS:
        value = at_size.get(baseline, {}).get(figure)
        if value is not None:
            out.append({"target": f"{figure} at {TARGET_SIZE}: tokenseg / {baseline} <= {limit}",
                        "measured": value, "met": value <= limit})
    for mode in ("infer", "train"):
        ours = report["growth"].get("tokenseg", {}).get(mode)
        theirs = {b: g[mode]["mib_per_mvoxel"] for b, g in report["growth"].items() if b in BASELINES and mode in g}
        if ours and theirs:
            out.append({"target": f"{mode} memory growth (MiB per Mvoxel) below every baseline's {theirs}",
                        "measured": ours["mib_per_mvoxel"], "met": ours["mib_per_mvoxel"] < min(theirs.values())})
    dice = {m: r["test_dice"] for m, r in report.get("accuracy", {}).get("models", {}).items()}
    baseline_dice = {m: d for m, d in dice.items() if m in BASELINES}
    if "tokenseg" in dice and baseline_dice:
        best = max(baseline_dice, key=baseline_dice.get)
        what = f"test Dice at equal budget >= best baseline's ({best}, {baseline_dice[best]:.3f}) - {DICE_MARGIN}"
        out.append({"target": what,
                    "measured": round(dice["tokenseg"], 3), "met": dice["tokenseg"] >= baseline_dice[best] - DICE_MARGIN})
    return out


def markdown(report: dict) -> str:
    lines = ["# TokenSeg benchmark", "", f"Machine: {report['machine']}", "", "Models:", ""]
    lines += [f"- `{m}`: {MODEL_SETTINGS[m]}" for m in report["models"]]
    lines += ["", "| model | size | mode | params (M) | GFLOPs/forward | median s | peak MiB |", "|---" * 7 + "|"]
    for r in report["results"]:
        size = "x".join(map(str, r.get("volume", r["size"])))
        if "skipped" in r:
            lines.append(f"| {r['model']} | {size} | {r['mode']} | | | skipped: {r['skipped'][:80]} | |")
            continue
        flops = f"{r['gflops_forward']:.1f}" if "gflops_forward" in r else ""
        lines.append(f"| {r['model']} | {size} | {r['mode']} | {r['params_m']:.2f} | {flops} | "
                     f"{r['seconds_median']:.3f} | {r['peak_memory_mib']:.0f} |")
    for size, table in report["ratios"].items():
        lines += ["", f"TokenSeg / baseline at {size} (below 1: TokenSeg uses less)", "",
                  "| baseline | latency | infer memory | train step | train memory |", "|---|---|---|---|---|"]
        for baseline, row in table.items():
            cells = [str(row.get(k, "")) for k in ("latency", "infer_memory", "train_step", "train_memory")]
            lines.append(f"| {baseline} | " + " | ".join(cells) + " |")
    lines += ["", "Growth with input size: least-squares slope over the cubic sizes that ran", "",
              "| model | mode | MiB per Mvoxel | s per Mvoxel | sizes |", "|---|---|---|---|---|"]
    for model, modes in report["growth"].items():
        for mode, g in modes.items():
            lines.append(f"| {model} | {mode} | {g['mib_per_mvoxel']} | {g['seconds_per_mvoxel']} | "
                         f"{', '.join(map(str, g['sizes']))} |")
    if "accuracy" in report:
        lines += ["", *accuracy_table(report["accuracy"])]
    lines += ["", "Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path, accuracy: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    scaling = [r for r in report["results"] if r["mode"] in ("infer", "train") and "skipped" not in r
               and len(set(r["size"])) == 1]
    for mode in ("infer", "train"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for model in report["models"]:
            rows = sorted((r for r in scaling if r["model"] == model and r["mode"] == mode), key=lambda r: r["size"][0])
            if len(rows) < 2:
                continue
            sizes = [r["size"][0] for r in rows]
            axes[0].plot(sizes, [r["peak_memory_mib"] for r in rows], marker="o", label=model)
            axes[1].plot(sizes, [r["seconds_median"] for r in rows], marker="o", label=model)
        for ax, ylabel in zip(axes, ("peak memory (MiB)", "median seconds")):
            ax.set_xlabel("cubic input size")
            ax.set_ylabel(ylabel + ", log scale")
            ax.set_yscale("log")  # the models span two orders of magnitude
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{mode}: memory and latency against input size ({report['machine']['device']})")
        name = f"scaling_{mode}.png"
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(name)
    if accuracy:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        points = {}
        for model, acc in accuracy.get("models", {}).items():
            train = next((r for r in report["results"] if r["model"] == model and r["mode"] == "train"
                          and r["size"] == accuracy.get("patch_size") and "skipped" not in r), None)
            if train and "test_dice" in acc:
                points[model] = (train["peak_memory_mib"], acc["test_dice"])
                ax.scatter(*points[model], s=50)
                ax.annotate(model, points[model])
        front = pareto_front(points)
        ax.step([points[m][0] for m in front], [points[m][1] for m in front], where="post", color="grey",
                linestyle="--", label="Pareto front")
        ax.legend(loc="lower right")
        ax.set_xlabel("training-step peak memory (MiB) at the demo patch")
        ax.set_ylabel("test Dice (demo set, equal budget)")
        ax.grid(alpha=0.3)
        fig.savefig(out / "pareto_dice_memory.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append("pareto_dice_memory.png")
    return files


def _key(record: dict) -> tuple:
    return record["model"], tuple(record["size"]), record["mode"], tuple(record.get("volume", ()))


def measure_all(args) -> list[dict]:
    """Every (model, size, mode) of the command line, each in its own process."""
    jobs = [(m, [s] * 3, mode, None) for s in args.sizes for m in args.models for mode in ("infer", "train")]
    jobs += [(m, args.demo_patch, mode, None) for m in args.models for mode in ("infer", "train")
             if args.demo_patch not in ([s] * 3 for s in args.sizes)]
    jobs += [(m, args.window, "sliding", [int(v) for v in vol.split("x")]) for vol in args.volumes for m in args.models]
    jobs = [job for job in jobs if job[2] in args.modes]
    results = []
    for index, (model, size, mode, volume) in enumerate(jobs, start=1):
        record = run_one(model, size, mode, args, volume)
        results.append(record)
        what = "skipped: " + record["skipped"] if "skipped" in record else (
            f"{record['seconds_median']:.3f} s, {record['peak_memory_mib']:.0f} MiB")
        logger.info(f"[{index}/{len(jobs)}] {model} {mode} {'x'.join(map(str, volume or size))}: {what}")
    return results


def summarise(results: list[dict], models: Sequence[str], in_channels: int) -> dict:
    """The report of a set of measurements: the machine, the settings, ratios and growth."""
    sizes = sorted({tuple(r["size"]) for r in results if r["mode"] != "sliding"})
    return {
        "machine": machine(),
        "models": list(models),
        "settings": {m: MODEL_SETTINGS[m] for m in models},
        "batch": 1,
        "in_channels": in_channels,
        "results": results,
        "ratios": {"x".join(map(str, s)): ratios(results, s) for s in sizes if "tokenseg" in models},
        "growth": growth(results),
    }


def merge(saved: dict, new: list[dict], models: Sequence[str]) -> tuple[list[dict], list[str]]:
    """``saved``'s results with each (model, size, mode) measured again replaced in place, the others appended."""
    fresh = {_key(r): r for r in new}
    results = [fresh.pop(_key(r), r) for r in saved["results"]] + list(fresh.values())
    return results, [*saved["models"], *(m for m in models if m not in saved["models"])]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[m for m in MODELS if m not in ABLATIONS], choices=list(MODELS),
                        help="default: every model but the ablation variants (name them to measure them)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160], help="cubic sizes for scaling")
    parser.add_argument("--demo-patch", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--volumes", type=str, nargs="*", default=["96x96x48", "256x256x128"],
                        help="whole volumes for sliding-window inference (windows of --window)")
    parser.add_argument("--window", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per measurement")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0, help="address-space cap per CPU measurement")
    parser.add_argument("--accuracy", type=Path, default=None, help="JSON of benchmarks/accuracy.py")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--modes", nargs="+", default=["infer", "train", "sliding"], choices=["infer", "train", "sliding"],
                        help="which measurements to run (with --update: which to run again)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: remake bench.md and the plots from --out/bench.json (e.g. with --accuracy)")
    parser.add_argument("--update", action="store_true",
                        help="measure the jobs of this command line again and merge them into --out/bench.json, "
                             "replacing the same (model, size, mode)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    saved = args.out / "bench.json"
    if (args.report_only or args.update) and not saved.is_file():
        parser.error(f"--report-only and --update start from {saved}, which does not exist: measure first.")
    if args.report_only:
        report = json.loads(saved.read_text())
    elif args.update:
        previous = json.loads(saved.read_text())
        args.in_channels = previous["in_channels"]  # every figure of one report with the same input
        results, models = merge(previous, measure_all(args), args.models)
        report = summarise(results, models, args.in_channels)
        if "accuracy" in previous:
            report["accuracy"] = previous["accuracy"]
    else:
        report = summarise(measure_all(args), args.models, args.in_channels)
    if args.accuracy:
        report["accuracy"] = json.loads(args.accuracy.read_text())
    report["targets"] = targets(report)
    report["plots"] = plots(report, args.out, report.get("accuracy"))
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    (args.out / "bench.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
