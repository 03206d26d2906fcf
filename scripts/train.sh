#!/usr/bin/env bash
# The main job, in the project's virtual environment (created on first use):
# train the TokenSeg bundle with MONAI's bundle runner; without --dataset_dir,
# on the embedded demo dataset, which the bundle's demo_data step writes first
# (bundle/data/demo). The checkpoint lands in bundle/models/model.pt.
# Extra arguments are bundle overrides, e.g. `--epochs 5` or
# `--dataset_dir /data/Task02_Heart --in_channels 1`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root/bundle"
bundle=("$root/.venv/bin/python" -m monai.bundle run)
if [[ " $* " != *" --dataset_dir "* ]]; then
    "${bundle[@]}" demo_data --config_file configs/train.json
fi
exec "${bundle[@]}" training --meta_file configs/metadata.json --config_file configs/train.json \
    --logging_file configs/logging.conf "$@"
