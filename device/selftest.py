"""`skinedge device selftest`: is this device running this model as it was converted?

    from skinedge.device.selftest import selftest, exit_code
    checks = selftest("models/ham10000")
    for c in checks: print(c.status, c.name, c.detail)
    sys.exit(exit_code(checks))

Checks, in order (each PASS, FAIL or SKIP where it does not apply, e.g. no model.json for a bare .tflite):
runtime, model_loads, model_sha256, input_spec, output_spec, golden_file, golden_outputs. Exit code 2 when the
runtime is missing or the model cannot be opened as a single-input image classifier (as `classify` would), 1 when
any other check fails, else 0.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np

from .bundle import BundleError, ModelSource, load_model_source, read_golden, sha256_file
from .golden import GOLDEN_THREADS, check_golden, expected_inputs
from .labels import LabelsError
from .runtime import Runtime, find_interpreter_class, load_interpreter

log = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
CHECKS = ("runtime", "model_loads", "model_sha256", "input_spec", "output_spec", "golden_file", "golden_outputs")
# a failure of one of these means nothing else could be checked: exit 2, like `classify` on an unusable model
FATAL = ("runtime", "model_loads")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def exit_code(checks: list[Check]) -> int:
    """2 when the model could not be opened at all, 1 when any check failed, 0 otherwise."""
    if any(c.status == FAIL and c.name in FATAL for c in checks):
        return 2
    return 1 if any(c.status == FAIL for c in checks) else 0


def _describe(detail: dict[str, Any]) -> str:
    return f"{np.dtype(detail['dtype']).name}{[int(d) for d in detail['shape']]}"


def _open(model: Union[str, os.PathLike], labels_path: Optional[Union[str, os.PathLike]]
          ) -> tuple[Check, Optional[ModelSource], Optional[Runtime]]:
    """Load the source (sha256 mismatches are a later check, not a load failure) and an interpreter at the golden
    thread count, and refuse anything `ImageClassifier` would refuse for its shape."""
    t0 = time.perf_counter()
    try:
        source = load_model_source(model, labels_path, allow_modified=True)
        rt = load_interpreter(source.model_path, num_threads=GOLDEN_THREADS)
    except (BundleError, LabelsError) as exc:
        return Check("model_loads", FAIL, str(exc)), None, None
    ms = (time.perf_counter() - t0) * 1e3
    inputs, outputs = rt.interpreter.get_input_details(), rt.interpreter.get_output_details()
    path = source.model_path
    if len(inputs) != 1:
        return Check("model_loads", FAIL, f"{path}: expected one image input, found {len(inputs)} inputs"), None, None
    shape = [int(d) for d in inputs[0]["shape"]]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        return Check("model_loads", FAIL, f"{path}: input shape {shape} is not an RGB image [1, H, W, 3]"), None, None
    if np.dtype(inputs[0]["dtype"]) not in (np.uint8, np.int8, np.float32):
        return Check("model_loads", FAIL, f"{path}: unsupported input type {_describe(inputs[0])}"), None, None
    if not outputs:
        return Check("model_loads", FAIL, f"{path}: model has no outputs"), None, None
    detail = (f"{path} ({path.stat().st_size} bytes) in {ms:.1f} ms: input {_describe(inputs[0])}, "
              f"output {_describe(outputs[0])}")
    return Check("model_loads", PASS, detail), source, rt


def check_sha256(source: ModelSource) -> Check:
    expected = ((source.meta or {}).get("model") or {}).get("sha256")
    if source.meta is None:
        return Check("model_sha256", SKIP, "no model.json (a bare .tflite): nothing to compare with")
    if not expected:
        return Check("model_sha256", SKIP, "model.json records no sha256")
    if expected != source.sha256:
        return Check("model_sha256", FAIL, f"sha256 {source.sha256[:12]}… does not match model.json "
                                          f"({str(expected)[:12]}…): the model was modified or corrupted")
    return Check("model_sha256", PASS, f"{source.sha256[:16]}… matches model.json")


def _quant_problems(where: str, recorded: Any, detail: dict[str, Any]) -> list[str]:
    """Differences between a model.json quantization entry {dtype, scale, zero_point} and a tensor."""
    if not isinstance(recorded, dict):
        return []
    scale, zero_point = (float(v) for v in detail["quantization"])
    actual = {"dtype": np.dtype(detail["dtype"]).name, "scale": scale, "zero_point": zero_point}
    problems = []
    for key, value in actual.items():
        if key not in recorded:
            continue
        want = recorded[key]
        same = (want == value) if key == "dtype" else math.isclose(float(want), value, rel_tol=1e-6, abs_tol=1e-12)
        if not same:
            problems.append(f"{where} {key} {want} in model.json, {value} in the model")
    return problems


def check_input_spec(source: ModelSource, rt: Runtime) -> Check:
    detail = rt.interpreter.get_input_details()[0]
    _, height, width, channels = (int(d) for d in detail["shape"])
    actual = {"height": height, "width": width, "channels": channels, "dtype": np.dtype(detail["dtype"]).name}
    compared = [k for k in actual if k in source.spec]
    problems = [f"input {k} {source.spec[k]} in the metadata, {actual[k]} in the model"
                for k in compared if str(source.spec[k]) != str(actual[k])]
    recorded = ((source.meta or {}).get("quantization") or {}).get("input")
    problems += _quant_problems("input", recorded, detail)
    if not compared and not isinstance(recorded, dict):
        return Check("input_spec", SKIP, f"no input spec in the metadata; the model takes {_describe(detail)}")
    if problems:
        return Check("input_spec", FAIL, "; ".join(problems))
    scale, zero_point = detail["quantization"]
    compared += ["quantization"] if isinstance(recorded, dict) else []
    return Check("input_spec", PASS, f"{_describe(detail)} (scale {scale:g}, zero point {zero_point}) matches the "
                                     f"metadata's {', '.join(compared)}")


def check_output_spec(source: ModelSource, rt: Runtime) -> Check:
    detail = rt.interpreter.get_output_details()[0]
    classes = int(np.prod(detail["shape"]))
    problems, compared = [], []
    if source.labels is not None:
        compared.append(f"{len(source.labels)} labels")
        if len(source.labels) != classes:
            problems.append(f"{len(source.labels)} labels for a model with {classes} outputs")
    recorded = ((source.meta or {}).get("quantization") or {}).get("output")
    if isinstance(recorded, dict):
        compared.append("quantization")
        problems += _quant_problems("output", recorded, detail)
    if not compared:
        return Check("output_spec", SKIP, f"no labels or output spec to compare ({classes} outputs; try --labels)")
    if problems:
        return Check("output_spec", FAIL, "; ".join(problems))
    return Check("output_spec", PASS, f"{_describe(detail)} matches {' and '.join(compared)}")


def check_golden_data(source: ModelSource, rt: Runtime, mean: Optional[float] = None, std: Optional[float] = None
                      ) -> list[Check]:
    """golden_file (present, sha256, readable, inputs as the recipe makes them) and golden_outputs (bit-exact)."""
    info = (source.meta or {}).get("golden")
    path = source.golden_path
    if path is None:
        if isinstance(info, dict):
            return [Check("golden_file", FAIL, f"model.json records {info.get('file')} but it is missing"),
                    Check("golden_outputs", SKIP, "no golden file")]
        why = "a bare .tflite" if source.meta is None else "a bundle made before golden outputs"
        return [Check("golden_file", SKIP, f"no golden.npz ({why})"), Check("golden_outputs", SKIP, "no golden file")]
    problems = []
    digest = sha256_file(path)
    if isinstance(info, dict) and info.get("sha256") and info["sha256"] != digest:
        problems.append(f"sha256 {digest[:12]}… does not match model.json ({str(info['sha256'])[:12]}…)")
    try:
        inputs, outputs = read_golden(path)
    except BundleError as exc:
        return [Check("golden_file", FAIL, "; ".join(problems + [str(exc)])),
                Check("golden_outputs", SKIP, "golden file unreadable")]
    want_hw = [int(d) for d in rt.interpreter.get_input_details()[0]["shape"][1:3]]
    if list(inputs.shape[1:3]) != want_hw:
        problems.append(f"golden inputs are {list(inputs.shape[1:3])}, the model takes {want_hw}")
    regenerated = expected_inputs(info) if isinstance(info, dict) else None
    if regenerated is not None and not np.array_equal(regenerated, inputs):
        problems.append("golden inputs are not what the recipe in model.json makes")
    recipe = f"{len(inputs)} inputs, seed {info.get('seed')}" if isinstance(info, dict) else f"{len(inputs)} inputs"
    file_check = Check("golden_file", FAIL if problems else PASS, "; ".join(problems) or f"{path.name}: {recipe}")
    if list(inputs.shape[1:3]) != want_hw:
        return [file_check, Check("golden_outputs", SKIP, "golden inputs do not fit the model")]
    target: Any = rt
    if np.dtype(rt.interpreter.get_input_details()[0]["dtype"]) != np.uint8:
        from .classifier import ImageClassifier  # only int8/float models need the classifier's input quantization

        target = ImageClassifier(source.model_path, num_threads=GOLDEN_THREADS, mean=mean, std=std,
                                 allow_modified=True)
    result = check_golden(target, inputs, outputs)
    recorded = f"{info.get('runtime')} {info.get('runtime_version')}" if isinstance(info, dict) else "unknown"
    here = f"{rt.name} {rt.version}"
    detail = f"{result.detail} ({here}, {GOLDEN_THREADS} thread" + (
        f"; recorded with {recorded})" if recorded != here else ")")
    return [file_check, Check("golden_outputs", PASS if result.ok else FAIL, detail)]


def selftest(model: Union[str, os.PathLike], labels_path: Optional[Union[str, os.PathLike]] = None,
             mean: Optional[float] = None, std: Optional[float] = None) -> list[Check]:
    """Every check of MODEL (a bundle folder or a .tflite); later checks are SKIP when the model did not load."""
    try:
        _, name, version = find_interpreter_class()
        checks = [Check("runtime", PASS, f"{name} {version}")]
    except BundleError as exc:
        checks = [Check("runtime", FAIL, str(exc))]
    else:
        opened, source, rt = _open(model, labels_path)
        checks.append(opened)
        if source is not None and rt is not None:
            checks += [check_sha256(source), check_input_spec(source, rt), check_output_spec(source, rt)]
            try:
                checks += check_golden_data(source, rt, mean, std)
            except (BundleError, LabelsError, ValueError, OSError) as exc:
                checks += [Check("golden_outputs", FAIL, f"golden check failed to run: {exc}")]
    done = {c.name for c in checks}
    why = "not reached" if any(c.name == "model_loads" and c.status == PASS for c in checks) else "model did not load"
    checks += [Check(name, SKIP, why) for name in CHECKS if name not in done]
    checks.sort(key=lambda c: CHECKS.index(c.name))
    for c in checks:
        log.debug("%s %s: %s", c.status, c.name, c.detail)
    return checks
