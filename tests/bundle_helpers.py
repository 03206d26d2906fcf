"""Helpers for the bundle tests: run the real `python -m monai.bundle` commands on a copy of bundle/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"


def copy_bundle(dest: Path, with_models: bool = False) -> Path:
    """A copy of bundle/ to work in, so that tests never touch the shipped checkpoint."""
    ignore = None if with_models else shutil.ignore_patterns("*.pt", "*.ts")
    shutil.copytree(BUNDLE, dest, ignore=ignore)
    (dest / "models").mkdir(exist_ok=True)
    return dest


def bundle_args(bundle: Path, *configs: str) -> list[str]:
    files = [str(bundle / "configs" / c) for c in configs]
    config_file = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [
        "--bundle_root", str(bundle),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", config_file,
        "--logging_file", str(bundle / "configs" / "logging.conf"),
    ]


def run(
    cmd: list[str], timeout: int = 900, check: bool = True, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command (in ``env``, default this one's, and ``cwd``); its output is returned (and shown when it fails)."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    # utf-8 whatever the locale: ignite's progress bar draws with block characters
    proc = subprocess.run(
        cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def monai_bundle(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "monai.bundle", *args], **kwargs)


def write_datalist(path: Path, dataset_dir: Path, n_train: int, n_val: int, n_test: int) -> Path:
    """A small datalist drawn from the demo dataset's splits."""
    full = json.loads((dataset_dir / "dataset.json").read_text())
    small = {
        "training": full["training"][:n_train],
        "validation": full["validation"][:n_val],
        "test": full["test"][:n_test],
    }
    path.write_text(json.dumps(small))
    return path
