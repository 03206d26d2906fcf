"""Markdown tables shared by the benchmark report and ``benchmarks/accuracy.py``."""

from __future__ import annotations

__all__ = ["accuracy_table"]


def _figure(result: dict, name: str, digits: int, unit: str = "") -> str:
    """``mean ± sd`` over seeds when there are several, else the one value."""
    value = f"{result[name]:.{digits}f}"
    if f"{name}_sd" in result:
        value += f" ± {result[f'{name}_sd']:.{digits}f}"
    return value + unit


def accuracy_table(accuracy: dict) -> list[str]:
    """The budget line and the per-model table of an accuracy report (the JSON of ``benchmarks/accuracy.py``)."""
    seeds = accuracy.get("seeds", [0])
    lines = [
        f"Accuracy at an equal budget: {accuracy['optimisation_steps']} optimisation steps ({accuracy['epochs']} epochs) "
        f"of {accuracy['patches_per_step']} patches of {accuracy['patch_size']}, same pipeline for every model "
        f"({accuracy['dataset']}); mean ± standard deviation over {len(seeds)} seed(s) {seeds}.",
        "",
        "| model | test Dice | test IoU | HD95 | train time (s) | s to reference val Dice | boundary hit rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, r in accuracy["models"].items():
        # bundle 0.2.1 on measures HD95 in mm on each image's own grid; earlier reports, in voxels of pixdim
        hd95 = _figure(r, "test_hd95_mm", 2, " mm") if "test_hd95_mm" in r else f"{r['test_hd95_voxels']:.2f} voxels"
        hit_rate = _figure(r, "boundary_hit_rate_last_epoch", 2) if "boundary_hit_rate_last_epoch" in r else ""
        to_reference = ", ".join("-" if s.get("seconds_to_reference") is None else f"{s['seconds_to_reference']:.0f}"
                                 for s in r["per_seed"].values()) if "per_seed" in r else ""
        lines.append(f"| {model} | {_figure(r, 'test_dice', 3)} | {_figure(r, 'test_iou', 3)} | {hd95} | "
                     f"{r['train_seconds']:.0f} | {to_reference} | {hit_rate} |")
    if "reference_val_dice" in accuracy:
        reference = accuracy["reference_val_dice"]
        lines += ["", f"s to reference val Dice: per seed, wall-clock seconds of bundle training (validations "
                  f"included) until the validation Dice first reaches {reference['model']}'s best, "
                  f"{reference['best_val_dice']:.3f} (mean over its seeds); - where it never does."]
    if len(seeds) > 1 and "unet" in accuracy["models"]:
        lines += ["", *paired_differences(accuracy, "unet")]
    return lines


def paired_differences(accuracy: dict, reference: str) -> list[str]:
    """Test Dice minus ``reference``'s, seed by seed (the same seed: same data order and initial draw)."""
    base = accuracy["models"][reference]["per_seed"]
    lines = [f"| model | test Dice minus {reference}'s, per seed | mean |", "|---|---|---|"]
    for model, r in accuracy["models"].items():
        seeds = [seed for seed in r.get("per_seed", {}) if seed in base and model != reference]
        if not seeds:
            continue
        differences = [r["per_seed"][seed]["test_dice"] - base[seed]["test_dice"] for seed in seeds]
        lines.append(f"| {model} | {', '.join(f'{d:+.3f}' for d in differences)} | "
                     f"{sum(differences) / len(differences):+.3f} |")
    return lines
