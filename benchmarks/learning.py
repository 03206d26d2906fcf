"""Learning speed on a small target: how many steps a network needs to fit one small-target case.

The failure this measures: on a single-channel MRI with a tumour of 0.25%
of the voxels TokenSeg 0.2 learned nothing in the steps in which MONAI's
UNet fitted the case. Here each model trains on one case of the generated
small-target set (``tokenseg.data.small_targets``: a lesion of 0.1-0.5% of
the voxels, contrast-to-noise near 2, 0.8 x 0.8 x 5 mm) with the bundle's
recipe (patches of 64 x 64 x 16 cropped two on the lesion to one off it,
4 per step, AdamW at 1e-3 with cosine decay, Dice + cross-entropy, and
TokenSeg's own loss for TokenSeg), and the Dice of its sliding-window
segmentation of the whole case is taken every ``eval_every`` steps::

    python -m benchmarks.learning --models unet tokenseg --steps 400 --seeds 0 1 2 --out runs/learning

It prints the curves, a table of Dice per step (mean and s.d. over the
seeds), the first step at which each seed passed 0.5 and 0.8, and writes
``learning.json`` and ``learning.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import NormalizeIntensity, RandCropByPosNegLabeld
from monai.utils import set_determinism

from benchmarks.models import MODELS, build_model
from tokenseg.data.small_targets import make_small_target_case
from tokenseg.losses import TokenSegLoss
from tokenseg.networks import TokenSeg

__all__ = ["small_target_case", "fit_small_target", "main"]

PATCH_SIZE = (64, 64, 16)
PATCHES_PER_STEP = 4


def small_target_case(case: int = 0) -> dict[str, torch.Tensor]:
    """Case ``case`` of the small-target set, normalised as the bundle does: image and label (1, X, Y, Z)."""
    image, label = make_small_target_case(case)
    image = NormalizeIntensity(nonzero=True)(torch.from_numpy(image)[None])
    return {"image": image.as_tensor(), "label": torch.from_numpy(label)[None].float()}


@torch.no_grad()
def _case_dice(network: torch.nn.Module, case: dict[str, torch.Tensor]) -> float:
    network.eval()
    logits = sliding_window_inference(case["image"][None], PATCH_SIZE, PATCHES_PER_STEP, network, overlap=0.25)
    network.train()
    prediction = one_hot(logits.argmax(1, keepdim=True), 2)
    return compute_dice(prediction, one_hot(case["label"][None], 2), include_background=False).item()


def fit_small_target(
    model: str | torch.nn.Module, steps: int, seed: int = 0, case: int = 0, eval_every: int = 50
) -> list[tuple[int, float]]:
    """Train ``model`` (a name of ``benchmarks.models.MODELS`` or a network) on one small-target case.

    Returns the curve [(step, Dice of the whole case)], one point every ``eval_every`` steps.
    """
    set_determinism(seed)
    data = small_target_case(case)
    network = build_model(model, 1, 2, PATCH_SIZE) if isinstance(model, str) else model
    loss_function = (
        TokenSegLoss(network.grids) if isinstance(network, TokenSeg) else DiceCELoss(to_onehot_y=True, softmax=True)
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    crop = RandCropByPosNegLabeld(
        ["image", "label"], "label", PATCH_SIZE, pos=2, neg=1, num_samples=PATCHES_PER_STEP, image_key="image",
        image_threshold=0,
    )
    crop.set_random_state(seed)
    network.train()
    curve = []
    for step in range(1, steps + 1):
        patches = crop(data)
        # plain tensors: a MetaTensor's bookkeeping on every operation triples the step time
        image = torch.stack([p["image"] for p in patches]).as_tensor()
        label = torch.stack([p["label"] for p in patches]).as_tensor()
        loss = loss_function(network(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, _case_dice(network, data)))
    set_determinism(None)
    return curve


def _first_step(curve: Sequence[Sequence[float]], threshold: float) -> int | None:
    return next((int(step) for step, dice in curve if dice >= threshold), None)


def summarise(results: dict[str, dict[str, list]]) -> str:
    """Markdown table: mean and sample s.d. of Dice at each evaluated step, and steps to 0.5 and 0.8 per seed."""
    steps = [step for step, _ in next(iter(next(iter(results.values())).values()))]  # of the first curve
    lines = ["| model | " + " | ".join(f"step {s}" for s in steps) + " | steps to 0.5 | steps to 0.8 |",
             "|---" * (len(steps) + 3) + "|"]
    for model, seeds in results.items():
        dice = np.array([[d for _, d in curve] for curve in seeds.values()])
        # the sample standard deviation, as every other benchmark reports it (0 for one seed)
        spread = dice.std(0, ddof=1) if len(dice) > 1 else np.zeros(dice.shape[1])
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(dice.mean(0), spread)]
        reach = [", ".join(str(_first_step(c, t) or "-") for c in seeds.values()) for t in (0.5, 0.8)]
        lines.append(f"| {model} | " + " | ".join(cells + reach) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, list]], path: Path, ylabel: str = "Dice of the whole case",
         title: str = "Fitting one small target (one line per seed)", xlabel: str = "optimisation step") -> None:
    """One line per model and seed of ``results`` {model: {seed: [[x, dice], ...]}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (model, seeds) in enumerate(results.items()):
        for number, curve in enumerate(seeds.values()):
            steps, dice = zip(*curve)
            axis.plot(steps, dice, color=f"C{index}", alpha=0.8, label=model if number == 0 else None)
    axis.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1), title=title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet", "tokenseg"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    parser.add_argument("--threads", type=int, help="torch threads (1 to run two of these side by side)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "learning.json"
    results: dict[str, dict[str, list]] = json.loads(saved.read_text())["curves"] if saved.exists() else {}
    for model in args.models:
        for seed in args.seeds:
            start = time.perf_counter()
            curve = fit_small_target(model, args.steps, seed, eval_every=args.eval_every)
            results.setdefault(model, {})[str(seed)] = curve
            print(f"{model} seed {seed} ({time.perf_counter() - start:.0f} s): "
                  + ", ".join(f"{s}: {d:.3f}" for s, d in curve), flush=True)
            saved.write_text(json.dumps({"steps": args.steps, "patch_size": PATCH_SIZE, "curves": results}, indent=1))
    ran = {model: results[model] for model in args.models}
    table = summarise(ran)
    print(table)
    (args.out / "learning.md").write_text(table + "\n")
    plot(ran, args.out / "learning.png")
    return ran


if __name__ == "__main__":
    main()
