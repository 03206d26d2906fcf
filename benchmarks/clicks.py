"""Clicks against Dice: the interactive TokenSeg against MONAI's DeepEdit network, trained at the same budget.

Both are trained by the bundle's own interactive training (``train.json`` with
``train_deepedit.json`` over it: DeepEdit's click simulation from the model's
errors), from scratch, on the same data with the same seed and epochs;
DeepEdit differs only in its network (the model zoo's DynUNet,
``benchmarks.models`` ``"deepedit"``) and loss (``DiceCELoss``). Then an
annotator is simulated on every test case: after each answer, one click on
the voxel deepest inside the largest error (on the lesion where the model
missed some, on the background where it added some), up to ``--max-clicks``.

Reported per model: Dice after 0 .. max clicks (mean over the test cases), the
clicks each case needs to reach 0.85 and 0.90 Dice, and the seconds a click
costs on this machine: DeepEdit runs a full sliding-window pass per click (as
it does in MONAI Label); TokenSeg runs its ``ClickRefinementInferer`` (the
first click a full pass, every later one the region around it), with its
full pass timed and scored beside it.

    python -m benchmarks.clicks --dataset demo --epochs 30 --out runs/clicks_demo

Writes ``clicks.json``, ``clicks.md`` and ``clicks.png`` (Dice against clicks) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, LoadImaged, Orientationd, Spacingd
from scipy import ndimage

from benchmarks.accuracy import DATASETS, REPO, bundle_run, fresh_bundle, overrides
from benchmarks.learning import plot
from tokenseg.bundle_task import BUNDLE_MODELS, INTERACTIVE_WEIGHTS, load_bundle
from tokenseg.clicks import map_voxels
from tokenseg.data.datalist import load_datalist
from tokenseg.inferers import ClickRefinementInferer

# the interactive TokenSeg; the same without keeping the clicked cells (does that pay?); MONAI's DeepEdit network
MODELS = ("tokenseg_deepedit", "tokenseg_deepedit_unforced", "deepedit")
INTERACTIVE_TRAIN = ["train.json", "train_deepedit.json"]
INTERACTIVE_INFERENCE = BUNDLE_MODELS[INTERACTIVE_WEIGHTS]
THRESHOLDS = (0.85, 0.90)
CLICK_RADIUS = 2  # voxels around a click where the simulated annotator does not click again


def train(model: str, run_dir: Path, dataset: str, dataset_dir: str, epochs: int, seed: int,
          reuse: bool = False) -> tuple[Path, dict]:
    """Train ``model`` interactively in ``run_dir/bundle``; the bundle and its overrides. With ``reuse``, a run of
    the same settings already there is kept (to simulate clicks again without training again)."""
    args_file = run_dir / "overrides.json"
    bundle = run_dir / "bundle"
    name = "tokenseg" if model.startswith("tokenseg") else model
    args = overrides(name, bundle, dataset, dataset_dir, epochs, epochs, seed, "@in_channels + len(@class_names)")
    args["init_from_automatic"] = False  # all from scratch
    if model == "tokenseg_deepedit_unforced":
        args["network_def#keep_clicked_cells"] = False
    if reuse and args_file.is_file() and (bundle / "models" / "model_deepedit.pt").is_file():
        previous = json.loads(args_file.read_text())
        if {k: v for k, v in previous.items() if k != "train_seconds"} == args:
            print(f"{model}: reusing the trained {bundle}", flush=True)
            return bundle, previous
    bundle = fresh_bundle(run_dir)
    args_file.write_text(json.dumps(args, indent=2))
    print(f"{model}: training {epochs} epochs (progress in {run_dir / 'train.log'})", flush=True)
    start = time.time()
    bundle_run(bundle, "training", INTERACTIVE_TRAIN, args_file, run_dir / "train.log")
    args["train_seconds"] = round(time.time() - start, 1)
    args_file.write_text(json.dumps(args, indent=2))
    return bundle, args


def load_interactive(bundle: Path, args: dict) -> tuple[torch.nn.Module, Compose, ConfigParser]:
    """The trained network (eval mode, CPU), the bundle's interactive preprocessing, and its parsed config."""
    settings = {k: v for k, v in args.items() if k not in ("loss", "train#handlers", "epochs", "val_interval", "seed",
                                                           "train_seconds", "init_from_automatic")}
    parser, network = load_bundle(bundle, INTERACTIVE_INFERENCE, INTERACTIVE_WEIGHTS, settings)
    return network, parser.get_parsed_content("preprocessing"), parser


