"""tf.data input pipelines over images decoded once (uint8 arrays in memory), with dermoscopy augmentation.

    ds = make_dataset(x, y, num_classes, batch_size=32, training=True, seed=42)

Dermoscopy images have no canonical orientation, so flips are free, and so are 90-degree rotations of a square image
(`rot90=True`: a random transpose, which with the two flips reaches all eight); small rotations, zoom and mild
brightness/contrast/saturation jitter mimic different dermatoscopes and lighting (`augment="mild"`; "strong" turns
by any angle, crops deeper and shifts colour further, see AUGMENTATIONS). Augmentation runs on whole batches after
batching (vectorised), followed by prefetch so the step never waits for the pipeline.

Class weights travel in the data set as per-image weights (the third element of each batch) rather than through
Keras' `class_weight`, which looks only at the argmax of a target: with mixup (`mixup=alpha`) an image is a blend of
two, and its weight is the same blend of theirs (Zhang et al. 2018, "mixup: beyond empirical risk minimization").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from skinedge.convert.tfcompat import keras, tf

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Augmentation:
    """How far training augmentation goes (every change drawn uniformly, per image, within these bounds)."""

    rotation: float  # largest rotation, as a fraction of a full turn (Keras RandomRotation's factor)
    zoom: tuple[float, float]  # RandomZoom's height factor range: negative zooms in (crops), positive out
    brightness: float  # largest brightness shift, as a fraction of 255
    contrast: tuple[float, float]  # range of the contrast factor (1: unchanged)
    saturation: tuple[float, float]  # range of the saturation factor (1: unchanged)
    hue: float  # largest hue shift, as a fraction of the colour circle (0: none)


# --augment-level (config.AUGMENT_LEVELS names them). "mild" is what every run before the option trained with, bit for
# bit. "strong" follows the dermoscopy augmentation study of Perez et al. 2018 ("Data augmentation for skin lesion
# analysis": crops at several scales, any rotation, stronger colour changes helped most) for runs whose rare
# classes, drawn many times an epoch, are learned by heart: any angle (a lesion has no orientation), crops down to
# 70 % of the side, brightness, contrast and saturation changes of up to a quarter, hue turned by up to 11 degrees
# (a dermatoscope's colour cast; more would repaint the colours the diagnosis reads)
AUGMENTATIONS = {
    "mild": Augmentation(rotation=0.08, zoom=(-0.15, 0.1), brightness=0.08, contrast=(0.85, 1.15),
                         saturation=(0.85, 1.15), hue=0.0),
    "strong": Augmentation(rotation=0.5, zoom=(-0.3, 0.1), brightness=0.15, contrast=(0.75, 1.25),
                           saturation=(0.75, 1.25), hue=0.03),
}


def class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights (n / (k * count)), as scikit-learn's compute_class_weight("balanced")."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    out = {int(c): 1.0 for c in range(num_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def class_draws(y: np.ndarray, mode: str) -> Optional[np.ndarray]:
    """How often each class present in `y` (in np.unique order) is drawn when sampling: None for "equal" (every class
    alike), the square root of its count, normalised, for "sqrt" (square-root sampling, Mahajan et al. 2018; Kang et
    al. 2020, "Decoupling representation and classifier"): rare classes come up more often than in the data, but
    are not repeated as often as equal drawing repeats them (each of HAM10000's 63 training dermatofibromas: about
    14 times an epoch drawn equally, 5 times by square root, once as they come)."""
    if mode == "equal":
        return None
    if mode != "sqrt":
        raise ValueError(f"unknown class sampling {mode!r}")
    root = np.sqrt(np.unique(y, return_counts=True)[1].astype(np.float64))
    return root / root.sum()


def mix_batch(images: tf.Tensor, target: tf.Tensor, weight: tf.Tensor, lam: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Blend each image, target and weight with its partner in the reversed batch: `lam` of its own, 1 - lam of the
    partner's (lam has one entry per image). Targets stay distributions: they still sum to 1."""
    partner = (tf.reverse(images, [0]), tf.reverse(target, [0]), tf.reverse(weight, [0]))
    lam = tf.cast(lam, tf.float32)
    mixed_images = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * partner[0]
    return mixed_images, lam[:, None] * target + (1 - lam[:, None]) * partner[1], lam * weight + (1 - lam) * partner[2]


def sample_beta(n: tf.Tensor, alpha: float, seed: int) -> tf.Tensor:
    """n draws of Beta(alpha, alpha), as X / (X + Y) of two Gamma(alpha) draws (TensorFlow has no Beta sampler)."""
    x = tf.random.gamma([n], alpha, seed=seed)
    y = tf.random.gamma([n], alpha, seed=seed + 1)
    total = x + y
    # both draws underflow to 0 for a tiny alpha: keep the image as it is rather than divide by zero
    return tf.where(total > 0, x / tf.maximum(total, 1e-30), tf.ones_like(total))


