#!/usr/bin/env bash
# The main job, in the project's virtual environment (created on first use):
# a TokenSeg forward/backward demo on a synthetic volume. Extra arguments go
# to `python -m tokenseg.demo` (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
exec "$root/.venv/bin/python" -m tokenseg.demo "$@"
