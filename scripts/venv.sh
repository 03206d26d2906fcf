#!/usr/bin/env bash
# Create or reuse the project's virtual environment at .venv/ and install the
# pinned stack into it. Re-installs only when pyproject.toml or constraints.txt
# changed since the last successful install (a stamp file records their hash).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python_bin="${TOKENSEG_PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null || python_bin=python3

want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.tokenseg-installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
    echo "[tokenseg] creating $venv" >&2
    "$python_bin" -m venv "$venv"
fi
echo "[tokenseg] installing the pinned stack into $venv (several minutes the first time)" >&2
"$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install --progress-bar off -c "$root/constraints.txt" -e "$root[app,bench,test]"
echo "$want" > "$stamp"
