"""The model-zoo export: a bundle that runs without tokenseg, with only MONAI and the packages its metadata lists.

The exported bundle is exercised as the zoo's CI and a zoo user would: from
its own folder, with ``python -m monai.bundle``, in a fresh virtual
environment holding MONAI, torch, numpy and ``required_packages_version``
(pip's cache and the machine's wheel folder keep the install local).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle_helpers import REPO, run, write_datalist

NAME = "tokenseg_breast_dce_mri_segmentation"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    run([sys.executable, str(REPO / "tools" / "export_bundle.py"), "--out", str(out), "--name", NAME])
    return out / NAME


def test_export_is_generated_from_tokenseg(exported):
    configs = exported / "configs"
    for name in ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"):
        assert "tokenseg" not in (configs / name).read_text(), name
    assert '"scripts.networks.TokenSeg"' in (configs / "inference.json").read_text()
    assert (configs / "meta_schema.json").read_bytes() == (REPO / "bundle" / "configs" / "meta_schema.json").read_bytes()
    for module in (exported / "scripts").rglob("*.py"):
        source = REPO / "tokenseg" / module.relative_to(exported / "scripts")
        if module == exported / "scripts" / "__init__.py":
            continue
        generated = module.read_text().splitlines()[1:]  # after the "generated, do not edit" line
        original = source.read_text().splitlines()
        assert len(generated) == len(original)
        differ = [(g, o) for g, o in zip(generated, original) if g != o]
        assert all(o.lstrip().startswith(("from tokenseg", "import tokenseg")) for _, o in differ), differ
        assert not any(g.lstrip().startswith(("from tokenseg", "import tokenseg")) for g in generated)
    metadata = json.loads((exported / "configs" / "metadata.json").read_text())
    assert "tokenseg" not in metadata["required_packages_version"]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory, exported) -> str:
    """A new virtual environment with MONAI, torch, numpy and the metadata's packages, and no tokenseg."""
    metadata = json.loads((exported / "configs" / "metadata.json").read_text())
    packages = [
        f"monai=={metadata['monai_version']}",
        f"torch=={metadata['pytorch_version']}",
        f"numpy=={metadata['numpy_version']}",
        *(f"{name}=={version}" for name, version in metadata["required_packages_version"].items()),
    ]
    venv = tmp_path_factory.mktemp("bare") / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", "--progress-bar", "off", *packages], timeout=1500)
    proc = run([python, "-c", "import tokenseg"], check=False, cwd=exported)
    assert "No module named 'tokenseg'" in proc.stderr
    return python


def zoo_bundle(python: str, bundle: Path, *args: str):
    """``python -m monai.bundle`` from the bundle's folder, as the zoo runs it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return run([python, "-m", "monai.bundle", *args], cwd=bundle, env=env)


def test_exported_bundle_runs_without_tokenseg(bare_python, exported, tmp_path):
    config = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    demo = tmp_path / "demo"
    zoo_bundle(bare_python, exported, "run", "demo_data", "--config_file", "configs/train.json",
               "--dataset_dir", str(demo))
    datalist = write_datalist(tmp_path / "small.json", demo, 4, 1, 2)
    fast = ["--dataset_dir", str(demo), "--datalist", str(datalist), "--num_workers", "0", "--cache_rate", "0"]
    log = zoo_bundle(bare_python, exported, "run", "training", "--config_file", "configs/train.json", *config, *fast,
                     "--epochs", "1", "--val_interval", "1")
    assert "val_mean_dice" in log.stdout + log.stderr
    zoo_bundle(bare_python, exported, "run", "evaluating",
               "--config_file", "['configs/train.json','configs/evaluate.json']", *config, *fast)
    metrics = dict(csv.reader(open(exported / "eval" / "metrics.csv")))
    assert 0 <= float(metrics["val_mean_dice"]) <= 1 and float(metrics["val_hd95"]) >= 0

    image = demo / "imagesTs" / "breast_020.nii.gz"
    zoo_bundle(bare_python, exported, "run", "inference", "--config_file", "configs/inference.json", *config,
               "--datalist", f"['{image}']", "--output_dir", str(tmp_path / "masks"))
    mask = nib.load(tmp_path / "masks" / "breast_020_seg.nii.gz")
    assert mask.shape == nib.load(image).shape[:3]
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}

    zoo_bundle(bare_python, exported, "verify_metadata", "--meta_file", "configs/metadata.json",
               "--filepath", "configs/meta_schema.json")
    zoo_bundle(bare_python, exported, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
               "--config_file", "configs/inference.json")
    # TorchScript by scripting, the zoo's default (no --use_trace), and the exported model gives the eager output
    zoo_bundle(bare_python, exported, "ckpt_export", "network_def", "--filepath", "models/model.ts",
               "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
               "--config_file", "configs/inference.json", "--key_in_ckpt", "model")
    compare = """
import torch
from monai.bundle import ConfigParser
parser = ConfigParser()
parser.read_config("configs/inference.json")
network = parser.get_parsed_content("network_def")
network.load_state_dict(torch.load("models/model.pt", map_location="cpu", weights_only=True))
network.eval()
scripted = torch.jit.load("models/model.ts")
for shape in [(1, 3, 64, 64, 32), (2, 3, 96, 96, 48)]:
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), atol=1e-4, rtol=1e-4)
print("scripted == eager")
"""
    assert "scripted == eager" in run([bare_python, "-c", compare], cwd=exported).stdout
