#!/usr/bin/env bash
# The main job, in the project's virtual environment (created on first use):
# train the TokenSeg bundle on the embedded demo dataset (generated on first
# use) with MONAI's bundle runner. The checkpoint lands in bundle/models/model.pt.
# Extra arguments are bundle overrides, e.g. `--epochs 5` or
# `--dataset_dir /data/Task02_Heart --in_channels 1`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
exec "$root/.venv/bin/python" -m monai.bundle run training \
    --meta_file bundle/configs/metadata.json \
    --config_file bundle/configs/train.json \
    --logging_file bundle/configs/logging.conf "$@"
