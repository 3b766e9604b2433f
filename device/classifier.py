"""The on-device classifier: load a TFLite model and its labels once, classify frames or files.

    from skinedge.device.classifier import ImageClassifier
    clf = ImageClassifier("models/ham10000", num_threads=2, top_k=3)
    for cat in clf.classify(rgb_uint8_frame):      # or clf.classify_path("lesion.jpg")
        print(cat.label, cat.score)
    clf.flagged(clf.last_probabilities)            # melanoma flag rule of the bundle, if it has one
    clf.flag_score(clf.last_probabilities)         # the P(melanoma) the rule compares with its threshold

Works with any single-input image-classification TFLite model: uint8, int8 or float32 input (quantization read
from the input tensor; the normalisation (pixel - mean) / std from the bundle spec or `mean`/`std`), quantized
or float outputs, logits or probabilities.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from .bundle import BundleError, FlagRule, ModelSource, load_model_source, read_meta
from .constants import META_FILE
from .labels import LabelsError, check_label_count
from .preprocess import Size, load_image, preprocess, tta_problem, tta_views
from .runtime import load_interpreter

log = logging.getLogger(__name__)

# Float models with no normalisation in their metadata get the TFLite examples' convention: (x - 127.5) / 127.5.
DEFAULT_FLOAT_MEAN = 127.5
DEFAULT_FLOAT_STD = 127.5


@dataclass(frozen=True)
class Category:
    index: int
    label: str
    score: float


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# model.json sections and the JSON types they must have (None: the section may be absent or null)
_META_TYPES = {"model": (dict,), "input": (dict,), "labels": (list,), "flag": (dict, type(None)),
               "golden": (dict, type(None))}


def _check_meta(model: Path) -> None:
    """Refuse a bundle's model.json whose sections have the wrong JSON types, naming the file and the section."""
    meta_path = model / META_FILE
    if not (model.is_dir() and meta_path.is_file()):
        return
    meta = read_meta(meta_path)  # BundleError for unreadable or malformed JSON
    for key, types in _META_TYPES.items():
        if key in meta and not isinstance(meta[key], types):
            raise BundleError(f"{meta_path}: \"{key}\" must be a JSON {'object' if dict in types else 'list'}, "
                              f"not {type(meta[key]).__name__}")
    labels = meta.get("labels")
    if labels is not None and not all(isinstance(label, str) for label in labels):
        raise BundleError(f"{meta_path}: \"labels\" must be a list of class names (strings)")


def _load_source(model: Union[str, os.PathLike], labels_path, allow_modified: bool) -> ModelSource:
    """load_model_source, with every failure to read or parse the model's files reported as BundleError.

    The bundle and its metadata are untrusted files: a malformed model.json (a list where an object belongs), a
    corrupt zip appended to the model or an unreadable file must end in one line naming the file, never a
    traceback. BundleError and LabelsError pass through unchanged."""
    try:
        _check_meta(Path(model))
        return load_model_source(model, labels_path, allow_modified=allow_modified)
    except (BundleError, LabelsError):
        raise
    except OSError as exc:
        name = exc.filename or model
        raise BundleError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - see above: any other failure here is a malformed file
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise BundleError(f"{model}: malformed model metadata ({type(exc).__name__}: {reason})") from None


