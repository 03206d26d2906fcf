"""Multi-GPU retraining keeps what the other configs add: the app's stats publisher, the interactive warm start.

MONAI Label (0.8.5) writes the bundle's training config with the app's
overrides into ``monailabel_train.json`` and applies ``multi_gpu_train.json``
after it; a user stacks the same files on the command line. Checked on the
parsed configuration, and by a real 2-process run (``torchrun``, gloo on the
CPU) started by MONAI Label's own bundle train task.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monailabel.datastore.local import LocalDatastore

from tokenseg.bundle_task import INTERACTIVE_TRAIN_CONFIGS, read_weights
from tokenseg.data.demo import ensure_demo_dataset

from bundle_helpers import BUNDLE
from monailabel_helpers import APP

CASES = ["breast_000", "breast_001"]
DEFAULTS = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "tracking": "none"}


def _app_lib():
    sys.path.insert(0, str(APP))
    from lib.task import prepare_task
    from lib.trainers.tokenseg_deepedit import InteractiveTrainTask

    return prepare_task, InteractiveTrainTask


def _parsed(configs: list[str | Path]) -> ConfigParser:
    """The configs read as ``monai.bundle`` reads them: names in bundle/configs, or paths."""
    parser = ConfigParser()
    parser.read_config([str(c if isinstance(c, Path) else BUNDLE / "configs" / c) for c in configs])
    return parser


def test_merged_configs_keep_the_stats_publisher_and_the_warm_start(tmp_path):
    # the command line: train + the interactive mixin + multi-GPU
    parser = _parsed([*INTERACTIVE_TRAIN_CONFIGS, "multi_gpu_train.json"])
    steps = parser["initialize"]
    assert steps[0] == "@distributed_setup" and steps[-1] == "@warm_start"
    assert any("init_process_group" in step for step in parser["distributed_setup"])
    assert any("load_automatic_weights" in step for step in parser["warm_start"])
    assert parser["run"] == ["$@train#trainer.run()"]

    # MONAI Label's order: the bundle's config with the app's overrides written out, then multi-GPU over it
    prepare_task, InteractiveTrainTask = _app_lib()
    task = prepare_task(BUNDLE, tmp_path / "model" / "tokenseg", {}, str(tmp_path))
    trainer = InteractiveTrainTask(str(task.bundle), {}, DEFAULTS)
    overrides = trainer._update_overrides({"validate#dataset#data": [{"image": "x", "label": "y"}]})
    config = trainer.bundle_config
    for key, value in overrides.items():
        config.set(value, key)
    written = tmp_path / "monailabel_train.json"
    written.write_text(json.dumps(config.config))
    merged = _parsed([written, "multi_gpu_train.json"])
    assert any("train_stats_publisher.attach" in step for step in merged["run"])
    assert merged["initialize"][0] == "@distributed_setup" and merged["initialize"][-1] == "@warm_start"
    assert any("load_automatic_weights" in step for step in merged["warm_start"])
    assert any("init_process_group" in step for step in merged["distributed_setup"])


def test_interactive_retraining_on_two_processes_through_monai_label(tmp_path, monkeypatch):
    demo = Path(ensure_demo_dataset(tmp_path / "demo"))
    studies = tmp_path / "studies"
    studies.mkdir()
    for case in CASES:
        shutil.copy(demo / "imagesTr" / f"{case}.nii.gz", studies)
    prepare_task, InteractiveTrainTask = _app_lib()
    task = prepare_task(BUNDLE, tmp_path / "model" / "tokenseg", {}, str(studies))
    (task.bundle / "models" / "model_deepedit.pt").unlink()  # its first training: from the automatic weights
    datastore = LocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    for case in CASES:
        datastore.save_label(case, str(demo / "labelsTr" / f"{case}.nii.gz"), "final", {})

    # MONAI Label calls `torchrun`: the one beside this Python; CUDA_VISIBLE_DEVICES "0,1" with no GPU -> gloo
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    trainer = InteractiveTrainTask(str(task.bundle), {}, DEFAULTS)
    trainer({"model": "tokenseg_deepedit", "force_multi_gpu": True, "gpus": "0,1", "num_workers": 0}, datastore)

    stats = json.loads((task.bundle / "eval" / "train_stats_deepedit.json").read_text())  # the publisher ran
    assert stats["epoch"] == 1 and stats["total_epochs"] == 1
    trained = read_weights(task.bundle / "models" / "model_deepedit.pt")
    automatic = read_weights(task.checkpoint)
    for key in ("tokenizer.scorer.0.weight", "decoder.up_blocks.0.fuse.mlp.1.weight"):
        # one epoch from the automatic weights keeps their direction (from scratch: cosine about 0)
        similarity = torch.nn.functional.cosine_similarity(
            trained[key].float().flatten(), automatic[key].float().flatten(), dim=0
        )
        assert similarity > 0.5, (key, similarity)
