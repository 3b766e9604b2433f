"""Pick a TFLite interpreter: ai-edge-litert, then tflite-runtime, then TensorFlow's tf.lite as a last resort.

    from skinedge.device.runtime import load_interpreter
    rt = load_interpreter("model.tflite", num_threads=2)
    rt.interpreter.invoke(); rt.name, rt.version
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .bundle import BundleError

log = logging.getLogger(__name__)

# (runtime name, module holding Interpreter, distribution whose version we report)
RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    # Only where neither device runtime is installed (a workstation); imported by name so the device path never
    # pulls TensorFlow in while a device runtime is present.
    ("tf.lite", "tensorflow.lite", "tensorflow"),
)


@dataclass
class Runtime:
    interpreter: Any
    name: str
    version: str


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a missing version is not worth failing for
        return "unknown"


def find_interpreter_class(prefer: Optional[str] = None) -> tuple[Any, str, str]:
    """The first importable Interpreter class, with the runtime's name and version."""
    tried = []
    for name, module, dist in RUNTIMES:
        if prefer and name != prefer:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError:
            tried.append(name)
            continue
        return mod.Interpreter, name, _version(dist)
    raise BundleError(
        "no TFLite runtime found (tried " + ", ".join(tried) + "); install one with: pip install 'skinedge[device]'"
    )


def load_interpreter(
    model_path: Union[str, os.PathLike], num_threads: int = 1, prefer: Optional[str] = None
) -> Runtime:
    """Load and allocate an interpreter for `model_path`, or raise BundleError naming the file."""
    model_path = Path(model_path)
    cls, name, version = find_interpreter_class(prefer)
    try:
        if model_path.is_dir():
            raise BundleError(f"{model_path}: is a folder, not a TFLite model")
        size = model_path.stat().st_size
        if size < 16:
            raise BundleError(f"{model_path}: not a TFLite model ({size} bytes)")
        with open(model_path, "rb") as fh:
            if fh.read(8)[4:8] != b"TFL3":
                raise BundleError(f"{model_path}: not a TFLite model (no TFL3 identifier)")
    except OSError as exc:
        raise BundleError(f"{model_path}: cannot read model ({exc.strerror or type(exc).__name__})") from None
    try:
        interpreter = cls(model_path=str(model_path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - runtimes raise ValueError, RuntimeError... for a model they reject
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{model_path}: the runtime cannot load this model ({first})") from None
    log.debug("loaded %s with %s %s, %d threads", model_path, name, version, num_threads)
    return Runtime(interpreter, name, version)
