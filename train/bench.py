"""Workstation benchmark: does the input pipeline keep up with training, what QAT costs, how long conversion takes.

    python -m skinedge.train.bench ../shared/data/ham10000 --img-size 128 --limit 512 --steps 20
    python -m skinedge.train.bench ../shared/data/isic9/Train --arch cnn --json

Figures, all measured on this machine after warm-up:
- pipeline_img_s: images/s the training tf.data pipeline delivers (shuffle, batch, augmentation, prefetch) when
  nothing consumes them: the ceiling the pipeline puts on training. It and the two step figures below are timed in
  blocks that take turns (best of --rounds), so load from other jobs on a shared machine hits them alike.
- float_step_img_s / qat_step_img_s: images/s of `train_on_batch` on batches already in memory, in the float
  fine-tuning phase and in the QAT phase (same layers trainable): what training can consume.
- pipeline_vs_step: pipeline_img_s / float_step_img_s (goal >= 3: the pipeline is never the bottleneck).
- qat_vs_float_epoch: seconds per QAT epoch / seconds per float epoch (goal <= 1.6), from the step rates (the
  pipeline is not the bottleneck); qat_vs_float_epoch_cpu: the same in CPU seconds of this process.
- convert_s: QAT model -> full-integer int8 TFLite, calibration included.
- keras_predict_img_s / tflite_img_s: evaluation throughput of `compare` (Keras batch predict; TFLite invoke one
  image at a time through the device classifier, as compare does).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import click
import numpy as np
from skinedge.convert.export import tflite_classifier, to_int8_tflite
from skinedge.convert.model import (
    build_model,
    calibrate_qat_ranges,
    input_normalization,
    quantize_model,
    set_phase,
)
from skinedge.convert.tfcompat import keras, tf

from . import data as D
from .pipeline import make_dataset
from .weights import resolve_weights

log = logging.getLogger(__name__)


def machine() -> str:
    """CPU model and core count (and GPUs) of this machine, for the benchmark tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return f"{cpu}, {os.cpu_count()} cores" + (f", {len(gpus)} GPU" if gpus else ", no GPU")


def _rate(fn: Callable[[], int], seconds: float = 0.0, repeats: int = 1) -> float:
    """Items per second of fn() (which returns how many items it handled), best of `repeats`."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / max(time.perf_counter() - t0, 1e-9))
    return best


def interleaved_rates(blocks: dict[str, Callable[[], int]], rounds: int = 3,
                      cpu: Optional[dict[str, float]] = None) -> dict[str, float]:
    """Items/s of each block (best of `rounds`), the blocks taking turns: on a machine shared with other jobs, load
    that comes and goes then hits every figure alike, and their ratios stay meaningful. `cpu`, if given, receives
    items per CPU-second of this process (all its threads), which other processes' load barely moves."""
    best = {name: 0.0 for name in blocks}
    for _ in range(rounds):
        for name, fn in blocks.items():
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            wall, used = time.perf_counter() - t0, time.process_time() - c0
            best[name] = max(best[name], n / max(wall, 1e-9))
            if cpu is not None:
                cpu[name] = max(cpu.get(name, 0.0), n / max(used, 1e-9))
    return best


def pipeline_block(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int,
                   batches: int) -> Callable[[], int]:
    """A block that pulls `batches` batches from the augmented training pipeline, consumed by nothing."""
    ds = make_dataset(x, y, num_classes, batch_size, training=True, seed=0).repeat()
    it = iter(ds)
    for _ in range(3):  # warm-up: graph tracing, first shuffle buffer fill
        next(it)
    return lambda: sum(int(next(it)[0].shape[0]) for _ in range(batches))


def _trainable(model) -> int:
    """Trainable parameters: what a training step updates."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def pipeline_rate(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, batches: int) -> float:
    """Images/s the augmented training pipeline delivers, consumed by nothing."""
    return _rate(pipeline_block(x, y, num_classes, batch_size, batches), repeats=2)


def step_block(model: keras.Model, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int,
               steps: int) -> Callable[[], int]:
    """A block of `steps` train_on_batch calls on one in-memory batch (no input pipeline involved)."""
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=keras.losses.CategoricalCrossentropy())
    xb = tf.constant(x[:batch_size], tf.float32)
    yb = tf.one_hot(y[:batch_size], num_classes)
    for _ in range(3):  # warm-up: tracing the train function
        model.train_on_batch(xb, yb)

    def run() -> int:
        for _ in range(steps):
            model.train_on_batch(xb, yb)
        return steps * batch_size

    return run


def step_rate(model: keras.Model, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int,
              steps: int) -> float:
    """Images/s of train_on_batch on one in-memory batch (no input pipeline involved)."""
    return _rate(step_block(model, x, y, num_classes, batch_size, steps), repeats=2)


def honour_frozen(qat: keras.Model) -> int:
    """Make the frozen tfmot wrappers of a QAT model really frozen; returns how many wrappers were switched.

    tfmot's QuantizeWrapperV2.trainable_weights lists the wrapped layer's weights whether or not the wrapper is
    trainable, so `set_phase("qat")` leaves the kernels of the frozen lower blocks' project convolutions trainable:
    QAT then trains layers the float phase keeps frozen and backpropagates through the whole network. This is the
    fix measured by --frozen-fix (qat_frozen_fix_step_img_s); it belongs in convert.model.set_phase."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import (
        QuantizeWrapperV2,
    )

    class FrozenAware(QuantizeWrapperV2):
        @property
        def trainable_weights(self):
            return super().trainable_weights if self.trainable else []

        @property
        def non_trainable_weights(self):
            if self.trainable:
                return super().non_trainable_weights
            return self._dedup_weights(self._trainable_weights + self.layer.weights + self._non_trainable_weights)

    switched = 0
    for layer in qat.layers:
        if type(layer) is QuantizeWrapperV2 and not layer.trainable:
            layer.__class__ = FrozenAware
            switched += 1
    return switched


