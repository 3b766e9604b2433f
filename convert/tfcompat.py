"""Import TensorFlow the way every workstation module needs it: Keras 2 (tf-keras) for tensorflow-model-optimization.

    from skinedge.convert.tfcompat import tf, keras, tfmot

TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported, so every TensorFlow import in skinedge goes
through this module.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ info chatter out of the progress output

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras", "tfmot"]
