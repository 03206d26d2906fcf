#!/usr/bin/env bash
# The whole benchmark, in the project's virtual environment (created on first use):
#   1. speed and memory of every model side by side (python -m benchmarks.cost),
#   2. accuracy at an equal training budget through the bundle (python -m benchmarks.accuracy),
#   3. the report again, with the Dice-memory plot.
# Figures, tables and plots land in runs/bench/ and runs/accuracy/ (see docs/benchmarks.md).
# Environment: BENCH_EPOCHS (accuracy budget, default 15 epochs = 120 optimisation steps),
# BENCH_ACCURACY_MODELS (default: tokenseg unet segresnet unetr).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
python="$root/.venv/bin/python"
"$python" -m benchmarks.cost --out runs/bench "$@"
# shellcheck disable=SC2086  # the model list is meant to split into words
"$python" -m benchmarks.accuracy --epochs "${BENCH_EPOCHS:-15}" --out runs/accuracy \
    --models ${BENCH_ACCURACY_MODELS:-tokenseg unet segresnet unetr}
"$python" -m benchmarks.cost --out runs/bench --report-only --accuracy runs/accuracy/accuracy.json
