"""Accuracy at an equal budget: each model trained through the same bundle pipeline, then tested, with several seeds.

Every model is trained with the bundle's own ``train.json`` (same data,
patch, augmentation, optimiser, schedule and number of optimisation steps),
only ``network_def`` (built by ``benchmarks.models.build_model``, the
same settings as the speed benchmark) and, for the baselines, the loss
(MONAI's ``DiceCELoss`` in place of ``TokenSegLoss``) differ. Then the
bundle's ``evaluate.json`` measures Dice, IoU and HD95 on the test split.
Each run is the real ``python -m monai.bundle`` command in its own process,
on a copy of the bundle, with the bundle's ``seed`` set per run.

Datasets (``--dataset``): ``demo`` (the bundle's synthetic breast DCE-MRI,
3 channels, large lesions) and ``small_targets`` (single-channel, one small
low-contrast lesion of 0.1-0.5% of the voxels, 0.8 x 0.8 x 5 mm;
``tokenseg.data.small_targets``) and ``cohort`` (the annotation loop's pool
and test cases at 64 x 64 x 16, every case of its own difficulty;
``tokenseg.data.cohort``).

    python -m benchmarks.accuracy --dataset small_targets --epochs 25 --seeds 0 1 2 --out runs/accuracy_small

Writes ``accuracy.json`` and ``accuracy.md`` to ``--out`` (mean and standard
deviation over the seeds, and every seed's figures); pass the JSON to
``python -m benchmarks.cost --accuracy`` for the Dice-memory Pareto plot.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from monai.bundle import ConfigParser

from benchmarks.learning import plot
from benchmarks.models import MODEL_SETTINGS, MODELS
from benchmarks.tables import accuracy_table
from tokenseg.data.cohort import COHORT_SPACING, COHORT_SPLITS, ensure_cohort_dataset
from tokenseg.data.datalist import load_datalist
from tokenseg.data.demo import ensure_demo_dataset
from tokenseg.data.small_targets import SMALL_TARGET_SPACING, ensure_small_target_dataset

REPO = Path(__file__).resolve().parents[1]

# name -> (generator, bundle overrides for its images, description)
DATASETS = {
    "demo": (ensure_demo_dataset, {}, "TokenSeg demo: synthetic breast DCE-MRI, 3 channels"),
    "small_targets": (
        ensure_small_target_dataset,
        {"in_channels": 1, "pixdim": list(SMALL_TARGET_SPACING), "patch_size": [64, 64, 16]},
        "TokenSeg small targets: 1 channel, one lesion of 0.1-0.5% of the voxels, 0.8 x 0.8 x 5 mm",
    ),
    # the annotation loop's cohort at its size there: how far a model trained on the whole pool gets
    "cohort": (
        lambda: ensure_cohort_dataset(REPO / "runs" / "data" / "cohort_64x64x16", COHORT_SPLITS, (64, 64, 16)),
        {"in_channels": 1, "pixdim": list(COHORT_SPACING), "patch_size": [64, 64, 16]},
        "TokenSeg cohort: 1 channel, 0-3 lesions of 0.05-2% of the voxels, contrast to noise 1.5-5, 64 x 64 x 16",
    ),
}


def bundle_run(bundle: Path, run_id: str, configs: list[str], args_file: Path, log: Path) -> str:
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", run_id,
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]",
        "--logging_file", str(bundle / "configs" / "logging.conf"),
        "--args_file", str(args_file),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:  # written as it runs: the bundle's progress bar and logs
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)  # the configs name benchmarks.models
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return log.read_text()


def overrides(model: str, bundle: Path, dataset: str, dataset_dir: str, epochs: int, val_interval: int,
              seed: int, network_inputs: str = "@in_channels") -> dict:
    """The bundle overrides of one run; ``network_inputs``: the network's input channels, as a config expression
    (the interactive models add one click channel per class: ``@in_channels + len(@class_names)``)."""
    args = {"bundle_root": str(bundle), "dataset_dir": dataset_dir, "epochs": epochs, "val_interval": val_interval,
            "num_workers": 0, "seed": seed, **DATASETS[dataset][1]}
    if model == "tokenseg":
        return args  # the bundle as shipped
    network = f"$build_model('{model}', {network_inputs}, @out_channels, @patch_size, @pixdim)"
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))  # the imports and handlers every copy starts from
    # a config's "$import a.b" binds the name "a.b", which no expression can use: import the function itself
    args["imports"] = [*parser["imports"], "$from benchmarks.models import build_model"]
    if model.startswith("tokenseg"):  # a TokenSeg variant: the bundle's own loss (on the variant's grids) and diagnostics
        return {**args, "network_def": network, "loss#grids": "$@network_def.grids"}
    handlers = [h for h in parser["train"]["handlers"] if h["_target_"] != "tokenseg.handlers.TokenSegDiagnostics"]
    return {
        **args,
        "network_def": network,
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "train#handlers": handlers,
    }


def write_report(report: dict, out: Path) -> None:
    """accuracy.json (for ``python -m benchmarks.cost --accuracy``), accuracy.md and the validation curves
    against steps (accuracy_val_curves.png: has every model converged in the budget?) and against
    wall-clock seconds (accuracy_val_seconds.png: time to accuracy)."""
    add_time_to_accuracy(report)
    (out / "accuracy.json").write_text(json.dumps(report, indent=2))
    lines = accuracy_table(report)
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    for key, xlabel, name in (("val_curve", "optimisation step", "accuracy_val_curves.png"),
                              ("val_seconds", "wall-clock seconds of bundle training", "accuracy_val_seconds.png")):
        curves = {model: {seed: r[key] for seed, r in m["per_seed"].items() if r.get(key)}
                  for model, m in report["models"].items()}
        curves = {model: seeds for model, seeds in curves.items() if seeds}
        if curves:
            plot(curves, out / name, ylabel="validation Dice", xlabel=xlabel,
                 title=f"Validation Dice while training\n{report['dataset'].split(':')[0]}, one line per seed")


def fresh_bundle(run_dir: Path) -> Path:
    """``run_dir/bundle``: a copy of the bundle's configs without weights, outputs or data."""
    bundle = run_dir / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(REPO / "bundle", bundle, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "data"))
    return bundle


