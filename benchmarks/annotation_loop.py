"""Does the app's active learning save labels? The annotation loop, driven through the real server.

For each strategy and seed, a MONAI Label server with this app starts a task
from zero (``--conf labels``, ``--conf in_channels 1``) on the unlabelled pool
of the generated cohort (``tokenseg.data.cohort``: cases of varied difficulty).
Through MONAI Label's Python client, as an annotator would:

1. two pool images, drawn by the seed, get their reference labels (``PUT /datastore/label``);
2. the app retrains (``POST /train/tokenseg``: its own fine-tuning from the
   current weights, its stable validation split; ``--steps-per-round``
   optimisation steps, whatever the labelled count), and the held-out test images
   are segmented by uploading each to ``POST /infer/tokenseg``; Dice against
   their references;
3. the strategy's scoring runs (``POST /scoring/{method}``), then
   ``POST /activelearning/{strategy}`` names the next image, whose reference
   label is saved, ``--step`` times; back to 2, until ``--labels`` images are labelled.

A model trained on the whole pool (the same server, every label saved, all
the rounds' steps in one training) gives the Dice each curve is measured against. Every round is
written to ``<out>/rounds.jsonl`` as it ends; a finished (strategy, seed) run
is not repeated when the command runs again. The report (``report.md``,
``report.json``, ``dice_vs_labels.png``): Dice against labels (mean and 95%
interval over seeds), labels to reach 95% of the full-pool Dice and to reach
the Dice random order ends with, area under each curve with paired
differences against random, and the seconds of a round (scoring, retraining).

    python -m benchmarks.annotation_loop --seeds 0 1 2 3 4 --out runs/annotation_loop
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

from tokenseg.data.cohort import COHORT_SHAPE, COHORT_SPACING, ensure_cohort_dataset
from tools.monailabel_server import MonaiLabelServer, client_for, wait_for_training

REPO = Path(__file__).resolve().parents[1]
MODEL = "tokenseg"
# each strategy and the scoring methods that feed it (random needs none), each with the image info key where it
# records which checkpoint (its modification time) made the score
STRATEGIES = {
    "random": [],
    "tokenseg_uncertainty": [("tokenseg_uncertainty", "tokenseg_uncertainty_ts")],
    "tokenseg_uncertain_volume": [("tokenseg_uncertain_volume", "tokenseg_uncertain_volume_ts")],
    "tokenseg_uncertain_diverse": [("tokenseg_uncertain_volume", "tokenseg_uncertain_volume_ts"),
                                   ("tokenseg_embedding", "tokenseg_embedding_ts")],
    "tokenseg_epistemic": [("tokenseg_epistemic", "epistemic_ts")],
}
FULL_POOL = "full_pool"


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks; 1 when both are empty (a case with no lesion, correctly left empty)."""
    prediction, reference = prediction > 0, reference > 0
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


def test_dice(client, test_cases: list[tuple[Path, Path]]) -> list[float]:
    """Each held-out image uploaded to the app and segmented; its Dice against the reference."""
    scores = []
    for image, label in test_cases:
        mask, _ = client.infer(MODEL, "test_image", {}, file=str(image))
        scores.append(dice(np.asarray(nib.load(mask).dataobj), np.asarray(nib.load(label).dataobj)))
        Path(mask).unlink(missing_ok=True)
    return scores


def train(client, params: dict) -> tuple[float, dict]:
    start = time.time()
    client.train_start(MODEL, params)
    status = wait_for_training(client, timeout=params.get("timeout", 7200))
    if status.get("status") != "DONE":
        raise RuntimeError(f"training failed: {status}")
    return time.time() - start, status


def score(server: MonaiLabelServer, methods: list[str]) -> float:
    """Run the strategy's scoring methods now, to the end; their seconds."""
    start = time.time()
    for method in methods:
        response = requests.post(f"{server.url}/scoring/{method}", params={"run_sync": True}, timeout=7200)
        response.raise_for_status()
    return time.time() - start


