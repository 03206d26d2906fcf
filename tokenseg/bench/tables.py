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
        "| model | test Dice | test IoU | HD95 | train time (s) | boundary hit rate |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in accuracy["models"].items():
        # bundle 0.2.1 on measures HD95 in mm on each image's own grid; earlier reports, in voxels of pixdim
        hd95 = f"{r['test_hd95_mm']:.2f} mm" if "test_hd95_mm" in r else f"{r['test_hd95_voxels']:.2f} voxels"
        lines.append(f"| {model} | {r['test_dice']:.3f} | {r['test_iou']:.3f} | {hd95} | "
                     f"{r['train_seconds']:.0f} | {r.get('boundary_hit_rate_last_epoch', '')} |")
    return lines