VALIDATION_LINE = re.compile(r"^(\S+ \S+) - .*Epoch\[(\d+)\] Metrics -- val_mean_dice: ([0-9.]+)", re.MULTILINE)


def validation_curves(log: str, start: float, iterations: int) -> tuple[list, list]:
    """The bundle training log's validations as [[optimisation step, val Dice], ...] and
    [[wall-clock seconds since ``start`` (a ``time.time()``), val Dice], ...] (the log's time stamps)."""
    steps, seconds = [], []
    for stamp, epoch, dice in VALIDATION_LINE.findall(log):
        when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        steps.append([int(epoch) * iterations, float(dice)])
        seconds.append([round(when - start, 1), float(dice)])
    return steps, seconds


def seconds_to_reach(curve: list, target: float) -> float | None:
    """The first wall-clock second of ``curve`` [[seconds, Dice], ...] at which the Dice reaches ``target``."""
    return next((seconds for seconds, dice in curve if dice >= target), None)


def add_time_to_accuracy(report: dict, reference: str = "unet") -> None:
    """Per model and seed, the seconds of bundle training until validation Dice first reaches the reference
    model's best validation Dice (mean over its seeds): ``seconds_to_reference`` (None where never)."""
    reference_runs = report["models"].get(reference, {}).get("per_seed", {})
    best = [max(d for _, d in r["val_seconds"]) for r in reference_runs.values() if r.get("val_seconds")]
    if not best:
        return
    report["reference_val_dice"] = {"model": reference, "best_val_dice": round(statistics.fmean(best), 4)}
    for model in report["models"].values():
        for run in model["per_seed"].values():
            if run.get("val_seconds"):
                run["seconds_to_reference"] = seconds_to_reach(run["val_seconds"], statistics.fmean(best))


def train_and_test(model: str, run_dir: Path, args_file: Path, iterations: int) -> dict:
    """One training run and its test evaluation in ``run_dir``: the figures of the test split (of the
    checkpoint with the best validation Dice, as the bundle saves it) and the validation curves
    against optimisation steps (``iterations`` an epoch) and against wall-clock seconds of training."""
    bundle = fresh_bundle(run_dir)
    start = time.time()
    log = bundle_run(bundle, "training", ["train.json"], args_file, run_dir / "train.log")
    seconds = time.time() - start
    bundle_run(bundle, "evaluating", ["train.json", "evaluate.json"], args_file, run_dir / "evaluate.log")
    with open(bundle / "eval" / "metrics.csv") as f:
        metrics = {name: float(value) for name, value in csv.reader(f)}
    result = {
        "test_dice": metrics["val_mean_dice"],
        "test_iou": metrics["val_mean_iou"],
        "test_hd95_mm": metrics["val_hd95"],
        "train_seconds": round(seconds, 1),
    }
    result["val_curve"], result["val_seconds"] = validation_curves(log, start, iterations)
    hit_rates = re.findall(r"boundary_hit_rate: ([0-9.]+)", log)
    if hit_rates:
        result["boundary_hit_rate_last_epoch"] = float(hit_rates[-1])
    return result


