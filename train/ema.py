"""An exponential moving average (EMA) of the weights during fine-tuning, scored and checkpointed in their place.

    ema = ModelEMA(0.998, run / "checkpoints" / "finetune.ema.npz")
    callbacks = [ema.scoring(), ValidationMetrics(...), ModelCheckpoint(...), ema, BackupAndRestore(...),
                 EarlyStopping(...), CSVLogger(...)]
    model.fit(ds, epochs=16, callbacks=callbacks)   # the checkpoint holds the best *averaged* weights

After every training step the average moves towards the live weights: ema = d * ema + (1 - d) * w, with d warmed up
as min(decay, (1 + t) / (10 + t)) after t steps (tf.train.ExponentialMovingAverage's num_updates), so the first
steps' weights do not linger. At the end of every epoch the averaged weights are swapped into the model for
validation, the checkpoint, early stopping and the history, then swapped back so training goes on from the live
weights (timm's ModelEmaV2, Ultralytics' ModelEMA: both validate and save the average). On HAM10000 one fine-tuning
run's validation balanced accuracy swings by several points from epoch to epoch (13 dermatofibroma and 17 vascular
images decide whole points), so the best single epoch is partly luck; an average over the last few hundred steps is
steadier, and averaged weights tend to generalise better (Polyak averaging).

The callbacks' order matters: `ema.scoring()` first (swap in), `ema` itself after the callbacks that score and save
the averaged weights and before BackupAndRestore, so the backup holds the live weights. The average and its step
count are written to `state_file` after every epoch (through a temporary file renamed into place) and read back when
training starts, so a phase resumed with BackupAndRestore continues the same average; an epoch the average already
holds (the kill came after its state file, before its backup) is run again without being taken in twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from skinedge.convert.tfcompat import keras, tf

from .swa import load_average, save_average

log = logging.getLogger(__name__)


def ema_decay(decay: float, step: int) -> float:
    """The decay applied at training step `step` (1-based): warmed up from 0.18 so early weights fade quickly."""
    return min(decay, (1.0 + step) / (10.0 + step))


class ModelEMA(keras.callbacks.Callback):
    """Keeps the moving average of every floating-point weight of the model (batch-norm statistics included)."""

    def __init__(self, decay: float, state_file: Path):
        super().__init__()
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be between 0 and 1, not {decay}")
        self.decay = decay
        self.state_file = Path(state_file)
        self.shadow: list[tf.Variable] = []
        self.steps: Optional[tf.Variable] = None
        self._pending_start = False  # copy the live weights at the first step (after BackupAndRestore restored them)
        self._swapped = False
        self.last_epoch = -1  # the last epoch (0-based) whose steps the average holds
        self._replaying = False  # an epoch the average already holds, run again after a resume: not taken in twice

    def _watched(self) -> list[tf.Variable]:
        return [w for w in self.model.weights if w.dtype.is_floating]

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        watched = self._watched()
        with self.model.distribute_strategy.scope():
            self.shadow = [tf.Variable(w.read_value(), trainable=False) for w in watched]
            self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._update_fn = tf.function(self._update)
        self._swap_fn = tf.function(self._swap)
        self._pending_start = not self._load(watched)

    def _load(self, watched: list[tf.Variable]) -> bool:
        loaded = load_average(self.state_file, [tuple(w.shape) for w in watched], ("steps", "last_epoch"))
        if loaded is None:
            return False
        values, counters = loaded
        for s, v in zip(self.shadow, values):
            s.assign(v)
        self.steps.assign(counters["steps"])
        self.last_epoch = counters["last_epoch"]
        log.info("continuing the moving average of the weights after %d steps", counters["steps"])
        return True

    def _update(self) -> None:
        self.steps.assign_add(1)
        t = tf.cast(self.steps, tf.float32)
        d = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + t) / (10.0 + t))
        for s, w in zip(self.shadow, self._watched()):
            s.assign(tf.cast(d, s.dtype) * s + tf.cast(1.0 - d, s.dtype) * w)

    def _swap(self) -> None:
        for s, w in zip(self.shadow, self._watched()):
            live = tf.identity(w)
            w.assign(s)
            s.assign(live)

    def on_train_batch_begin(self, batch: int, logs: Optional[dict] = None) -> None:
        if self._pending_start:
            for s, w in zip(self.shadow, self._watched()):
                s.assign(w)
            self._pending_start = False

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        # A SIGKILL after this file was saved but before the epoch's backup makes the resumed phase run that epoch
        # again; the average already holds it (as SWA's does), so the replay leaves the average alone.
        self._replaying = epoch <= self.last_epoch

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        if not self._replaying:
            self._update_fn()

    def swap_in(self) -> None:
        """Put the averaged weights into the model (the live ones are kept in the average's place)."""
        if not self._swapped:
            self._swap_fn()
            self._swapped = True

    def swap_out(self) -> None:
        """Put the live weights back."""
        if self._swapped:
            self._swap_fn()
            self._swapped = False

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.swap_out()
        if self._replaying:
            return
        self.last_epoch = epoch
        save_average(self.state_file, [s.numpy() for s in self.shadow], steps=int(self.steps.numpy()),
                     last_epoch=epoch)

    def scoring(self) -> keras.callbacks.Callback:
        """The callback to put first: at the end of each epoch it swaps the average in for the scores to read."""
        return _SwapIn(self)


class _SwapIn(keras.callbacks.Callback):
    def __init__(self, ema: ModelEMA):
        super().__init__()
        self.ema = ema

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.ema.swap_in()