def _finite(value: object, name: str, path: Path) -> float:
    """A normalisation constant as a finite float, or BundleError (NaN or infinity would give NaN scores)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BundleError(f"{path}: normalisation {name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise BundleError(f"{path}: normalisation {name} must be a finite number, not {number}")
    return number


def _check_spec_matches(spec: dict, input_size: Size, source: ModelSource) -> None:
    """The input size recorded in the metadata must be the model's: a mismatch means the files do not belong
    together (a model.json from another conversion), and the preprocessing it describes would be wrong."""
    where = source.model_path.parent / META_FILE if source.meta is not None else source.model_path
    for key, actual in (("height", input_size[0]), ("width", input_size[1])):
        if key not in spec or spec[key] is None:
            continue
        recorded = spec[key]
        if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded != actual:
            raise BundleError(
                f"{where}: input {key} {recorded!r} does not match the model's input "
                f"{input_size[0]}x{input_size[1]}; the metadata belongs to another model"
            )


class ImageClassifier:
    """A TFLite image classifier with its labels, input geometry and quantization read once at load."""

    def __init__(
        self,
        model: Union[str, os.PathLike],
        labels_path: Optional[Union[str, os.PathLike]] = None,
        num_threads: int = 1,
        top_k: int = 3,
        mean: Optional[float] = None,
        std: Optional[float] = None,
        allow_modified: bool = False,
        tta: Optional[str] = None,
    ) -> None:
        self.source: ModelSource = _load_source(model, labels_path, allow_modified)
        rt = load_interpreter(self.source.model_path, num_threads=num_threads)
        self.interpreter, self.runtime, self.runtime_version = rt.interpreter, rt.name, rt.version
        self.num_threads = num_threads
        self.top_k = top_k
        path = self.source.model_path

        try:
            inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer can load and then fail here (bad names)
            raise BundleError(f"{path}: the model's tensor descriptions are unreadable "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
        if len(inputs) != 1:
            raise BundleError(f"{path}: expected a model with one image input, found {len(inputs)} inputs")
        if len(outputs) < 1:
            raise BundleError(f"{path}: model has no outputs")
        inp, out = inputs[0], outputs[0]
        shape = tuple(int(d) for d in inp["shape"])
        if len(shape) != 4 or shape[3] != 3 or shape[0] != 1:
            raise BundleError(f"{path}: input shape {list(shape)} is not an RGB image [1, height, width, 3]")
        if inp["dtype"] not in (np.uint8, np.int8, np.float32):
            raise BundleError(f"{path}: unsupported input type {np.dtype(inp['dtype']).name}")
        self.input_size: Size = (shape[1], shape[2])
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_scale, self.input_zero_point = (float(v) for v in inp["quantization"])
        self._input_index, self._output_index = inp["index"], out["index"]
        self.output_dtype = np.dtype(out["dtype"])
        self.output_scale, self.output_zero_point = (float(v) for v in out["quantization"])
        self.num_classes = int(np.prod(out["shape"]))

        spec = self.source.spec
        _check_spec_matches(spec, self.input_size, self.source)
        # The model's real-valued input is (pixel - mean) / std. Integer inputs without a spec take the pixels as
        # they are (mean 0, std 1), so their own quantization alone maps pixels to the network's range.
        floating = self.input_dtype == np.float32
        self.mean = _finite(mean if mean is not None else spec.get("mean", DEFAULT_FLOAT_MEAN if floating else 0.0),
                            "mean", path)
        self.std = _finite(std if std is not None else spec.get("std", DEFAULT_FLOAT_STD if floating else 1.0),
                           "std", path)
        if self.std == 0:
            raise BundleError(f"{path}: normalisation std must not be 0")
        if self.input_dtype == np.float32 and "mean" not in spec and mean is None:
            log.info("%s: float input with no normalisation in its metadata; using (x - %g) / %g",
                     path, self.mean, self.std)
        # Raw uint8 pixels go straight in when normalising and quantizing them gives them back: our bundles fold
        # the rescale into the input quantization (scale 1/std, zero point mean), so pixel p already means
        # (p - mean) / std. The tolerance covers the float32 rounding of the stored scale.
        self._identity_input = (self.input_dtype == np.uint8 and self.input_scale > 0
                                and abs(self.std * self.input_scale - 1.0) < 1e-6
                                and abs(self.mean - self.input_zero_point) < 1e-6)
        self.output_is_probabilities: Optional[bool] = {"probabilities": True, "logits": False}.get(
            str(spec.get("output", "")) or "", None
        )

        # test-time augmentation: the bundle's (chosen with its flag threshold, on validation), unless overridden
        self.tta: str = tta if tta is not None else spec.get("tta", "none")
        problem = tta_problem(self.tta, self.input_size)
        if problem:
            raise BundleError(f"{path}: {problem}")

        labels = self.source.labels
        if labels is None:
            labels = [f"class_{i}" for i in range(self.num_classes)]
            log.warning("%s: no labels in the model or bundle; pass --labels FILE for class names", path)
        check_label_count(labels, self.num_classes, str(self.source.model_path))
        self.labels: list[str] = list(labels)
        self.flag_rule: Optional[FlagRule] = self.source.flag
        self.last_probabilities: np.ndarray = np.zeros(self.num_classes, np.float32)
        self.last_timing: dict[str, float] = {}

    # -- stages ---------------------------------------------------------------------------------------------

    def _quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        if self._identity_input:
            return pixels
        # one float32 buffer, reused for every frame (set_tensor copies it); the same float32 arithmetic as
        # x = (pixels.astype(float32) - mean) / std, then round(x / scale + zero_point) for integer inputs,
        # without per-frame temporaries
        buf = getattr(self, "_input_buffer", None)
        if buf is None or buf.shape != pixels.shape:
            buf = self._input_buffer = np.empty(pixels.shape, np.float32)
        np.copyto(buf, pixels, casting="unsafe")
        if self.input_dtype == np.float32:
            np.subtract(buf, np.float32(self.mean), out=buf)
            np.divide(buf, np.float32(self.std), out=buf)
            return buf
        info = np.iinfo(self.input_dtype)
        if self.mean or self.std != 1.0:
            np.subtract(buf, np.float32(self.mean), out=buf)
            np.divide(buf, np.float32(self.std), out=buf)
        if self.input_scale:
            np.divide(buf, np.float32(self.input_scale), out=buf)
            np.add(buf, np.float32(self.input_zero_point), out=buf)
            np.round(buf, out=buf)
        np.clip(buf, info.min, info.max, out=buf)
        return buf.astype(self.input_dtype)

    def _probabilities(self, raw: np.ndarray) -> np.ndarray:
        x = raw.reshape(-1).astype(np.float32)
        if self.output_dtype != np.float32 and self.output_scale:
            x = (x - self.output_zero_point) * self.output_scale
        if self.output_is_probabilities is None:
            # decide once, from the first output: probabilities are non-negative and sum to ~1
            self.output_is_probabilities = bool(x.min() >= 0 and abs(float(x.sum()) - 1.0) < 0.05)
        return x if self.output_is_probabilities else _softmax(x)

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for preprocessed pixels (uint8 array of the model's input size)."""
        tensor = self._quantize_input(pixels)
        self.interpreter.set_tensor(self._input_index, tensor.reshape(1, *tensor.shape[-3:]))
        self.interpreter.invoke()
        return self._probabilities(self.interpreter.get_tensor(self._output_index))

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for preprocessed pixels, averaged over the views of the classifier's test-time
        augmentation (one invoke per view; `invoke` alone for "none")."""
        views = self.view_probabilities(pixels)
        return views[0] if len(views) == 1 else self.average_views(views)

    def view_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """The int8 model's probabilities for each view of test-time augmentation (views x classes), the pixels as
        they are first: the model alone and the averaged answer from the same invokes (convert checks both)."""
        return np.stack([self.invoke(v) for v in tta_views(pixels, self.tta)])

    @staticmethod
    def average_views(views: np.ndarray) -> np.ndarray:
        """What `probabilities` answers for `view_probabilities`: their mean, in float32."""
        return np.mean(views, axis=0, dtype=np.float32)

    def top(self, probabilities: np.ndarray, k: Optional[int] = None) -> list[Category]:
        k = min(k or self.top_k, len(probabilities))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [Category(int(i), self.labels[i], float(probabilities[i])) for i in order]

    def flag_score(self, probabilities: np.ndarray) -> Optional[float]:
        """The P(melanoma) the bundle's flag rule compares with its threshold; None when the bundle has no rule."""
        if self.flag_rule is None:
            return None
        return float(self.flag_rule.scores(probabilities, self.labels))

    def flagged(self, probabilities: np.ndarray) -> Optional[bool]:
        """The bundle's flag rule applied to class probabilities; None when the bundle has no rule."""
        score = self.flag_score(probabilities)
        return None if score is None else score >= self.flag_rule.threshold

    # -- public API -----------------------------------------------------------------------------------------

    def classify(self, frame: Union[np.ndarray, Image.Image], top_k: Optional[int] = None) -> list[Category]:
        """Top-k categories for an RGB frame (uint8 array H x W x 3, any size) or a Pillow image."""
        t0 = time.perf_counter()
        pixels = preprocess(frame, self.input_size)
        t1 = time.perf_counter()
        self.last_probabilities = self.probabilities(pixels)
        t2 = time.perf_counter()
        result = self.top(self.last_probabilities, top_k)
        t3 = time.perf_counter()
        self.last_timing = {
            "preprocess_ms": (t1 - t0) * 1e3, "invoke_ms": (t2 - t1) * 1e3, "postprocess_ms": (t3 - t2) * 1e3,
        }
        return result

    def classify_path(self, path: Union[str, os.PathLike], top_k: Optional[int] = None) -> list[Category]:
        """Top-k categories for an image file; raises ImageError naming the file if it cannot be read."""
        t0 = time.perf_counter()
        image = load_image(Path(path), draft_size=self.input_size)
        load_ms = (time.perf_counter() - t0) * 1e3
        result = self.classify(image, top_k)
        self.last_timing = {"load_ms": load_ms, **self.last_timing}
        return result

    def predict_batch(self, pixels: Sequence[np.ndarray], tta: bool = True) -> np.ndarray:
        """Probabilities for many preprocessed images (N x classes), for evaluation on the workstation; with the
        classifier's test-time augmentation unless `tta` is False (one invoke per image: the int8 model alone)."""
        predict = self.probabilities if tta else self.invoke
        return np.stack([predict(p) for p in pixels]) if len(pixels) else np.zeros((0, self.num_classes))
