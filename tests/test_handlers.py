"""The checkpoint saver the bundle uses: model.pt always holds a complete checkpoint."""

import os
import threading

import torch
from ignite.engine import Engine, Events

from tokenseg.handlers import AtomicCheckpointSaver


def test_best_checkpoint_is_replaced_without_a_gap(tmp_path):
    network = torch.nn.Linear(1000, 1000)  # a 4 MB checkpoint: writing it takes a while
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def improve(engine):  # every epoch is a new best
        engine.state.metrics["val_mean_dice"] = engine.state.epoch / 100
        with torch.no_grad():
            network.weight.fill_(engine.state.epoch)

    AtomicCheckpointSaver(
        str(tmp_path), {"model": network}, save_key_metric=True, key_metric_name="val_mean_dice",
        key_metric_filename="model.pt",
    ).attach(evaluator)
    path = tmp_path / "model.pt"
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if evaluator.state.epoch >= 2 and not path.exists():
                missing.append(evaluator.state.epoch)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        evaluator.run([0], max_epochs=30)
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    saved = torch.load(path, weights_only=True)
    assert torch.all(saved["weight"] == 30)  # the last best
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no partial files left behind
    assert (path.stat().st_mode & 0o044) == 0o044  # readable by group and others, like a plain save