def server_for(run_dir: Path, pool: list[tuple[Path, Path]], args) -> MonaiLabelServer:
    studies = run_dir / "studies"
    if studies.exists():
        shutil.rmtree(studies)
    studies.mkdir(parents=True)
    for image, _ in pool:
        shutil.copy(image, studies)
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    conf = {"labels": json.dumps({"lesion": 1}), "in_channels": "1", "spacing": ",".join(map(str, COHORT_SPACING)),
            "patch_size": ",".join(map(str, args.patch)), "val_interval": "1"}
    if "tokenseg_epistemic" in args.strategies:
        conf.update({"epistemic_enabled": "true", "epistemic_samples": str(args.epistemic_samples)})
    env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # scoring runs when this loop asks, for its strategy only
    return MonaiLabelServer(studies, run_dir / "model", run_dir / "server.log",
                            val_split=args.val_split, env=env, conf=conf, models=MODEL)


def image_id(path: Path) -> str:
    return path.name.removesuffix(".nii.gz")


def epochs_for(labelled: int, steps: int, val_split: float, batch_size: int = 2) -> int:
    """Epochs of a retraining on ``labelled`` images that make about ``steps`` optimisation steps (the app keeps
    ``round(val_split * labelled)`` of them for validation, and the bundle trains at ``batch_size``)."""
    training = max(1, labelled - round(val_split * labelled))
    return max(1, math.ceil(steps / math.ceil(training / batch_size)))


def curve_name(strategy: str, early_stop: int) -> str:
    """A loop's name in the report: its strategy, and its retraining's early stopping when it has one."""
    return f"{strategy}, early stop {early_stop}" if early_stop else strategy


def run_loop(strategy: str, seed: int, pool, test_cases, args, record) -> None:
    """One annotation loop (``strategy``, ``seed``); ``record(round)`` gets every round as it ends."""
    early_stop = 0 if strategy == FULL_POOL else args.early_stop  # the full-pool model: always its whole budget
    run_dir = args.out / curve_name(strategy, early_stop).replace(", ", "_").replace(" ", "_") / f"seed_{seed}"
    labels = {image_id(image): label for image, label in pool}
    rounds = (args.labels - args.initial) // args.step + 1
    # every round fine-tunes for the same number of steps; the full-pool model gets all the rounds' steps at once
    steps = args.steps_per_round * (rounds if strategy == FULL_POOL else 1)
    with server_for(run_dir, pool, args) as server:
        client = client_for(server, run_dir)
        chosen = random.Random(seed).sample(sorted(labels), args.initial)
        if strategy == FULL_POOL:
            chosen = sorted(labels)
        score_seconds, scored_with, checkpoint = 0.0, [], Path(server.model_dir) / MODEL / "models" / "model.pt"
        while True:
            for image in chosen:
                client.save_label(image, str(labels[image]), tag="final")
            labelled = client.datastore()["objects"]
            labelled = sorted(i for i, o in labelled.items() if o.get("labels", {}).get("final"))
            epochs = epochs_for(len(labelled), steps, args.val_split)
            seconds, _ = train(client, {"max_epochs": epochs, "seed": seed, "early_stop_patience": early_stop})
            scores = test_dice(client, test_cases)
            round_ = {
                "strategy": strategy, "early_stop": early_stop, "seed": seed, "labels": len(labelled),
                "labelled": labelled, "chosen": chosen,
                "test_dice": statistics.fmean(scores), "test_dice_per_case": scores,
                "train_seconds": round(seconds, 1), "score_seconds": round(score_seconds, 1), "scored_with": scored_with,
                "checkpoint_mtime": checkpoint.stat().st_mtime, "epochs": epochs,
                "epochs_run": client.info()["train_stats"][MODEL].get("epoch"),
            }
            record(round_)
            print(f"{curve_name(strategy, early_stop)} seed {seed}: {len(labelled)} labels, "
                  f"test Dice {round_['test_dice']:.3f} "
                  f"(train {seconds:.0f} s, scoring {score_seconds:.0f} s)", flush=True)
            if strategy == FULL_POOL or len(labelled) >= args.labels:
                return
            score_seconds = score(server, [method for method, _ in STRATEGIES[strategy]])
            objects = client.datastore()["objects"]  # which checkpoint scored the unlabelled images
            scored_with = sorted({o["image"]["info"].get(stamp) for _, stamp in STRATEGIES[strategy]
                                  for i, o in objects.items() if i not in labelled} - {None})
            chosen = []
            for _ in range(min(args.step, args.labels - len(labelled))):
                answer = client.next_sample(strategy, {})
                if not answer.get("id") or answer["id"] in labelled or answer["id"] in chosen:
                    raise RuntimeError(f"{strategy} answered {answer}: not an unlabelled image")
                chosen.append(answer["id"])
                client.save_label(answer["id"], str(labels[answer["id"]]), tag="final")


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(values), 2.0)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def labels_to_reach(curve: dict[int, float], target: float) -> int | None:
    return next((n for n in sorted(curve) if curve[n] >= target), None)