def benchmark(data: str, arch: str = "mobilenetv2", img_size: int = 128, batch_size: int = 32, limit: int = 512,
              steps: int = 10, weights: str = "none", rounds: int = 3, frozen_fix: bool = False) -> dict[str, Any]:
    samples, classes, layout = D.list_samples(data)
    samples = D.limit_samples(samples, limit, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        x, y, _ = D.load_images(samples, classes, (img_size, img_size), Path(tmp))
        decode_s = time.perf_counter() - t0
    n = len(classes)
    weights_path = resolve_weights(weights, 1.0) if arch == "mobilenetv2" else None
    out: dict[str, Any] = {
        "data": str(data), "images": len(y), "arch": arch, "img_size": img_size, "batch_size": batch_size,
        "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "tensorflow": tf.__version__,
        "decode_img_s": round(len(y) / decode_s, 1),
    }
    model = build_model(arch, n, img_size, weights_path=weights_path)
    set_phase(model, "finetune", arch, finetune_from=0.6)
    qat = quantize_model(model)
    set_phase(qat, "qat", arch, finetune_from=0.6)
    calibrate_qat_ranges(qat, x[:128])
    out["float_trainable_params"], out["qat_trainable_params"] = _trainable(model), _trainable(qat)
    blocks = {
        # more batches than steps: the prefetch buffer, full when a block starts, must not count for much
        "pipeline_img_s": pipeline_block(x, y, n, batch_size, batches=max(8, 3 * steps)),
        "float_step_img_s": step_block(model, x, y, n, batch_size, steps),
        "qat_step_img_s": step_block(qat, x, y, n, batch_size, steps),
    }
    if frozen_fix:
        fixed = quantize_model(model)
        set_phase(fixed, "qat", arch, finetune_from=0.6)
        calibrate_qat_ranges(fixed, x[:128])
        honour_frozen(fixed)
        out["qat_frozen_fix_trainable_params"] = _trainable(fixed)
        blocks["qat_frozen_fix_step_img_s"] = step_block(fixed, x, y, n, batch_size, steps)
    cpu: dict[str, float] = {}
    out.update({k: round(v, 1) for k, v in interleaved_rates(blocks, rounds=rounds, cpu=cpu).items()})
    out["pipeline_vs_step"] = round(out["pipeline_img_s"] / out["float_step_img_s"], 2)
    out["qat_vs_float_epoch"] = round(out["float_step_img_s"] / out["qat_step_img_s"], 2)
    # the same ratio in CPU time: what QAT costs in work, whatever else runs on the machine
    out["qat_vs_float_epoch_cpu"] = round(cpu["float_step_img_s"] / cpu["qat_step_img_s"], 2)
    if frozen_fix:
        out["qat_frozen_fix_vs_float_epoch"] = round(out["float_step_img_s"] / out["qat_frozen_fix_step_img_s"], 2)
        out["qat_frozen_fix_vs_float_epoch_cpu"] = round(
            cpu["float_step_img_s"] / cpu["qat_frozen_fix_step_img_s"], 2)

    t0 = time.perf_counter()
    tflite = to_int8_tflite(qat, x[:100])
    out["convert_s"] = round(time.perf_counter() - t0, 1)
    xf = x.astype(np.float32)
    model.predict(xf[:64], batch_size=64, verbose=0)  # warm-up: tracing the predict function is not throughput
    out["keras_predict_img_s"] = round(_rate(lambda: len(model.predict(xf, batch_size=64, verbose=0)), repeats=2), 1)
    with tempfile.TemporaryDirectory() as tmp:
        clf = tflite_classifier(tflite, Path(tmp), classes, threads=1, norm=input_normalization(qat))
        clf.predict_batch(x[:5])
        out["tflite_img_s"] = round(_rate(lambda: len(clf.predict_batch(x))), 1)
    out["gpu"] = "not measured: no GPU on this machine" if not tf.config.list_physical_devices("GPU") else "present"
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return out


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--arch", type=click.Choice(["mobilenetv2", "cnn"]), default="mobilenetv2", show_default=True)
@click.option("--img-size", type=click.IntRange(min=32), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--limit", type=click.IntRange(min=16), default=512, show_default=True, help="Images to decode.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps per figure.")
@click.option("--weights", default="none", show_default=True, help="imagenet, none or a .h5 (speed only).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Turns of the interleaved pipeline/float/QAT blocks (best of).")
@click.option("--frozen-fix", is_flag=True, help="Also time QAT with frozen wrappers really frozen (honour_frozen).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(data: str, arch: str, img_size: int, batch_size: int, limit: int, steps: int, weights: str, rounds: int,
         frozen_fix: bool, as_json: bool) -> None:
    """Benchmark the workstation stages: input pipeline vs training step, QAT vs float, conversion, evaluation.

    \b
    Example:
      python -m skinedge.train.bench ../shared/data/ham10000 --img-size 128 --limit 512
    """
    logging.basicConfig(level=logging.WARNING)
    result = benchmark(data, arch, img_size, batch_size, limit, steps, weights, rounds, frozen_fix)
    if as_json:
        click.echo(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        click.echo(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
