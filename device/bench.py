"""`skinedge device bench`: latency, throughput, memory and cold start of a model on this device.

    from skinedge.device.bench import bench
    report = bench("models/ham10000", threads=2, frames=200, warmup=10)
    report["end_to_end_ms"]["p50"], report["fps"], report["rss_mb"], report["cold_start_ms"]

Each timed frame is a 640x480 RGB uint8 array (a camera frame) through `ImageClassifier.classify`: preprocessing
(centre crop, resize, quantization) and interpreter invoke, timed separately and end to end. Latencies are
reported as {"p50", "p90", "p99", "mean"} in milliseconds (numpy's linear-interpolation percentiles).

Cold start is measured in a fresh process, as a user meets it: the wall time from just before spawning
`python -m skinedge device classify MODEL frame.png --json` to its first output line (Python start, imports, model
load, image decode, first inference). `rss_mb` is this process's peak resident set (getrusage ru_maxrss) after
the timed frames: Python, numpy, Pillow and the interpreter together, which is what a device must have free.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from .classifier import ImageClassifier
from .golden import golden_inputs

log = logging.getLogger(__name__)

FRAME_HEIGHT, FRAME_WIDTH = 480, 640
COLD_START_METHOD = (
    "fresh process: spawn of `python -m skinedge device classify MODEL frame.png --json` to its first output line"
)
COLD_START_TIMEOUT_S = 300.0  # a first run on a Pi SD card can be slow; beyond this something is wrong


def bench_frame(height: int = FRAME_HEIGHT, width: int = FRAME_WIDTH) -> np.ndarray:
    """A deterministic camera-sized RGB uint8 frame with image-like blobs (the golden "smooth_noise" picture)."""
    return golden_inputs(height, width, n=6, seed=1)[5]


def percentiles(values_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99 and mean of latencies in ms, rounded to microseconds."""
    x = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(x.mean()), 3)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def measure_cold_start(model: Union[str, os.PathLike], image: Union[str, os.PathLike],
                       extra_args: tuple[str, ...] = (), timeout_s: float = COLD_START_TIMEOUT_S) -> Optional[float]:
    """Milliseconds from spawning `skinedge device classify` in a fresh interpreter to its first output line,
    or None (logged) when it fails."""
    cmd = [sys.executable, "-m", "skinedge", "device", "classify", str(model), str(image), "--json", *extra_args]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the result line: the moment a user would see an answer
            elapsed = (time.perf_counter() - t0) * 1e3
            proc.stdout.read()
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log.warning("cold start: classify did not finish within %.0f s", timeout_s)
            return None
        if code != 0 or not first.strip():
            err.seek(0)
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            log.warning("cold start: classify exited %d (%s)", code, tail[0])
            return None
    return round(elapsed, 3)


def bench(
    model: Union[str, os.PathLike], threads: int = 1, frames: int = 100, warmup: int = 10,
    labels_path: Optional[Union[str, os.PathLike]] = None, mean: Optional[float] = None, std: Optional[float] = None,
    allow_modified: bool = False, cold_start: bool = True,
) -> dict[str, Any]:
    """Benchmark MODEL (bundle folder or .tflite); returns the report `device bench --json` prints."""
    if threads < 1 or frames < 1 or warmup < 0:
        raise ValueError(f"need threads >= 1, frames >= 1, warmup >= 0 (got {threads}, {frames}, {warmup})")
    clf = ImageClassifier(model, labels_path=labels_path, num_threads=threads, top_k=1, mean=mean, std=std,
                          allow_modified=allow_modified)
    frame = bench_frame()
    for _ in range(warmup):  # first invokes allocate and pack weights (XNNPACK): not steady-state latency
        clf.classify(frame)
    invoke, prep, e2e = [], [], []
    start = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        clf.classify(frame)
        e2e.append((time.perf_counter() - t0) * 1e3)
        invoke.append(clf.last_timing["invoke_ms"])
        prep.append(clf.last_timing["preprocess_ms"])
    total_s = time.perf_counter() - start
    rss = peak_rss_mb()  # before the cold-start child: its memory is not ours

    cold = None
    if cold_start:
        extra: list[str] = []
        for flag, value in (("--labels", labels_path), ("--mean", mean), ("--std", std)):
            if value is not None:
                extra += [flag, str(value)]
        if allow_modified:
            extra.append("--allow-modified")
        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "frame.png"
            Image.fromarray(frame).save(image)
            cold = measure_cold_start(model, image, tuple(extra))

    path = clf.source.model_path
    report = {
        "model": str(path), "model_bytes": path.stat().st_size,
        "runtime": clf.runtime, "runtime_version": clf.runtime_version, "threads": threads,
        "frames": frames, "warmup": warmup, "frame_shape": list(frame.shape),
        "input": {"shape": [1, *clf.input_size, 3], "dtype": clf.input_dtype.name},
        "invoke_ms": percentiles(invoke), "preprocess_ms": percentiles(prep), "end_to_end_ms": percentiles(e2e),
        "fps": round(frames / total_s, 2) if total_s > 0 else None,
        "rss_mb": rss, "cold_start_ms": cold, "cold_start_method": COLD_START_METHOD if cold_start else None,
    }
    log.debug("bench %s: %s", path, report)
    return report
