"""Knowledge distillation for QAT: the quantized student learns the float model's answers as well as the labels.

    teacher = load_float_model(arch, num_classes, img_size, alpha, "runs/ham/float.weights.h5")
    model = Distiller(quantize_model(student_float), teacher, weight=1.0)
    model.compile(optimizer, loss=keras.losses.CategoricalCrossentropy(), metrics=[...])
    model.fit(ds)                         # batches of (images, one-hot targets, per-image weights)
    model.save_weights("qat.weights.h5")  # the student's weights only, loadable by load_qat_model

Why: QAT fine-tunes the weights, and a few epochs on hard labels move the student away from the float model on the
images it was unsure about; then the int8 model disagrees with the float one far more often than rounding alone
explains. With targets `weight * teacher(x) + (1 - weight) * labels` on the same augmented batch, QAT corrects the
quantization error towards what the float model answered (the usual recipe for QAT, e.g. Polino et al. 2018).
The teacher runs in inference mode on the training device; its weights never change.
"""

from __future__ import annotations

from typing import Any

from skinedge.convert.tfcompat import keras, tf


class Distiller(keras.Model):
    """Trains `student` on a blend of `teacher`'s probabilities and the labels; predicts and saves as `student`."""

    def __init__(self, student: keras.Model, teacher: keras.Model, weight: float, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= weight <= 1:
            raise ValueError("weight must be between 0 (labels only) and 1 (the teacher only)")
        self.student, self.teacher, self.weight = student, teacher, float(weight)
        teacher.trainable = False

    def call(self, inputs: Any, training: Any = None) -> Any:
        return self.student(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        soft = tf.stop_gradient(self.teacher(x, training=False))
        target = self.weight * soft + (1.0 - self.weight) * y
        with tf.GradientTape() as tape:
            pred = self.student(x, training=True)
            loss = self.compiled_loss(target, pred, sample_weight, regularization_losses=self.student.losses)
        self.optimizer.minimize(loss, self.student.trainable_variables, tape=tape)
        # the metrics score the student against the labels, as in the phases without a teacher
        self.compiled_metrics.update_state(y, pred, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def save_weights(self, *args: Any, **kwargs: Any) -> Any:
        # checkpoints hold the student alone, in the layout load_qat_model reads; BackupAndRestore saves the whole
        # object graph (teacher included) through tf.train.Checkpoint, not through this method
        return self.student.save_weights(*args, **kwargs)

    def load_weights(self, *args: Any, **kwargs: Any) -> Any:
        return self.student.load_weights(*args, **kwargs)
