"""skinedge.device: the Raspberry Pi side. Never imports TensorFlow or Keras.

Owns the contracts every stage shares: preprocessing (`preprocess`), labels (`labels`), the bundle format
(`bundle`) and constants (`constants`). `ImageClassifier` runs a bundle or any image-classification TFLite model.
"""

from .classifier import Category, ImageClassifier
from .preprocess import ImageError, load_and_preprocess, load_image, preprocess

__all__ = ["Category", "ImageClassifier", "ImageError", "load_and_preprocess", "load_image", "preprocess"]