def summarise(per_seed: dict[str, dict]) -> dict:
    """Mean (and standard deviation over seeds, ``<name>_sd``) of every figure, with the seeds' own figures."""
    per_seed = dict(sorted(per_seed.items(), key=lambda item: int(item[0])))  # seed order, whatever order they ran in
    summary: dict = {"per_seed": per_seed}
    for name, first in next(iter(per_seed.values())).items():
        # curves, and the seconds to the reference Dice (None where never reached), stay per seed
        if isinstance(first, list) or name == "seconds_to_reference":
            continue
        values = [r[name] for r in per_seed.values() if name in r]
        summary[name] = round(statistics.fmean(values), 4)
        if len(values) > 1:
            summary[f"{name}_sd"] = round(statistics.stdev(values), 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    baselines = ["tokenseg", "unet", "segresnet", "unetr", "swinunetr"]
    parser.add_argument("--models", nargs="+", default=baselines, choices=list(MODELS))
    parser.add_argument("--dataset", choices=list(DATASETS), default="demo")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--val-interval", type=int, default=None,
                        help="validate every this many epochs (default: once, at the end); the curve shows "
                             "whether a model has converged, and the test uses the best validated checkpoint")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "accuracy")
    parser.add_argument("--update", action="store_true",
                        help="keep what --out/accuracy.json holds (same budget) and add or replace these models' seeds")
    args = parser.parse_args()
    generate, _, description = DATASETS[args.dataset]
    dataset_dir = generate()
    args.out.mkdir(parents=True, exist_ok=True)
    train_config = ConfigParser.load_config_file(str(REPO / "bundle" / "configs" / "train.json"))
    training_cases = len(load_datalist(dataset_dir, "training", val_fraction=train_config["val_fraction"]))
    iterations = -(-training_cases // train_config["batch_size"])  # the last batch may be short
    report = {
        "dataset": f"{description} ({training_cases} training cases)",
        "dataset_name": args.dataset,
        "patch_size": DATASETS[args.dataset][1].get("patch_size", train_config["patch_size"]),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "optimisation_steps": args.epochs * iterations,
        "patches_per_step": train_config["batch_size"] * train_config["num_samples"],
        "settings": {m: MODEL_SETTINGS[m] for m in args.models},
        "models": {},
    }
    saved = args.out / "accuracy.json"
    if args.update and saved.is_file():
        previous = json.loads(saved.read_text())
        if (previous["optimisation_steps"], previous["dataset"]) != (report["optimisation_steps"], report["dataset"]):
            parser.error(f"--update: {saved} was measured at {previous['optimisation_steps']} optimisation steps on "
                         f"{previous['dataset']}")
        report["models"] = previous["models"]
        report["seeds"] = sorted(set(previous["seeds"]) | set(args.seeds))
        report["settings"] = {**previous["settings"], **report["settings"]}
    for model in args.models:
        # with --update, seeds measured before stay beside the new ones (a seed measured again is replaced)
        per_seed = dict(report["models"].get(model, {}).get("per_seed", {}))
        for seed in args.seeds:
            run_dir = args.out / model / f"seed_{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            args_file = run_dir / "overrides.json"
            args_file.write_text(json.dumps(
                overrides(model, run_dir / "bundle", args.dataset, dataset_dir, args.epochs,
                          args.val_interval or args.epochs, seed), indent=2))
            print(f"{model} seed {seed}: training {args.epochs} epochs (progress in {run_dir / 'train.log'})", flush=True)
            per_seed[str(seed)] = train_and_test(model, run_dir, args_file, iterations)
            print(model, seed, per_seed[str(seed)], flush=True)
            report["models"][model] = summarise(per_seed)
            write_report(report, args.out)  # after every run: a long run stopped midway keeps what it measured


if __name__ == "__main__":
    main()
