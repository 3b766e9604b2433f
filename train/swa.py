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


def save_average(path: Path, weights: list[np.ndarray], **counters: int) -> None:
    """Write a weight average and its counters to `path`, whole or not at all (a temporary file renamed into place),
    for `load_average` to read back when an interrupted phase resumes."""
    with replaced_file(path) as tmp:
        np.savez(tmp, n_weights=len(weights), **counters, **{f"w{i}": w for i, w in enumerate(weights)})


def load_average(path: Path, shapes: list[tuple[int, ...]], counters: tuple[str, ...],
                 ) -> Optional[tuple[list[np.ndarray], dict[str, int]]]:
    """(weights, {counter: value}) as `save_average` wrote them; None where there is no file, or, with a warning,
    where it is damaged or holds weights of other `shapes`: the average then starts again rather than the run
    stopping."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            missing = [name for name in counters if name not in saved.files]
            if missing:  # written before the counter existed (the EMA's last_epoch): nothing says which epochs it holds
                log.warning("%s: written by an earlier skinedge (no %s); the weight average starts again", path,
                            ", ".join(missing))
                return None
            weights = [saved[f"w{i}"] for i in range(int(saved["n_weights"]))]
            values = {name: int(saved[name]) for name in counters}
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for a damaged file
        log.warning("%s: unreadable (%s); the weight average starts again", path, exc)
        return None
    if [w.shape for w in weights] != [tuple(shape) for shape in shapes]:
        log.warning("%s: holds weights of another model; the weight average starts again", path)
        return None
    return weights, values


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
        loaded = load_average(self.state_file, [w.shape for w in self.model.get_weights()], ("count", "last_epoch"))
        if loaded is None:
            return
        self.mean, counters = loaded
        self.count, self.last_epoch = counters["count"], counters["last_epoch"]
        log.info("continuing the weight average of %d epochs (to epoch %d)", self.count, self.last_epoch + 1)

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
        save_average(self.state_file, self.mean, count=self.count, last_epoch=self.last_epoch)

    def apply(self, model: keras.Model) -> None:
        """Load the average into `model` (same architecture)."""
        if self.mean is None:
            raise ValueError("no epoch has been averaged yet")
        model.set_weights(self.mean)
