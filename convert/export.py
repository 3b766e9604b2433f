"""Conversion: a QAT Keras model to a full-integer int8 TFLite model, verified, packed as a bundle.

    from skinedge.convert.export import convert_run
    report = convert_run("runs/ham", "models/ham", min_agreement=0.98)

The int8 model takes raw RGB uint8 pixels (the model's own rescale is quantized into it) and returns int8
probabilities; every op runs in int8. Before anything is written it is checked against the QAT Keras model on the
run's validation images, through the device's own ImageClassifier, and refused below `min_agreement` top-1
agreement. The melanoma flag threshold is chosen on the same validation images for `flag_sensitivity`, on P(melanoma)
at the training split's class frequencies when the model was trained class-balanced (`flag_frequencies`). With
test-time augmentation (`tta="flips"`: the bundle then averages the int8 model over mirrored views of each image),
the threshold and the validation figures are those of the averaged probabilities; the agreement check stays one
image against one image, since it checks the conversion, not the views.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from skinedge.device.bundle import FlagRule, embed_metadata, write_bundle
from skinedge.device.classifier import ImageClassifier
from skinedge.device.constants import FLAG_PRIORS, INTENDED_USE, NOT_A_DIAGNOSIS, RESIZE_CENTER_CROP, TTA_VIEWS
from skinedge.device.golden import make_golden
from skinedge.device.preprocess import tta_problem, tta_views

from .metrics import classification_metrics, melanoma_index, threshold_for_sensitivity
from .model import input_normalization, int32_biases, load_qat_model, rescale_layer
from .rundir import QAT_WEIGHTS, RunDir, RunDirError, class_counts
from .tfcompat import keras, tf

log = logging.getLogger(__name__)

# Tensor types allowed in a full-integer model: int8 activations/weights, int32 biases, uint8 at the input edge.
INTEGER_TYPES = {np.int8, np.uint8, np.int32}


class ConvertError(ValueError):
    """A run that cannot be converted, or a model that fails verification; the message says why."""


def flag_frequencies(classes: Sequence[str], train_counts: dict[str, int], balance: str, label: str,
                     prior: str = "train") -> Optional[dict[str, float]]:
    """The class frequencies the flag reads P(`label`) at, or None for the raw output.

    A model trained with class weights or oversampling (`balance`) answers as if its classes were equally common:
    prior "train" moves its P(label) to the training split's frequencies. One trained with square-root sampling
    ("sqrt") answers as if each class were as common as the square root of its count, so the weights that move it
    there are those square roots, normalised. A model trained on the data's own frequencies (balance "none")
    already answers at them, and reweighting again would count them twice.
    `train_counts` is the training split of the run's data alone: images added with `train --extra-train` were
    chosen for their class, so their share says nothing about how often lesions occur."""
    if prior not in FLAG_PRIORS:
        raise ValueError(f"unknown flag prior {prior!r}")
    if prior == "none" or balance == "none" or not train_counts.get(label):
        return None
    power = 0.5 if balance == "sqrt" else 1.0
    total = sum(train_counts.get(c, 0) ** power for c in classes)
    return {c: round(train_counts.get(c, 0) ** power / total, 6) for c in classes}


def split_description(cfg: dict) -> str:
    """How the run's split kept lesions apart, in words for model.json and the card."""
    pinned = (f"; lesions that {cfg['init_from']} (the run it started from) trained or validated on kept in training"
              if cfg.get("init_from") else "")
    if cfg.get("leave_out"):
        pinned += f"; lesions that {cfg['leave_out']} validates or tests on left out"
    if cfg.get("extra_train"):
        pinned += (f"; training also on images of {cfg['extra_train']} that repeat none of the data's, never "
                   "validated or tested on")
    if cfg.get("extra", {}).get("layout") == "ham10000":
        how = "grouped by lesion_id from the HAM10000 metadata"
        return f"stratified by class, {how}{pinned} (split.csv in the run dir)"
    if cfg.get("lesion_ids"):
        how = f"grouped by lesion (lesion ids from {cfg['lesion_ids']}; images it does not name one by one)"
    else:
        how = "grouped by image (no lesion ids given: images of one lesion may sit on both sides)"
    return f"stratified by class, {how}, byte-identical copies together{pinned} (split.csv in the run dir)"