def _augmenter(aug: Augmentation, seed: int) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            keras.layers.RandomRotation(aug.rotation, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(aug.zoom, fill_mode="reflect", seed=seed + 2),
        ],
        name="augment",
    )


def random_transpose(images: tf.Tensor, seed: int) -> tf.Tensor:
    """Swap height and width of about half the images of a square batch (a transpose is a 90-degree rotation and a
    mirroring; after RandomFlip's two flips every one of the eight symmetries of the square is equally likely)."""
    swap = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=seed) < 0.5
    return tf.where(swap, tf.transpose(images, [0, 2, 1, 3]), images)


def shift_hue(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Turn each image's hue by its own `delta` (fractions of the colour circle, one per image) on [0, 255] floats
    (tf.image.adjust_hue takes one delta for the whole batch)."""
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 255.0) / 255.0)
    hue = tf.math.floormod(hsv[..., :1] + tf.reshape(delta, [-1, 1, 1, 1]), 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1)) * 255.0


def _color_jitter(images: tf.Tensor, aug: Augmentation, seed: int) -> tf.Tensor:
    """Per-image brightness, contrast, saturation (and, if `aug.hue`, hue) changes on [0, 255] floats."""
    n = tf.shape(images)[0]
    brightness = tf.random.uniform([n, 1, 1, 1], -aug.brightness, aug.brightness, seed=seed) * 255.0
    contrast = tf.random.uniform([n, 1, 1, 1], *aug.contrast, seed=seed + 1)
    saturation = tf.random.uniform([n, 1, 1, 1], *aug.saturation, seed=seed + 2)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean + brightness
    grey = tf.reduce_mean(images, axis=3, keepdims=True)
    images = (images - grey) * saturation + grey
    if aug.hue:  # no draw at all otherwise, so "mild" runs keep their random streams
        images = shift_hue(images, tf.random.uniform([n], -aug.hue, aug.hue, seed=seed + 5))
    return tf.clip_by_value(images, 0.0, 255.0)


def make_dataset(
    x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, training: bool, seed: int = 0,
    augment: Optional[str] = "mild", oversample: Optional[str] = None, label_smoothing: float = 0.0,
    class_weight: Optional[dict[int, float]] = None, mixup: float = 0.0, rot90: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 images in [0, 255], one-hot labels), plus per-image weights when `class_weight` or
    `mixup` is given.

    `augment` names the training augmentation (a key of AUGMENTATIONS; None: none).
    With `oversample` ("equal" or "sqrt", see class_draws), images are drawn class by class, every class equally
    often or in proportion to the square root of its count (an epoch then has as many steps as the plain one).
    `mixup` > 0 (training only) blends every image with another of its batch, the share drawn from Beta(mixup,
    mixup): 0.2-0.4 regularises fine-tuning on a few thousand images.
    """
    table = np.ones(num_classes, np.float32)
    for c, w in (class_weight or {}).items():
        table[c] = w
    weighted = class_weight is not None or (training and mixup > 0)

    def one_hot(images, labels):
        target = tf.one_hot(labels, num_classes)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / num_classes
        if weighted:
            return tf.cast(images, tf.float32), target, tf.gather(table, labels)
        return tf.cast(images, tf.float32), target

    if training and oversample:
        per_class = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            per_class.append(tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).repeat().shuffle(len(idx), seed))
        draws = class_draws(y, oversample)
        ds = tf.data.Dataset.sample_from_datasets(per_class, None if draws is None else draws.tolist(),
                                                  seed=seed).take(len(y))
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if training:
            ds = ds.shuffle(min(len(y), 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False).map(one_hot, num_parallel_calls=AUTOTUNE)
    if training and augment:
        level = AUGMENTATIONS[augment]
        aug = _augmenter(level, seed)

        square = x.ndim == 4 and x.shape[1] == x.shape[2]

        def augment_batch(images, *rest):
            images = aug(images, training=True)
            if rot90 and square:
                images = random_transpose(images, seed + 4)
            return (_color_jitter(images, level, seed), *rest)

        ds = ds.map(augment_batch, num_parallel_calls=AUTOTUNE)
    if training and mixup > 0:
        def mix(images, target, weight):
            return mix_batch(images, target, weight, sample_beta(tf.shape(images)[0], mixup, seed + 3))

        ds = ds.map(mix, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