def next_click(pred: np.ndarray, label: np.ndarray, foreground: str, clicked: np.ndarray) -> tuple[str, list[int]] | None:
    """The simulated annotator's click: the voxel deepest inside the largest error, on ``foreground`` where the
    model missed lesion, on ``background`` where it added some, away from where it has clicked already
    (``clicked``: within ``CLICK_RADIUS`` of an earlier click; an annotator does not click the same voxel twice);
    None when no error is left to click."""
    best = None
    for name, error in ((foreground, label & ~pred), ("background", pred & ~label)):
        components, count = ndimage.label(error & ~clicked)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = int(sizes.argmax())
        if best is None or sizes[largest] > best[0]:
            best = (sizes[largest], name, components == largest + 1)
    if best is None:
        return None
    depth = ndimage.distance_transform_edt(best[2])
    return best[1], [int(i) for i in np.unravel_index(int(depth.argmax()), depth.shape)]


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    total = pred.sum() + label.sum()
    return 1.0 if total == 0 else float(2 * (pred & label).sum() / total)


def simulate(network, preprocess, inferers: dict, case: dict, label_transform, class_names: list[str],
             max_clicks: int) -> dict:
    """One test case: Dice and seconds of each inferer after 0 .. ``max_clicks`` clicks chosen from the errors of
    the first inferer's answers."""
    label = label_transform({"label": case["label"]})["label"][0].numpy() > 0
    foreground = class_names[1]
    clicks: dict[str, list[list[int]]] = {name: [] for name in class_names}
    results = {name: {"dice": [], "seconds": []} for name in inferers}
    lead = next(iter(inferers))
    clicked = np.zeros(label.shape, bool)
    for _ in range(max_clicks + 1):
        data = preprocess({"image": case["image"], **clicks})
        image = data["image"]
        for name, inferer in inferers.items():
            start = time.perf_counter()
            with torch.no_grad():
                logits = inferer(image[None], network)
            results[name]["seconds"].append(time.perf_counter() - start)
            pred = logits[0].argmax(0).numpy() > 0
            results[name]["dice"].append(dice(pred, label))
            if name == lead:
                lead_pred = pred
        click = next_click(lead_pred, label, foreground, clicked)
        if click is None:
            break
        kind, voxel = click
        clicked[tuple(slice(max(v - CLICK_RADIUS, 0), v + CLICK_RADIUS + 1) for v in voxel)] = True
        stored_shape = [int(s) for s in np.asarray(image.meta["spatial_shape"]).ravel()[:3]]
        clicks[kind] += map_voxels([voxel], image.affine, image.meta["original_affine"], stored_shape)
    for r in results.values():  # an exact answer stays exact: the curve continues flat
        r["dice"] += [r["dice"][-1]] * (max_clicks + 1 - len(r["dice"]))
    return results


def clicks_to(curve: list[float], threshold: float) -> int | None:
    return next((n for n, d in enumerate(curve) if d >= threshold), None)