def area(curve: dict[int, float]) -> float:
    """Mean Dice over the label range (trapezoids, normalised by the range)."""
    xs = sorted(curve)
    if len(xs) < 2:
        return curve[xs[0]]
    return sum((curve[a] + curve[b]) / 2 * (b - a) for a, b in zip(xs, xs[1:])) / (xs[-1] - xs[0])


def chosen_profile(images: list[str], difficulty: dict[str, dict]) -> dict:
    """What ``images`` are like: the share of empty images, the mean lesion share of the voxels and contrast to
    noise (of images with lesions), and the shares with a strong bias field or noise bursts."""
    chosen = [difficulty[image] for image in images]
    lesioned = [d for d in chosen if d["lesions"]] or [{"lesion_share": 0.0, "cnr": 0.0}]
    return {
        "images": len(chosen),
        "empty": statistics.fmean(d["lesions"] == 0 for d in chosen),
        "lesion_share": statistics.fmean(d["lesion_share"] for d in chosen),
        "cnr": statistics.fmean(d["cnr"] for d in lesioned),
        "strong_bias": statistics.fmean(d["strong_bias"] for d in chosen),
        "noise_burst": statistics.fmean(d["noise_burst"] for d in chosen),
    }


def report(rounds: list[dict], out: Path, difficulty: dict[str, dict] | None = None) -> dict:
    """Summary of the rounds, written to ``out``; ``difficulty``: each pool image's draw (``cohort_difficulty``),
    to profile what each order chose."""
    curves: dict[str, dict[int, dict[int, float]]] = {}
    # the rounds after a loop's first: those that scored and chose (and so can be timed and profiled)
    initial = {}
    for r in rounds:
        name = curve_name(r["strategy"], r.get("early_stop", 0))
        initial[name] = min(initial.get(name, r["labels"]), r["labels"])
    later: dict[str, list[dict]] = {}
    for r in rounds:
        name = curve_name(r["strategy"], r.get("early_stop", 0))
        curves.setdefault(name, {}).setdefault(r["seed"], {})[r["labels"]] = r["test_dice"]
        if name != FULL_POOL and r["labels"] > initial[name]:
            later.setdefault(name, []).append(r)
    seconds = {strategy: [(r["score_seconds"], r["train_seconds"]) for r in rs] for strategy, rs in later.items()}
    full = {seed: max(curve.values()) for seed, curve in curves.pop(FULL_POOL, {}).items()}
    # what random order reaches with every label of the loop: the labels another order needs for it are its saving
    random_end = {seed: curve[max(curve)] for seed, curve in curves.get("random", {}).items()}
    summary: dict = {"full_pool_dice": full, "random_final_dice": random_end, "strategies": {}}
    for strategy, by_seed in curves.items():
        counts = sorted({n for curve in by_seed.values() for n in curve})
        entry = {
            "dice": {n: interval([c[n] for c in by_seed.values() if n in c]) for n in counts},
            "labels_to_95": {seed: labels_to_reach(c, 0.95 * full[seed]) if seed in full else None
                             for seed, c in by_seed.items()},
            "labels_to_random_final": {seed: labels_to_reach(c, random_end[seed]) if seed in random_end else None
                                       for seed, c in by_seed.items()},
            "area": {seed: area(c) for seed, c in by_seed.items()},
            "round_seconds": {"scoring": statistics.fmean(s for s, _ in seconds.get(strategy, [(0, 0)])),
                              "training": statistics.fmean(t for _, t in seconds.get(strategy, [(0, 0)]))},
        }
        summary["strategies"][strategy] = entry
    random_runs = summary["strategies"].get("random")
    for strategy, entry in summary["strategies"].items():
        if random_runs is None or strategy == "random":
            continue
        seeds = sorted(set(entry["area"]) & set(random_runs["area"]))
        if seeds:
            entry["area_minus_random_by_seed"] = {s: entry["area"][s] - random_runs["area"][s] for s in seeds}
            entry["area_minus_random"] = interval(list(entry["area_minus_random_by_seed"].values()))
        both = [s for s in seeds if entry["labels_to_95"].get(s) and random_runs["labels_to_95"].get(s)]
        if both:
            entry["labels_saved_vs_random"] = interval(
                [1 - entry["labels_to_95"][s] / random_runs["labels_to_95"][s] for s in both]
            )
    if difficulty:
        summary["pool_profile"] = chosen_profile(list(difficulty), difficulty)
        for strategy, entry in summary["strategies"].items():
            if strategy in later:  # a loop of one round chose nothing
                entry["chosen_profile"] = chosen_profile([i for r in later[strategy] for i in r["chosen"]], difficulty)
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(markdown(summary))
    plot(summary, out / "dice_vs_labels.png")
    return summary


