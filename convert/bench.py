"""Build the model pair the device benchmark compares: one MobileNetV2, as float32 TFLite and as int8 TFLite.

    python -m skinedge.convert.bench --img-size 160 --out /tmp/bench_models
    skinedge device bench /tmp/bench_models/int8_bundle            # or: python -m skinedge.device.bench \
    python -m skinedge.device.bench /tmp/bench_models/int8_bundle --compare /tmp/bench_models/float32.tflite

The network is the one `skinedge train --arch mobilenetv2` builds (ImageNet backbone, 7-class head on raw RGB
pixels); the head is untrained, which does not change speed or size. Written to OUT:
- float32.tflite: the float model, converted with no optimisation (float32 input [0, 255], float32 ops).
- int8.tflite: the quantization-aware twin (batch norm folded, `quantize_model`), activation ranges calibrated on
  real HAM10000 images (`calibrate_qat_ranges`), converted full-integer (`to_int8_tflite`): uint8 input, int8 ops,
  exactly as `skinedge convert` does it.
- int8_bundle/: the same int8 model as a bundle (labels, model.json with sha256, golden outputs), so the device
  benchmark also exercises the bundle path `device classify` takes (metadata checks, sha256).
- models.json: sizes, the size ratio and how they were made.
Both .tflite files carry their labels and input spec like a bundle's model (float32: raw pixels, mean 0, std 1;
int8: mean 128, std 127.5, which its input quantization undoes), so the device tools run them with no extra flags.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import click
import numpy as np
from skinedge.device.bundle import embed_metadata, write_bundle
from skinedge.device.constants import RESIZE_CENTER_CROP
from skinedge.device.golden import make_golden
from skinedge.device.preprocess import is_image_path, load_and_preprocess

from .export import to_int8_tflite
from .model import (
    build_model,
    calibrate_qat_ranges,
    input_normalization,
    quantize_model,
    set_phase,
)
from .tfcompat import keras, tf

log = logging.getLogger(__name__)

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "ham10000"
DEFAULT_WEIGHTS = HERE.parent.parent / "shared" / "weights" / "mobilenet_v2_1.0_imagenet_no_top.h5"


def calibration_images(data: os.PathLike | str, size: int, n: int) -> np.ndarray:
    """The first `n` images (sorted by name) under DATA (or DATA/images), preprocessed as the device does."""
    root = Path(data)
    folder = root / "images" if (root / "images").is_dir() else root
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))[:n]
    if not paths:
        raise click.ClickException(f"{folder}: no images for calibration")
    return np.stack([load_and_preprocess(p, (size, size)) for p in paths])


def float_tflite(model: keras.Model) -> bytes:
    """The float model as a float32 TFLite flatbuffer (no quantization of any kind)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return bytes(converter.convert())


def build_pair(out: os.PathLike | str, img_size: int = 160, alpha: float = 1.0, data: os.PathLike | str = DEFAULT_DATA,
               weights: Optional[os.PathLike | str] = DEFAULT_WEIGHTS, calibration: int = 128) -> dict[str, Any]:
    """Write float32.tflite, int8.tflite, int8_bundle/ and models.json to OUT; returns what models.json holds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = HAM_CLASSES
    spec = {"height": img_size, "width": img_size, "channels": 3, "color": "RGB", "layout": "NHWC",
            "resize": RESIZE_CENTER_CROP, "interpolation": "bilinear", "range": [0, 255], "mean": 0.0, "std": 1.0,
            "output": "probabilities"}
    t0 = time.perf_counter()
    x = calibration_images(data, img_size, calibration)
    model = build_model("mobilenetv2", len(labels), img_size, alpha, weights_path=str(weights) if weights else None)
    f32 = float_tflite(model)
    (out / "float32.tflite").write_bytes(embed_metadata(f32, labels, {**spec, "dtype": "float32"}))
    float_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    qat = quantize_model(model)
    set_phase(qat, "qat", "mobilenetv2", finetune_from=0.6)
    calibrate_qat_ranges(qat, x)
    int8 = to_int8_tflite(qat, x[:100])
    int8_s = time.perf_counter() - t0
    mean, std = input_normalization(qat)  # the int8 model's rescale is its input quantization
    int8_spec = {**spec, "dtype": "uint8", "mean": mean, "std": std}
    (out / "int8.tflite").write_bytes(embed_metadata(int8, labels, int8_spec))
    meta = {"name": "bench-mobilenetv2", "architecture": {"arch": "mobilenetv2", "alpha": alpha, "img_size": img_size},
            "note": "benchmark model: ImageNet backbone, untrained 7-class head (speed and size only)"}
    write_bundle(out / "int8_bundle", int8, labels, int8_spec, meta, golden=make_golden(int8, img_size, img_size))

    sizes = {name: (out / name).stat().st_size for name in ("float32.tflite", "int8.tflite")}
    report = {
        "arch": "mobilenetv2", "alpha": alpha, "img_size": img_size, "classes": len(labels),
        "weights": str(weights) if weights else None, "calibration_images": len(x), "data": str(data),
        "float32_bytes": sizes["float32.tflite"], "int8_bytes": sizes["int8.tflite"],
        "size_ratio": round(sizes["float32.tflite"] / sizes["int8.tflite"], 2),
        "float32_build_s": round(float_s, 1), "int8_build_s": round(int8_s, 1),
        "tensorflow": tf.__version__,
    }
    (out / "models.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output folder.")
@click.option("--img-size", type=click.IntRange(min=32), default=160, show_default=True)
@click.option("--alpha", type=float, default=1.0, show_default=True, help="MobileNetV2 width multiplier.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Images for calibration (HAM10000 layout or any folder of images).")
@click.option("--weights", default=str(DEFAULT_WEIGHTS), show_default=True,
              help="ImageNet no-top .h5 for the backbone, or 'none' (random weights: same speed).")
@click.option("--calibration", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images that calibrate the QAT ranges.")
def main(out: Path, img_size: int, alpha: float, data: Path, weights: str, calibration: int) -> None:
    """Build a float32 and an int8 MobileNetV2 TFLite for the device benchmark.

    \b
    Example:
      python -m skinedge.convert.bench --img-size 160 --out /tmp/bench_models
    """
    logging.basicConfig(level=logging.WARNING)
    report = build_pair(out, img_size, alpha, data, None if weights == "none" else weights, calibration)
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
