"""Golden outputs: a few synthetic reference images and the raw outputs the model gave for them at conversion.

    from skinedge.device.golden import golden_inputs, make_golden, check_golden
    golden = make_golden("model.tflite", 32, 32)          # at conversion: Golden(inputs, outputs, info)
    result = check_golden(interpreter, golden.inputs, golden.outputs)   # on the device
    result.ok, result.detail

The inputs are a pure function of (height, width, n, seed), built from a hand-written integer hash rather than
numpy's random Generator (whose streams may change between numpy releases), so a device with another numpy can
regenerate them and confirm that `golden.npz` holds what the recipe in model.json says.

The check is "same runtime family, bit exact": outputs are recorded with `runtime.load_interpreter` (ai-edge-litert
where installed, default op resolver, so XNNPACK where it applies) at one thread, and the device must reproduce the
raw output tensor exactly with the same settings. Kernel sets do round differently: on the tiny test model the
reference kernels (BUILTIN_REF) are up to 13 int8 steps away from the default XNNPACK path, while 1, 2 and 4
threads and TensorFlow 2.21's tf.lite give identical bytes. One thread is used anyway, so a multi-threaded
reduction order can never be the cause of a mismatch; the mismatch message names the runtime each side used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .bundle import Golden
from .runtime import Runtime, load_interpreter

log = logging.getLogger(__name__)

GOLDEN_KINDS = ("noise", "gradient", "solid_grey", "checkerboard", "solid_colour", "smooth_noise")
GOLDEN_THREADS = 1  # record and check at one thread: the same kernels, the same accumulation order
GENERATOR = "skinedge.device.golden.golden_inputs"

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _hash_bytes(seed: int, stream: int, count: int) -> np.ndarray:
    """`count` pseudo-random bytes from (seed, stream): splitmix64 over a counter, stable on any numpy."""
    x = np.arange(count, dtype=np.uint64) + np.uint64((seed * 0x9E3779B1 + stream * 0x85EBCA77) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):  # uint64 arithmetic is meant to wrap
        x = x * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return ((x & _M64) >> np.uint64(56)).astype(np.uint8)


def _golden_image(kind: str, height: int, width: int, seed: int, index: int) -> np.ndarray:
    rows = np.arange(height, dtype=np.int64)[:, None]
    cols = np.arange(width, dtype=np.int64)[None, :]
    if kind == "noise":  # every pixel value, no structure: exercises the full input range
        return _hash_bytes(seed, index, height * width * 3).reshape(height, width, 3)
    if kind == "gradient":  # R along x, G along y, B along the diagonal
        r = cols * 255 // max(width - 1, 1) + 0 * rows
        g = rows * 255 // max(height - 1, 1) + 0 * cols
        b = (r + g) // 2
        return np.stack([r, g, b], axis=-1).astype(np.uint8)
    if kind == "solid_grey":
        return np.full((height, width, 3), 128, np.uint8)
    if kind == "checkerboard":  # the extremes 0 and 255 side by side
        cell = max(1, min(height, width) // 8)
        on = ((rows // cell + cols // cell) % 2).astype(bool)
        return np.where(on[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=-1).astype(np.uint8)
    if kind == "solid_colour":
        colour = _hash_bytes(seed, index, 3)
        return np.broadcast_to(colour, (height, width, 3)).astype(np.uint8)
    if kind == "smooth_noise":  # coarse noise blown up by repetition: large blobs, like a lesion on skin
        ch, cw = max(1, height // 8), max(1, width // 8)
        coarse = _hash_bytes(seed, index, ch * cw * 3).reshape(ch, cw, 3)
        ys, xs = rows[:, 0] * ch // height, cols[0] * cw // width
        return coarse[ys][:, xs]
    raise ValueError(f"unknown golden input kind {kind!r}")


def golden_inputs(height: int, width: int, n: int = 6, seed: int = 0) -> np.ndarray:
    """N x H x W x 3 uint8 reference images: noise, gradient, grey, checkerboard, a colour, smooth noise (cycled).

    A pure function of its arguments: the same call gives the same bytes on every machine."""
    if height < 1 or width < 1 or n < 1:
        raise ValueError(f"golden_inputs needs positive height, width and n (got {height}, {width}, {n})")
    images = [_golden_image(GOLDEN_KINDS[i % len(GOLDEN_KINDS)], height, width, seed, i) for i in range(n)]
    return np.ascontiguousarray(np.stack(images), dtype=np.uint8)


# -- recording and checking -----------------------------------------------------------------------------------


def _invoker(target: Any) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """(interpreter, pixels -> input tensor) for an ImageClassifier, a runtime.Runtime or a bare Interpreter.

    A classifier brings its own input quantization (int8 or float models); a bare interpreter must take uint8."""
    if hasattr(target, "interpreter") and hasattr(target, "_quantize_input"):  # ImageClassifier
        return target.interpreter, lambda px: target._quantize_input(px)  # noqa: SLF001 - same package
    interp = target.interpreter if isinstance(target, Runtime) else target
    dtype = np.dtype(interp.get_input_details()[0]["dtype"])
    if dtype != np.uint8:
        raise ValueError(f"a bare interpreter needs uint8 input for golden outputs (model takes {dtype.name}); "
                         "pass an ImageClassifier so its input quantization is used")
    return interp, lambda px: px[None]


def record_golden(target: Any, inputs: np.ndarray) -> np.ndarray:
    """The raw first output tensor (its own dtype, no dequantization) for each image: N x output shape[1:]."""
    interp, to_tensor = _invoker(target)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for pixels in inputs:
        interp.set_tensor(inp["index"], np.ascontiguousarray(to_tensor(pixels)).reshape(inp["shape"]))
        interp.invoke()
        results.append(np.array(interp.get_tensor(out["index"])[0], copy=True))
    return np.stack(results)


@dataclass
class GoldenResult:
    ok: bool
    detail: str
    mismatched: list[int] = field(default_factory=list)  # indices of images whose outputs differ
    max_abs_diff: float = 0.0


def check_golden(target: Any, inputs: np.ndarray, expected: np.ndarray) -> GoldenResult:
    """Run the golden inputs and compare the raw outputs with `expected` bit for bit (same dtype, same values)."""
    actual = record_golden(target, inputs)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return GoldenResult(False, f"output is {actual.dtype.name}{list(actual.shape)}, golden has "
                                   f"{expected.dtype.name}{list(expected.shape)}")
    same = [bool(np.array_equal(a, e)) for a, e in zip(actual, expected)]
    bad = [i for i, s in enumerate(same) if not s]
    diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) if bad else 0.0
    if bad:
        return GoldenResult(False, f"{len(bad)} of {len(same)} outputs differ (images {bad}, max |diff| {diff:g})",
                            bad, diff)
    return GoldenResult(True, f"{len(same)} of {len(same)} outputs bit-exact", [], 0.0)


def make_golden(
    model: Union[bytes, str, os.PathLike], height: int, width: int, n: int = 6, seed: int = 0,
) -> Golden:
    """Golden inputs and raw outputs of a uint8-input model (bytes or path), recorded as the device runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model) if not isinstance(model, (bytes, bytearray)) else Path(tmp) / "model.tflite"
        if isinstance(model, (bytes, bytearray)):
            path.write_bytes(bytes(model))
        rt = load_interpreter(path, num_threads=GOLDEN_THREADS)
        inputs = golden_inputs(height, width, n, seed)
        outputs = record_golden(rt, inputs)
    info = {
        "generator": GENERATOR, "kinds": [GOLDEN_KINDS[i % len(GOLDEN_KINDS)] for i in range(n)],
        "count": n, "seed": seed, "height": height, "width": width,
        "output_dtype": outputs.dtype.name, "output_shape": list(outputs.shape[1:]),
        "runtime": rt.name, "runtime_version": rt.version, "threads": GOLDEN_THREADS, "op_resolver": "default",
        "compare": "same runtime family, bit exact",
    }
    log.info("recorded %d golden outputs with %s %s", n, rt.name, rt.version)
    return Golden(inputs=inputs, outputs=outputs, info=info)


def expected_inputs(info: dict[str, Any]) -> Optional[np.ndarray]:
    """Regenerate the inputs from a model.json golden entry, or None when it names another generator."""
    if info.get("generator") != GENERATOR:
        return None
    return golden_inputs(int(info["height"]), int(info["width"]), int(info["count"]), int(info["seed"]))
