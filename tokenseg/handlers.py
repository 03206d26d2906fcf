"""Ignite handlers: TokenSeg's diagnostics, and checkpoints that are never seen half-written."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from ignite.metrics.metric import reinit__is_reduced
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver, HausdorffDistance
from monai.utils import CommonKeys

from tokenseg.losses import TokenSegLoss
from tokenseg.metrics import codebook_perplexity, hit_rate_per_level, kept_boundary_hits

__all__ = ["TokenSegDiagnostics", "AtomicCheckpointSaver", "PhysicalHausdorffDistance", "save_replacing"]


class TokenSegDiagnostics:
    """Averages TokenSeg's diagnostics over each training epoch into ``engine.state.metrics``.

    After each loss computation (MONAI's ``IterationEvents.LOSS_COMPLETED``)
    it reads the engine's output, the network's training output and the
    batch's label, and computes from them each loss term (``loss_dice_ce``,
    ``loss_vq``, ``loss_boundary``, ``loss_total``, by the trainer's
    ``TokenSegLoss``), the codebook perplexity and the boundary hit rate of
    the kept tokens, overall and per level (``boundary_hit_rate_level1``, ...,
    over the batches that kept tokens of that level); at the end of the epoch
    their means land in ``engine.state.metrics``, where MONAI's
    ``StatsHandler`` and ``TensorBoardStatsHandler`` log them. Attach it
    before those handlers.

    Args:
        loss_function: the trainer's ``TokenSegLoss`` (its terms and grids).
        label_key: key of the label in the trainer's output.
    """

    def __init__(self, loss_function: TokenSegLoss, label_key: str = CommonKeys.LABEL) -> None:
        self.loss_function = loss_function
        self.label_key = label_key
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()
        self._counts.clear()

    @torch.no_grad()
    def _accumulate(self, engine: Engine) -> None:
        output, label = engine.state.output[CommonKeys.PRED], engine.state.output[self.label_key]
        if not isinstance(output, Mapping):  # not a training step's output (logits only): nothing to read
            return
        grids = self.loss_function.grids
        terms = self.loss_function.terms(output, label)
        values = {f"loss_{name}": float(value) for name, value in terms.items()}
        values["codebook_perplexity"] = codebook_perplexity(output["code_indices"]).item()
        hits = kept_boundary_hits(output["kept_indices"], label, grids)  # (B, K), the band computed once
        values["boundary_hit_rate"] = hits.mean().item()
        per_level = hit_rate_per_level(hits, output["kept_indices"], grids)
        for level, rate in enumerate(per_level.tolist(), start=1):
            if not math.isnan(rate):  # NaN when no token of the level was kept
                values[f"boundary_hit_rate_level{level}"] = rate
        for name, value in values.items():
            self._sums[name] += value
            self._counts[name] += 1

    def _publish(self, engine: Engine) -> None:
        for name, total in self._sums.items():
            engine.state.metrics[name] = total / self._counts[name]


def save_replacing(checkpoint: Mapping, path: str | os.PathLike) -> None:
    """``torch.save`` beside ``path``, then rename over it: ``path`` never holds half a checkpoint."""
    partial = f"{path}.{os.getpid()}.partial"
    torch.save(checkpoint, partial)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


class _ReplacingDiskSaver(BaseSaveHandler):
    """Writes a checkpoint to a temporary file beside its target and renames it into place.

    With a fixed ``filename`` (``model.pt``), replacing the file is the removal
    of the old one, so ``remove`` leaves it alone: the name always holds a
    complete checkpoint, the old one until the new one is in place.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        self.dirname = dirname
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != 0:
            return
        os.makedirs(self.dirname, exist_ok=True)
        save_replacing(checkpoint, os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        if self.filename is None and idist.get_rank() == 0:
            os.remove(os.path.join(self.dirname, filename))


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are replaced atomically.

    MONAI's saver deletes the previous best ``model.pt`` before writing the
    new one, in place. A reader in between (the MONAI Label app reloads the
    checkpoint when it changes) finds no file or half a file, and a run
    stopped there loses the model. Here every file is written beside its
    target and renamed over it. Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _ReplacingDiskSaver(self.save_dir, checkpoint.save_handler.filename)


class PhysicalHausdorffDistance(HausdorffDistance):
    """MONAI's ``HausdorffDistance`` handler in millimetres: each case's spacing comes from its label's affine.

    MONAI's handler measures in voxels (it passes no spacing to the metric).
    Here ``y`` must be MetaTensors (what the bundle's postprocessing gives,
    inverted to each image's own grid), whose affine gives the spacing. Same
    arguments as ``HausdorffDistance``.
    """

    @reinit__is_reduced
    def update(self, output) -> None:
        y_pred, y = output
        predictions, labels = _cases(y_pred), _cases(y)
        if not all(isinstance(label, MetaTensor) for label in labels):
            raise TypeError("PhysicalHausdorffDistance needs labels as MetaTensors, to read their spacing.")
        if len(predictions) != len(labels):
            raise ValueError(f"PhysicalHausdorffDistance: {len(predictions)} predictions for {len(labels)} labels.")
        # one call per case, each with its own spacing: the metric hands its keyword arguments to every case
        for prediction, label in zip(predictions, labels):
            spacing = [float(s) for s in affine_to_spacing(label.affine, r=3)]
            self.metric_fn([prediction], [label], spacing=spacing)


def _cases(batch) -> list[torch.Tensor]:
    """A decollated list of cases (C, ...) or a batch (B, C, ...) -> a list of cases (C, ...), each with its affine."""
    if isinstance(batch, (list, tuple)):
        return list(batch)
    if not isinstance(batch, MetaTensor) or batch.affine.ndim == 2:
        return [case for case in batch]  # one affine (or none) shared by every case
    return [MetaTensor(case, affine=affine) for case, affine in zip(batch.as_tensor(), batch.affine)]