def _representative(images: np.ndarray, mean: float, std: float) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for img in images:
            yield [((img[None].astype(np.float32) - mean) / std).astype(np.float32)]

    return gen


@contextlib.contextmanager
def _rescale_bypassed(model: keras.Model) -> Iterator[None]:
    """The model with its rescale layer made the identity (the converter drops x * 1 + 0), restored afterwards."""
    layer = rescale_layer(model)
    if layer is None:
        yield
        return
    saved = layer.scale, layer.offset
    layer.scale, layer.offset = 1.0, 0.0
    try:
        yield
    finally:
        layer.scale, layer.offset = saved


def to_int8_tflite(model: keras.Model, calibration: np.ndarray) -> bytes:
    """Full-integer conversion: uint8 input, int8 output, int8 ops only.

    The model's rescale becomes the input tensor's quantization (scale 1/std, zero point mean; see
    `input_normalization`), so raw uint8 pixels go in unchanged and reach the first conv exactly. Converted as it
    stands, the rescale is a MUL and an ADD with a calibrated int8 tensor between them that rounds the pixels to
    about 170 levels, twice: on the trained HAM10000 model that alone cost 2 points of QAT-vs-int8 agreement.
    For a QAT model the fake-quant ranges learned in training are used and `calibration` (raw pixels) only
    covers what tfmot left float; for a float model this is post-training quantization calibrated on it."""
    mean, std = input_normalization(model)
    lo, hi = -mean / std, (255 - mean) / std
    h, w = model.input_shape[1:3]

    with _rescale_bypassed(model):
        @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32, name="image")])
        def serve(x: Any) -> Any:
            # a fixed fake-quant on the input pins its quantization to exactly (scale 1/std, zero point mean)
            x = tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)
            return model(x, training=False)

        converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration, mean, std)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        try:
            return bytes(converter.convert())
        except Exception as exc:  # the converter raises many types; all mean "this graph will not convert"
            raise ConvertError(f"TFLite conversion failed: {str(exc).splitlines()[0]}") from None


def tensor_types(classifier: ImageClassifier) -> tuple[set[str], set[str]]:
    """(op names, tensor dtypes) of a loaded model."""
    interp = classifier.interpreter
    ops = {d["op_name"] for d in interp._get_ops_details()}  # noqa: SLF001 - the only way to list ops
    types = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    return ops, types


def keras_view_probs(model: keras.Model, x: np.ndarray, batch_size: int = 64, tta: str = "none",
                     on_batch: Optional[Callable[[int], Any]] = None) -> np.ndarray:
    """Class probabilities of a Keras model for each view of test-time augmentation `tta` (views x N x classes,
    the images as they are first); `on_batch` is called with the number of images in each batch done (a progress
    bar's `update`).

    Views are made a batch at a time: eight float32 copies of a whole validation split would be gigabytes."""
    out = []
    for i in range(0, len(x), batch_size):
        batch = tta_views(x[i:i + batch_size], tta)
        out.append(np.stack([model.predict_on_batch(v.astype(np.float32)) for v in batch]))
        if on_batch is not None:
            on_batch(out[-1].shape[1])
    if not out:
        return np.zeros((len(TTA_VIEWS[tta]), 0, model.output_shape[-1]), np.float32)
    return np.concatenate(out, axis=1)


def keras_probs(model: keras.Model, x: np.ndarray, batch_size: int = 64, tta: str = "none",
                on_batch: Optional[Callable[[int], Any]] = None) -> np.ndarray:
    """Class probabilities of a Keras model, averaged over the views of test-time augmentation `tta`."""
    views = keras_view_probs(model, x, batch_size, tta, on_batch)
    return views[0] if len(views) == 1 else views.mean(axis=0)


