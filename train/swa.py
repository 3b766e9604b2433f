"""Stochastic weight averaging (SWA) over the last epochs of fine-tuning; survives an interrupted run.

    swa = WeightAverage(start_epoch=10, state_file=run / "checkpoints" / "finetune.swa.npz")
    model.fit(ds, epochs=20, callbacks=[..., swa])
    if swa.count >= 2:
        swa.apply(model)          # then score it on validation; keep it only if it beats the best single epoch

Averaging the weights visited near the end of training lands in a flatter region than any single epoch (Izmailov
et al. 2018, "Averaging weights leads to wider optima"). On HAM10000 the validation balanced accuracy of one
fine-tuning run swings by 3-4 points from epoch to epoch (13 dermatofibroma and 17 vascular images decide whole
points), so the best single epoch is partly luck; the average is not.

Batch norm is frozen while a pretrained backbone fine-tunes (skinedge.convert.model.set_phase), so its statistics
are identical in every averaged epoch and the average needs no re-estimation pass over the training data, unlike
SWA of networks whose batch norm trains (there the averaged model is still scored on validation before use).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from skinedge.convert.tfcompat import keras
from skinedge.device.atomic import replaced_file

log = logging.getLogger(__name__)


class WeightAverage(keras.callbacks.Callback):
    """Running mean of the model's weights at the end of every epoch from `start_epoch` (0-based) on.

    The mean is written to `state_file` after each epoch it takes in (through a temporary file renamed into
    place), and read back when training starts, so a phase resumed with BackupAndRestore continues the same
    average: an epoch already counted is never counted twice."""

    def __init__(self, start_epoch: int, state_file: Path):
        super().__init__()
        self.start_epoch = max(0, start_epoch)
        self.state_file = Path(state_file)
        self.mean: Optional[list[np.ndarray]] = None
        self.count = 0  # epochs in the mean
        self.last_epoch = -1  # the last epoch taken in (0-based)

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        if not self.state_file.exists():
            return
        try:
            with np.load(self.state_file, allow_pickle=False) as saved:
                mean = [saved[f"w{i}"] for i in range(int(saved["n_weights"]))]
                count, last = int(saved["count"]), int(saved["last_epoch"])
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for a damaged file
            log.warning("%s: unreadable (%s); the weight average starts again", self.state_file, exc)
            return
        if [w.shape for w in mean] != [w.shape for w in self.model.get_weights()]:
            log.warning("%s: holds weights of another model; the weight average starts again", self.state_file)
            return
        self.mean, self.count, self.last_epoch = mean, count, last
        log.info("continuing the weight average of %d epochs (to epoch %d)", count, last + 1)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if epoch < self.start_epoch or epoch <= self.last_epoch:
            return
        weights = self.model.get_weights()
        if self.mean is None:
            self.mean = [w.astype(np.float32, copy=True) for w in weights]
        else:  # incremental mean: no sum that grows with the count
            self.mean = [m + (w - m) / (self.count + 1) for m, w in zip(self.mean, weights)]
        self.count += 1
        self.last_epoch = epoch
        self._save()

    def _save(self) -> None:
        with replaced_file(self.state_file) as tmp:
            np.savez(tmp, n_weights=len(self.mean), count=self.count, last_epoch=self.last_epoch,
                     **{f"w{i}": w for i, w in enumerate(self.mean)})

    def apply(self, model: keras.Model) -> None:
        """Load the average into `model` (same architecture)."""
        if self.mean is None:
            raise ValueError("no epoch has been averaged yet")
        model.set_weights(self.mean)
