"""Where a trained run's test errors are: connected components of its predictions against the lesion.

    python -m benchmarks.components runs/accuracy_small/tokenseg/seed_0 runs/accuracy_small/unet/seed_0

Each argument is a run folder of ``benchmarks/accuracy.py`` (its bundle copy,
trained, and its ``overrides.json``). The run's network segments every test
case with the run's own preprocessing and sliding-window inferer; per case it
prints the lesion's and the prediction's voxels, the true positives, the
number of predicted components, how many touch the lesion, and how many
voxels lie in components that do not (false positives away from the lesion,
what a large HD95 with a fair Dice points to).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from benchmarks.trained_bundle import load_trained_bundle
from tokenseg.data.datalist import load_datalist


def case_components(prediction: np.ndarray, lesion: np.ndarray) -> dict:
    """Component counts of a binary ``prediction`` against a binary ``lesion`` (same shape)."""
    components, count = ndimage.label(prediction)
    touching = set(np.unique(components[lesion & prediction]).tolist()) - {0}
    return {
        "lesion_voxels": int(lesion.sum()),
        "predicted_voxels": int(prediction.sum()),
        "true_positives": int((prediction & lesion).sum()),
        "components": int(count),
        "touching_lesion": len(touching),
        "voxels_away_from_lesion": int((prediction & ~np.isin(components, list(touching))).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for run in args.runs:
        config, network = load_trained_bundle(run / "bundle", run / "overrides.json")
        preprocessing = config.get_parsed_content("validate#preprocessing")
        inferer = config.get_parsed_content("validate#inferer")
        for entry in load_datalist(config.get_parsed_content("dataset_dir"), "test"):
            case = preprocessing(entry)
            logits = inferer(case["image"][None].as_tensor(), network)
            prediction = logits.argmax(1)[0].numpy() > 0
            figures = case_components(prediction, case["label"][0].numpy() > 0)
            print(run, Path(entry["image"]).name, ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
