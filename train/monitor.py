"""What training watches: balanced accuracy on the validation split after every epoch, and on training batches.

    callbacks = [ValidationMetrics(x_val, y_val, num_classes, batch_size), ...]   # adds MONITOR to the epoch logs
    model.compile(..., metrics=[TrainBalancedAccuracy(num_classes)])

Early stopping, the best checkpoint and weight averaging all go by MONITOR, the mean per-class recall: on
HAM10000 (two-thirds nevi) plain accuracy rewards a model that calls everything a nevus.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from skinedge.convert.tfcompat import keras, tf

from .config import MONITOR


class ValidationMetrics(keras.callbacks.Callback):
    """Adds val_loss, val_accuracy and val_balanced_accuracy to the epoch logs (one prediction pass), before the
    checkpoint and early-stopping callbacks read them."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int):
        super().__init__()
        self.x, self.y, self.num_classes, self.batch_size = x, y, num_classes, batch_size

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        probs = self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
        if logs is not None:
            logs.update(validation_scores(self.y, probs))


def validation_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """val_loss, val_accuracy and val_balanced_accuracy (MONITOR) of class probabilities against labels."""
    pred = probs.argmax(1)
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return {
        "val_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1)))),
        "val_accuracy": float(np.mean(pred == y)),
        MONITOR: float(np.mean(recalls)),
    }


class TrainBalancedAccuracy(keras.metrics.Metric):
    """Running mean per-class recall over the epoch's training batches (one-hot or smoothed targets)."""

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.cm = self.add_weight("cm", shape=(num_classes, num_classes), initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        cm = tf.math.confusion_matrix(tf.argmax(y_true, 1), tf.argmax(y_pred, 1), self.num_classes, dtype=tf.float32)
        self.cm.assign_add(cm)

    def result(self):
        support = tf.reduce_sum(self.cm, 1)
        recall = tf.math.divide_no_nan(tf.linalg.diag_part(self.cm), support)
        return tf.math.divide_no_nan(tf.reduce_sum(recall), tf.reduce_sum(tf.cast(support > 0, tf.float32)))

    def reset_state(self):
        self.cm.assign(tf.zeros_like(self.cm))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