def summarise(cases: list[dict], max_clicks: int) -> dict:
    curves = [c["dice"] for c in cases]
    click_seconds = [s for c in cases for s in c["seconds"][1:]]  # empty when no case got a click
    summary = {
        "dice_by_clicks": [round(statistics.fmean(c[n] for c in curves), 4) for n in range(max_clicks + 1)],
        "seconds_first_answer": round(statistics.fmean(c["seconds"][0] for c in cases), 3),
        "seconds_per_click": round(statistics.fmean(click_seconds), 3) if click_seconds else None,
    }
    for t in THRESHOLDS:
        needed = [clicks_to(c, t) for c in curves]
        reached = [n for n in needed if n is not None]
        summary[f"clicks_to_{t:.2f}"] = round(statistics.fmean(reached), 2) if reached else None
        summary[f"cases_not_reaching_{t:.2f}"] = len(needed) - len(reached)
    return summary


def table(report: dict) -> list[str]:
    lines = [
        f"Clicks against Dice: {report['dataset']}, {report['epochs']} epochs, seed {report['seed']}, "
        f"{report['test_cases']} test cases",
        "",
        "| model | Dice at 0 / 1 / 3 / 5 / 10 clicks | clicks to 0.85 | clicks to 0.90 | s first answer | s per click |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["results"].items():
        curve = m["dice_by_clicks"]
        at = " / ".join(f"{curve[min(n, len(curve) - 1)]:.3f}" for n in (0, 1, 3, 5, 10))
        reach = [f"{m[f'clicks_to_{t:.2f}']}" + (f" ({m[f'cases_not_reaching_{t:.2f}']} never)"
                                                  if m[f"cases_not_reaching_{t:.2f}"] else "") for t in THRESHOLDS]
        lines.append(f"| {name} | {at} | {reach[0]} | {reach[1]} | {m['seconds_first_answer']} | "
                     f"{m['seconds_per_click']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(DATASETS), default="demo")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-clicks", type=int, default=10)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["tokenseg_deepedit", "deepedit"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "clicks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep models already trained in --out with these settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generate, _, description = DATASETS[args.dataset]
    dataset_dir = generate()
    args.out.mkdir(parents=True, exist_ok=True)
    test_cases = load_datalist(dataset_dir, "test", require_labels=True)
    report = {"dataset": description, "epochs": args.epochs, "seed": args.seed, "test_cases": len(test_cases),
              "max_clicks": args.max_clicks, "results": {}, "training": {}}
    for model in args.models:
        run_dir = args.out / model
        run_dir.mkdir(parents=True, exist_ok=True)
        bundle, run_args = train(model, run_dir, args.dataset, dataset_dir, args.epochs, args.seed, args.reuse)
        report["training"][model] = {"train_seconds": run_args.get("train_seconds")}
        network, preprocess, config = load_interactive(bundle, run_args)
        patch, guidance = config["patch_size"], len(config["class_names"])
        full = SlidingWindowInferer(patch, sw_batch_size=4, overlap=0.5)
        inferers = {model: full} if model == "deepedit" else {
            f"{model} (refined around each click)": ClickRefinementInferer(patch, guidance, 4, 0.5),
            f"{model} (full pass each click)": full,
        }
        labels = Compose([LoadImaged("label", ensure_channel_first=True), Orientationd("label", "RAS"),
                          Spacingd("label", config["pixdim"], mode="nearest")])
        cases = [simulate(network, preprocess, inferers, case, labels, config["class_names"], args.max_clicks)
                 for case in test_cases]
        for name in inferers:
            report["results"][name] = summarise([c[name] for c in cases], args.max_clicks)
            report["results"][name]["per_case_dice"] = [[round(d, 4) for d in c[name]["dice"]] for c in cases]
        (args.out / "clicks.json").write_text(json.dumps(report, indent=2))
    lines = table(report)
    (args.out / "clicks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    plot({name: {"mean": [[n, d] for n, d in enumerate(m["dice_by_clicks"])]} for name, m in report["results"].items()},
         args.out / "clicks.png", ylabel="Dice", xlabel="clicks",
         title=f"Dice against simulated clicks\n{report['dataset'].split(':')[0]}, {args.epochs} epochs")


if __name__ == "__main__":
    sys.exit(main())