def markdown(summary: dict) -> str:
    full, strategies = summary["full_pool_dice"], summary["strategies"]
    seeds_text = lambda by_seed: ", ".join(f"{s}: {v}" for s, v in sorted(by_seed.items()))  # noqa: E731
    lines = [f"Full-pool Dice by seed: {', '.join(f'{s}: {d:.3f}' for s, d in sorted(full.items()))}", "",
             "Test Dice (mean ± 95% half-width over seeds)", "",
             f"| labelled images | {' | '.join(strategies)} |", f"|---|{'---|' * len(strategies)}"]
    for n in sorted({n for e in strategies.values() for n in e["dice"]}):
        cells = [f"{e['dice'][n][0]:.3f} ± {e['dice'][n][1]:.3f}" if n in e["dice"] else "-" for e in strategies.values()]
        lines.append(f"| {n} | {' | '.join(cells)} |")
    lines += ["", "| strategy | area (mean Dice over the labels) | area - random: mean ± 95% (by seed) | "
              "labels to 95% of full pool (by seed) | labels to random's final Dice (by seed) | "
              "labels saved vs random | s/round scoring / training |", "|---|---|---|---|---|---|---|"]
    for strategy, e in strategies.items():
        area_mean, area_half = interval(list(e["area"].values()))
        delta = e.get("area_minus_random")
        delta_text = (f"{delta[0]:+.3f} ± {delta[1]:.3f} "
                      f"({seeds_text({s: f'{d:+.3f}' for s, d in e['area_minus_random_by_seed'].items()})})"
                      if delta else "-")
        saved = e.get("labels_saved_vs_random")
        lines.append(
            f"| {strategy} | {area_mean:.3f} ± {area_half:.3f} | {delta_text} | {seeds_text(e['labels_to_95'])} | "
            f"{seeds_text(e['labels_to_random_final'])} | {f'{saved[0]:+.0%} ± {saved[1]:.0%}' if saved else '-'} | "
            f"{e['round_seconds']['scoring']:.0f} / {e['round_seconds']['training']:.0f} |"
        )
    if "pool_profile" in summary:
        lines += ["", "What each order chose after the initial images (the pool: all its images)", "",
                  "| | images | empty | mean lesion share | mean contrast to noise | strong bias | noise bursts |",
                  "|---|---|---|---|---|---|---|"]
        for name, c in [("pool", summary["pool_profile"])] + [(s, e["chosen_profile"]) for s, e in strategies.items()
                                                                if "chosen_profile" in e]:
            lines.append(f"| {name} | {c['images']} | {c['empty']:.0%} | {c['lesion_share']:.3%} | {c['cnr']:.2f} | "
                         f"{c['strong_bias']:.0%} | {c['noise_burst']:.0%} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for strategy, e in summary["strategies"].items():
        counts = sorted(e["dice"])
        means = np.array([e["dice"][n][0] for n in counts])
        half = np.array([e["dice"][n][1] for n in counts])
        axis.plot(counts, means, marker="o", label=strategy)
        axis.fill_between(counts, means - half, means + half, alpha=0.2)
    if summary["full_pool_dice"]:
        axis.axhline(0.95 * statistics.fmean(summary["full_pool_dice"].values()), color="grey", linestyle="--",
                     label="95% of full pool")
    axis.set_xlabel("labelled images")
    axis.set_ylabel("test Dice")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.annotation_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--initial", type=int, default=2, help="labelled images before the first round")
    parser.add_argument("--step", type=int, default=2, help="images labelled per round")
    parser.add_argument("--labels", type=int, default=20, help="labelled images at the end")
    parser.add_argument("--steps-per-round", type=int, default=50,
                        help="optimisation steps of each retraining (its epochs follow from the labelled count)")
    parser.add_argument("--early-stop", type=int, default=0,
                        help="stop a retraining once validation Dice has not improved for this many epochs (0: never); "
                             "its loops are reported apart from those without")
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--epistemic-samples", type=int, default=5)
    parser.add_argument("--pool", type=int, default=40, help="unlabelled images")
    parser.add_argument("--test", type=int, default=10, help="held-out test images")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 16],
                        help=f"voxels of a case (the cohort's own size: {' '.join(map(str, COHORT_SHAPE))})")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 16], help="training patch (multiples of 16)")
    parser.add_argument("--no-full-pool", action="store_true", help="skip the model trained on the whole pool")
    parser.add_argument("--data", type=Path, default=None, help="where the cohort is generated (default: under --out)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "annotation_loop")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shape = tuple(args.shape)
    data = Path(ensure_cohort_dataset(args.data or args.out / f"cohort_{'x'.join(map(str, shape))}_{args.pool}_{args.test}",
                                      {"training": args.pool, "test": args.test}, shape))
    datalist = json.loads((data / "dataset.json").read_text())
    pool = [(data / e["image"], data / e["label"]) for e in datalist["training"]]
    test_cases = [(data / e["image"], data / e["label"]) for e in datalist["test"]]

    log = args.out / "rounds.jsonl"
    rounds = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    run_key = lambda r: (r["strategy"], r.get("early_stop", 0), r["seed"])  # noqa: E731
    done = {run_key(r) for r in rounds if r["labels"] >= (len(pool) if r["strategy"] == FULL_POOL else args.labels)}

    def record(round_: dict) -> None:
        rounds.append(round_)
        with open(log, "a") as f:
            f.write(json.dumps(round_) + "\n")

    runs = [(s, seed) for seed in args.seeds for s in ([] if args.no_full_pool else [FULL_POOL]) + args.strategies]
    for strategy, seed in runs:
        key = (strategy, 0 if strategy == FULL_POOL else args.early_stop, seed)
        if key in done:
            print(f"{curve_name(*key[:2])} seed {seed}: done already", flush=True)
            continue
        rounds[:] = [r for r in rounds if run_key(r) != key]  # an unfinished run: again
        run_loop(strategy, seed, pool, test_cases, args, record)
    log.write_text("".join(json.dumps(r) + "\n" for r in rounds))
    difficulty = {image_id(image): draw for (image, _), draw in zip(pool, datalist.get("difficulty", []))}
    summary = report(rounds, args.out, difficulty)
    print((args.out / "report.md").read_text())
    return summary


if __name__ == "__main__":
    # stopped with SIGTERM, unwind as on Ctrl-C, so that the running loop's server (its own process group) stops
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sys.exit(main() and 0)
