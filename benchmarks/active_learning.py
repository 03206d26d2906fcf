"""Does labelling in the app's active-learning order reach a Dice with fewer labels than random order?

Simulates the annotation loop the app serves, on the demo dataset, with the
bundle's own training and evaluation (``monai.bundle.run``, as MONAI Label
runs them) and the app's own scorer:

1. a base model is trained on ``--initial`` randomly chosen training cases;
2. for each strategy, starting from that model, each round labels ``--step``
   more cases from the remaining training pool (``tokenseg_uncertainty``: the
   highest boundary-token entropy under the current model; ``random``: a
   seeded draw), fine-tunes the current weights for ``--epochs`` on every
   labelled case, and evaluates Dice on the demo's test split.

Writes ``results.json``, ``results.md`` and ``dice_vs_labels.png`` to ``--out``.

    python -m benchmarks.active_learning --out runs/active_learning
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import shutil
import sys
import time
from pathlib import Path

import matplotlib
import monai.bundle
import torch
from monai.bundle import ConfigParser

from tokenseg.data.datalist import load_datalist
from tokenseg.data.demo import ensure_demo_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monailabel_app"))  # the app's own scorer, as the app imports it
from lib.activelearning.boundary_entropy import BundleScorer  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger("active_learning")


def copy_bundle(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval"), dirs_exist_ok=True)
    (dest / "models").mkdir(exist_ok=True)
    return dest


def train(bundle: Path, labelled: list[dict], epochs: int, resume: bool) -> None:
    """Fine-tune (or train from scratch) with the bundle's training config, as MONAI Label's train task does."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    handlers = parser["train"]["handlers"]
    checkpoint = bundle / "models" / "model.pt"
    if resume:
        loader = {"_target_": "CheckpointLoader", "load_path": str(checkpoint), "load_dict": {"model": "$@network"}}
        handlers = [loader, *handlers]
    monai.bundle.run(
        run_id="run",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "train.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        epochs=epochs,
        num_workers=0,
        **{"train#dataset#data": labelled, "validate#dataset#data": [], "train#handlers": handlers},
    )


def test_dice(bundle: Path, dataset_dir: str) -> float:
    monai.bundle.run(
        run_id="run",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=[str(bundle / "configs" / "train.json"), str(bundle / "configs" / "evaluate.json")],
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        dataset_dir=dataset_dir,
        num_workers=0,
    )
    with open(bundle / "eval" / "metrics.csv") as f:
        return float(dict(csv.reader(f))["val_mean_dice"])


def pick(strategy: str, bundle: Path, pool: list[dict], count: int, rng: random.Random) -> list[dict]:
    if strategy == "random":
        return rng.sample(pool, count)
    scorer = BundleScorer(str(bundle), torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    scores = {entry["image"]: scorer(entry["image"]) for entry in pool}
    ranked = sorted(pool, key=lambda entry: scores[entry["image"]], reverse=True)
    logger.info(f"boundary-token entropy of the pool: { {Path(k).name: round(v, 4) for k, v in scores.items()} }")
    return ranked[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "bundle")
    parser.add_argument("--dataset_dir", default=None, help="default: the demo dataset")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "active_learning")
    parser.add_argument("--initial", type=int, default=2)
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=["tokenseg_uncertainty", "random"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    dataset_dir = args.dataset_dir or ensure_demo_dataset()
    pool = load_datalist(dataset_dir, "training")
    rng = random.Random(args.seed)
    initial = rng.sample(pool, args.initial)
    start = time.time()

    base = copy_bundle(args.bundle, args.out / "base")
    train(base, initial, args.epochs, resume=False)
    results = {"settings": vars(args) | {"bundle": str(args.bundle), "out": str(args.out)}, "curves": {}}
    base_dice = test_dice(base, dataset_dir)
    for strategy in args.strategies:
        bundle = copy_bundle(args.bundle, args.out / strategy)
        shutil.copy(base / "models" / "model.pt", bundle / "models" / "model.pt")
        labelled = list(initial)
        curve = [{"labels": len(labelled), "test_dice": base_dice, "added": [Path(e["image"]).name for e in labelled]}]
        strategy_rng = random.Random(args.seed + 1)
        for _ in range(args.rounds):
            remaining = [e for e in pool if e not in labelled]
            added = pick(strategy, bundle, remaining, args.step, strategy_rng)
            labelled += added
            train(bundle, labelled, args.epochs, resume=True)
            dice = test_dice(bundle, dataset_dir)
            curve.append({"labels": len(labelled), "test_dice": dice, "added": [Path(e["image"]).name for e in added]})
            logger.info(f"{strategy}: {len(labelled)} labels -> test Dice {dice:.4f}")
        results["curves"][strategy] = curve
    results["seconds"] = round(time.time() - start, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| labels | " + " | ".join(args.strategies) + " |", "|---" * (len(args.strategies) + 1) + "|"]
    for i in range(args.rounds + 1):
        row = [str(results["curves"][args.strategies[0]][i]["labels"])]
        row += [f"{results['curves'][s][i]['test_dice']:.3f}" for s in args.strategies]
        lines.append("| " + " | ".join(row) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    for strategy, curve in results["curves"].items():
        plt.plot([c["labels"] for c in curve], [c["test_dice"] for c in curve], marker="o", label=strategy)
    plt.xlabel("labelled cases")
    plt.ylabel("test Dice")
    plt.title("TokenSeg active learning on the demo set")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.savefig(args.out / "dice_vs_labels.png", dpi=100, bbox_inches="tight")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
