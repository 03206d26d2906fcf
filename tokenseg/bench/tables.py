"""Markdown tables shared by the benchmark report and ``benchmarks/accuracy.py``."""

from __future__ import annotations

__all__ = ["accuracy_table"]


def accuracy_table(accuracy: dict) -> list[str]:
    """The budget line and the per-model table of an accuracy report (the JSON of ``benchmarks/accuracy.py``)."""
    lines = [
        f"Accuracy at an equal budget: {accuracy['optimisation_steps']} optimisation steps ({accuracy['epochs']} epochs) "
        f"of {accuracy['patches_per_step']} patches of {accuracy['patch_size']}, same pipeline for every model "
        f"({accuracy['dataset']}).",
        "",
        "| model | test Dice | test IoU | HD95 (voxels) | train time (s) | boundary hit rate |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in accuracy["models"].items():
        lines.append(f"| {model} | {r['test_dice']:.3f} | {r['test_iou']:.3f} | {r['test_hd95_voxels']:.2f} | "
                     f"{r['train_seconds']:.0f} | {r.get('boundary_hit_rate_last_epoch', '')} |")
    return lines