def tflite_classifier(tflite: bytes, workdir: Path, labels: Sequence[str], name: str = "model.tflite",
                      threads: int = 2, norm: tuple[float, float] = (0.0, 1.0), tta: str = "none"
                      ) -> ImageClassifier:
    """Load converted bytes through the device's own classifier (labels embedded as in the bundle). `norm` is
    the (mean, std) the model's input means: `input_normalization` of the Keras model for an int8 conversion,
    (0, 1) for a float model that rescales raw pixels itself."""
    path = workdir / name
    path.write_bytes(embed_metadata(tflite, labels, {"mean": norm[0], "std": norm[1]}))
    return ImageClassifier(path, num_threads=threads, tta=tta)


def reference_kernel_probs(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Probabilities from TFLite's reference kernels (no XNNPACK): a second, independent int8 implementation.

    Two correct int8 implementations differ only in rounding, so where they disagree on top-1 the model's outputs
    are too close to call at int8 precision; that rate is the floor any top-1 agreement check can reach."""
    interp = tf.lite.Interpreter(
        model_content=tflite, experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = out["quantization"]
    probs = []
    for img in x:
        interp.set_tensor(inp["index"], img[None].astype(inp["dtype"]))
        interp.invoke()
        raw = interp.get_tensor(out["index"])[0].astype(np.float32)
        probs.append((raw - zero) * scale if scale else raw)
    return np.array(probs).reshape(len(x), -1)


def convert_run(
    run_dir: str | Path, out_dir: str | Path, min_agreement: float = 0.98, calibration_images: int = 200,
    flag_sensitivity: float = 0.9, name: Optional[str] = None, threads: int = 2, flag_prior: str = "train",
    tta: str = "none",
) -> dict[str, Any]:
    """Convert RUN_DIR's QAT model into a verified int8 bundle at OUT_DIR; returns the bundle's model.json."""
    try:
        run = RunDir.open(run_dir, require=(QAT_WEIGHTS,))
    except RunDirError as exc:
        raise ConvertError(str(exc)) from None
    cfg, classes, size = run.config, run.classes, run.img_size
    problem = tta_problem(tta, size)
    if problem:
        raise ConvertError(f"{run.path}: {problem}")

    t0 = time.time()
    qat = load_qat_model(cfg["arch"], len(classes), size, cfg["alpha"], str(run.path / QAT_WEIGHTS))
    calib = run.calibration(calibration_images)
    tflite = to_int8_tflite(qat, calib)
    norm = input_normalization(qat)
    convert_seconds = time.time() - t0
    log.info("converted in %.1f s: %d bytes", convert_seconds, len(tflite))

    x_va, y_va, _ = run.images("val")
    # every view once, the images as they are first: the gate compares the models on that view alone, the figures
    # below are of the views' average (what the bundle answers)
    with int32_biases(qat):  # the QAT model as the int8 model stores it: biases on their int32 grid
        ref_views = keras_view_probs(qat, x_va, tta=tta)
    ref = ref_views[0]
    with tempfile.TemporaryDirectory() as tmp:
        clf = tflite_classifier(tflite, Path(tmp), classes, threads=threads, norm=norm, tta=tta)
        ops, types = tensor_types(clf)
        if set(types) - {t.__name__ for t in INTEGER_TYPES}:
            raise ConvertError(f"converted model is not full-integer: tensor types {sorted(types)}")
        views = [clf.view_probabilities(p) for p in x_va]
        probs = np.stack([v[0] for v in views]) if views else np.zeros((0, len(classes)), np.float32)
        # what the bundle will answer: averaged over its views as the device's own classifier averages them
        averaged = np.stack([clf.average_views(v) for v in views]) if views and tta != "none" else probs
        quant = {
            "input": {"dtype": clf.input_dtype.name, "scale": clf.input_scale, "zero_point": clf.input_zero_point},
            "output": {"dtype": clf.output_dtype.name, "scale": clf.output_scale,
                       "zero_point": clf.output_zero_point},
        }
    agreement = float(np.mean(probs.argmax(1) == ref.argmax(1))) if len(y_va) else 1.0
    max_diff = float(np.abs(probs - ref).max()) if len(y_va) else 0.0
    kernels = float(np.mean(probs.argmax(1) == reference_kernel_probs(tflite, x_va).argmax(1))) if len(y_va) else 1.0
    log.info("int8 vs QAT Keras on %d validation images: top-1 agreement %.4f, max |dp| %.4f; "
             "int8 XNNPACK vs reference kernels %.4f", len(y_va), agreement, max_diff, kernels)
    if agreement < min_agreement:
        hint = ""
        if kernels < min_agreement:  # kept short: one_line() caps an error line, and the advice is its end
            hint = (f"; XNNPACK and reference int8 kernels agree on only {kernels:.1%} themselves (answers too close "
                    "to call at int8): train longer, or lower --min-agreement")
        raise ConvertError(
            f"{run.path}: int8 agrees with the QAT Keras model on {agreement:.1%} of {len(y_va)} validation images, "
            f"below --min-agreement {min_agreement:.1%}; nothing was written{hint}"
        )

    if tta != "none":
        probs, ref = averaged, ref_views.mean(axis=0)
    flag, rule = None, None
    mel = melanoma_index(classes)
    counts = {k: class_counts(v) for k, v in run.splits.items()}
    if mel is not None and np.any(y_va == mel):
        shares = flag_frequencies(classes, counts.get("train", {}), cfg.get("balance", "weights"), classes[mel],
                                  flag_prior)
        unset = FlagRule(classes[mel], 0.0, tuple(shares.items()) if shares else ())  # its scores need no threshold
        threshold = threshold_for_sensitivity(y_va == mel, unset.scores(probs, classes), flag_sensitivity)
        # rounded down, so the validation melanomas the threshold was chosen to catch stay caught
        rule = dataclasses.replace(unset, threshold=math.floor(threshold * 1e6) / 1e6)
        flag = {"label": rule.label, "threshold": rule.threshold, "rule": rule.describe(),
                "chosen_for": f"sensitivity >= {flag_sensitivity} on the validation split", "prior": flag_prior,
                **({"class_frequencies": shares} if shares else {})}
    val_metrics = classification_metrics(y_va, probs, classes, flag=rule, reference_pred=ref.argmax(1))
    spec = {
        "height": size[0], "width": size[1], "channels": 3, "color": "RGB", "layout": "NHWC", "dtype": "uint8",
        "resize": RESIZE_CENTER_CROP, "interpolation": "bilinear", "range": [0, 255], "mean": norm[0], "std": norm[1],
        "output": "probabilities", "tta": tta, "flag": flag,
    }
    meta = {
        "name": name or Path(out_dir).name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": {"arch": cfg["arch"], "alpha": cfg["alpha"], "img_size": cfg["img_size"],
                         **({"img_width": size[1]} if size[1] != size[0] else {})},
        "quantization": {
            "method": "quantization-aware training (tensorflow-model-optimization), full-integer int8",
            "full_integer": True, "ops": sorted(ops), **quant,
            "tools": {p: version(p) for p in ("tensorflow", "tf-keras", "tensorflow-model-optimization")},
            "calibration_images": int(len(calib)),
        },
        "verification": {"images": int(len(y_va)), "top1_agreement_vs_qat_keras": round(agreement, 6),
                         "top1_agreement_xnnpack_vs_reference_kernels": round(kernels, 6),
                         "max_abs_prob_diff": round(max_diff, 6), "min_agreement": min_agreement},
        "validation": val_metrics,
        "data": {"source": cfg["data"], "layout": cfg.get("extra", {}).get("layout"), "split_counts": counts,
                 "split": split_description(cfg),
                 **({"extra_train": {"source": cfg["extra_train"], "labels": cfg.get("extra_labels", {})}}
                    if cfg.get("extra_train") else {})},
        "training": {"config": cfg, "run_dir": str(run.path)},
        "intended_use": INTENDED_USE,
        "disclaimer": NOT_A_DIAGNOSIS,
    }
    # reference inputs and raw int8 outputs as the device's runtime gives them (1 thread): `device selftest`
    golden = make_golden(tflite, size[0], size[1])
    write_bundle(out_dir, tflite, classes, spec, meta, golden=golden)
    return {**meta, "flag": flag}
