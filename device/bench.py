"""`skinedge device bench`: latency, throughput, memory and cold start of a model on this device.

    from skinedge.device.bench import bench, sweep
    report = bench("models/ham10000", threads=2, frames=200, warmup=10)
    report["end_to_end_ms"]["p50"], report["fps"], report["rss_mb"], report["cold_start_ms"]
    python -m skinedge.device.bench int8.tflite --compare float32.tflite --threads 1,2,4    # Markdown tables

Each timed frame is a 640x480 RGB uint8 array (a camera frame) through `ImageClassifier.classify`: preprocessing
and invoke, timed separately and end to end; latencies are {"p50", "p90", "p99", "mean"} in ms. `sweep` adds how
close the runner is to the hardware: the bare `interpreter.invoke()` (input already set), timed in blocks that
alternate with end-to-end blocks so load from other processes hits both alike, and `overhead` = end-to-end p50 /
bare invoke p50, per model and thread count, with speed and size ratios between models (int8 against float32).

Cold start is measured in a fresh process, as a user meets it: the wall time from just before spawning
`python -m skinedge device classify MODEL frame.png --json` to its first output line (Python start, imports, model
load, image decode, first inference). `rss_mb` is this process's peak resident set (getrusage ru_maxrss) after
the timed frames; `cold_start` also gives the peak resident set of the `device classify` process itself.
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
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .classifier import ImageClassifier
from .constants import TTA_VIEWS
from .golden import _golden_image

log = logging.getLogger(__name__)

FRAME_HEIGHT, FRAME_WIDTH = 480, 640
COLD_START_METHOD = (
    "fresh process: spawn of `python -m skinedge device classify MODEL frame.png --json` to its first output line"
)
COLD_START_TIMEOUT_S = 300.0  # a first run on a Pi SD card can be slow; beyond this something is wrong
PathLike = Union[str, os.PathLike]


def bench_frame(height: int = FRAME_HEIGHT, width: int = FRAME_WIDTH) -> np.ndarray:
    """A deterministic camera-sized RGB uint8 frame with image-like blobs: the golden "smooth_noise" picture,
    `golden_inputs(height, width, n=6, seed=1)[5]`, built alone (the other five would cost 30 MB of peak RSS)."""
    return np.ascontiguousarray(_golden_image("smooth_noise", height, width, 1, 5), dtype=np.uint8)


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 and mean of latencies in ms, rounded to microseconds."""
    x = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(x.mean()), 3)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


# `python -m skinedge` through runpy, with an atexit hook that reports the process's own peak RSS (VmHWM of its
# address space: ru_maxrss would include this parent's memory, inherited across fork and exec)
_CHILD = ("import atexit, os, runpy, sys\n"
          "atexit.register(lambda: os.path.exists('/proc/self/status') and sys.stderr.write(''.join(\n"
          "    '\\nSKINEDGE_' + ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))))\n"
          "runpy.run_module('skinedge', run_name='__main__', alter_sys=True)\n")


def cold_start(model: PathLike, image: PathLike, extra_args: Sequence[str] = (),
               timeout_s: float = COLD_START_TIMEOUT_S) -> tuple[Optional[float], Optional[float]]:
    """(milliseconds from spawning `skinedge device classify` to its first output line, peak RSS in MiB of that
    process where /proc tells it, else None), or (None, None), logged, when it fails."""
    cmd = [sys.executable, "-c", _CHILD, "device", "classify", str(model), str(image), "--json", *extra_args]
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
            return None, None
        err.seek(0)
        lines = err.read().decode("utf-8", "replace").strip().splitlines()
        if code != 0 or not first.strip():
            tail = [ln for ln in lines if ln.strip() and not ln.startswith("SKINEDGE_")][-1:] or ["no output"]
            log.warning("cold start: classify exited %d (%s)", code, tail[0])
            return None, None
    hwm = [int(ln.split()[1]) for ln in lines if ln.startswith("SKINEDGE_VmHWM:")]
    return round(elapsed, 3), (round(hwm[-1] / 1024, 1) if hwm else None)


def measure_cold_start(model: PathLike, image: PathLike, extra_args: tuple[str, ...] = (),
                       timeout_s: float = COLD_START_TIMEOUT_S) -> Optional[float]:
    """The milliseconds of `cold_start` alone, or None (logged) when it fails."""
    return cold_start(model, image, extra_args, timeout_s)[0]


def _time_classify(clf: ImageClassifier, frame: np.ndarray, n: int, invoke: list[float], prep: list[float],
                   e2e: list[float]) -> None:
    """Classify `frame` n times, appending end-to-end ms and the classifier's own invoke/preprocess split."""
    for _ in range(n):
        t0 = time.perf_counter()
        clf.classify(frame)
        e2e.append((time.perf_counter() - t0) * 1e3)
        invoke.append(clf.last_timing["invoke_ms"])
        prep.append(clf.last_timing["preprocess_ms"])


def bench(
    model: PathLike, threads: int = 1, frames: int = 100, warmup: int = 10,
    labels_path: Optional[PathLike] = None, mean: Optional[float] = None, std: Optional[float] = None,
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
    _time_classify(clf, frame, frames, invoke, prep, e2e)
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


def overhead(clf: ImageClassifier, frame: np.ndarray, frames: int = 200, warmup: int = 10,
             block: int = 10) -> dict[str, Any]:
    """Bare `interpreter.invoke()` (input set once) against `classify(frame)`, timed in alternating blocks of
    `block` frames; `overhead` is end-to-end p50 / (views x bare invoke p50), where `views` is the number of
    inferences the classifier's test-time augmentation makes per frame (1.0: the runner adds nothing to the model)."""
    if frames < 1 or warmup < 0 or block < 1:
        raise ValueError(f"need frames >= 1, warmup >= 0, block >= 1 (got {frames}, {warmup}, {block})")
    for _ in range(max(warmup, 1)):
        clf.classify(frame)  # leaves the preprocessed frame in the input tensor for the bare invokes
    bare, invoke, prep, e2e = [], [], [], []
    while len(e2e) < frames:
        n = min(block, frames - len(e2e))
        for _ in range(n):
            t0 = time.perf_counter()
            clf.interpreter.invoke()
            bare.append((time.perf_counter() - t0) * 1e3)
        _time_classify(clf, frame, n, invoke, prep, e2e)
    out = {"bare_invoke_ms": percentiles(bare), "invoke_ms": percentiles(invoke), "preprocess_ms": percentiles(prep),
           "end_to_end_ms": percentiles(e2e), "fps": round(1e3 * frames / sum(e2e), 1)}
    out["views"] = views = len(TTA_VIEWS[clf.tta])
    out["overhead"] = round(out["end_to_end_ms"]["p50"] / (views * out["bare_invoke_ms"]["p50"]), 3)
    return out


def sweep(models: Sequence[PathLike], threads: Sequence[int] = (1, 2, 4), frames: int = 200, warmup: int = 10,
          allow_modified: bool = False) -> dict[str, Any]:
    """`overhead` for every model at every thread count (models alternate at each count, so that load drifting
    over the run hits them alike), model facts (bytes, MACs, parameters) and, for two or more models, the bare
    invoke p50 of every other model over the first's (its speed-up) and their size ratio."""
    frame = bench_frame()
    out: dict[str, Any] = {"frame_shape": list(frame.shape), "frames": frames, "warmup": warmup, "models": [],
                           "runs": [], "comparisons": []}
    for model in models:
        clf = ImageClassifier(model, num_threads=1, top_k=1, allow_modified=allow_modified)
        path = clf.source.model_path
        out["models"].append({"model": str(model), "file": str(path), "bytes": path.stat().st_size,
                              "input": [*clf.input_size, 3], "input_dtype": clf.input_dtype.name,
                              "runtime": f"{clf.runtime} {clf.runtime_version}", **model_stats(clf.interpreter)})
    bare = {}
    for n in threads:
        for model in models:
            clf = ImageClassifier(model, num_threads=n, top_k=1, allow_modified=allow_modified)
            out["runs"].append({"model": str(model), "threads": n, **overhead(clf, frame, frames, warmup)})
            bare[str(model), n] = out["runs"][-1]["bare_invoke_ms"]["p50"]
    for other in out["models"][1:]:
        first = out["models"][0]
        out["comparisons"].append({"model": first["model"], "against": other["model"],
                                   "speedup_bare_invoke": {str(n): round(bare[other["model"], n] /
                                                                         bare[first["model"], n], 2) for n in threads},
                                   "size_ratio": round(other["bytes"] / first["bytes"], 2)})
    return out


def model_stats(interpreter: Any) -> dict[str, Any]:
    """Multiply-accumulates and parameters of a loaded model, from its ops and tensor shapes (no TensorFlow).

    CONV_2D: output elements x kh x kw x Cin; DEPTHWISE_CONV_2D: output elements x kh x kw; FULLY_CONNECTED:
    output elements x input features. Parameters: the weights and biases of those ops (batch norm is folded)."""
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    macs = params = 0
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name == "DELEGATE":  # the delegated nodes are listed too, as themselves
            continue
        counts[name] = counts.get(name, 0) + 1
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        ins = [i for i in op["inputs"] if i >= 0]
        out = int(np.prod(shapes[op["outputs"][0]]))
        w = shapes[ins[1]]  # CONV_2D [Cout, kh, kw, Cin], DEPTHWISE [1, kh, kw, C], FC [units, in]
        macs += out * (w[1] * w[2] * w[3] if name == "CONV_2D" else w[1] * w[2] if name != "FULLY_CONNECTED"
                       else w[1])
        params += sum(int(np.prod(shapes[i])) for i in ins[1:])
    return {"macs": macs, "params": params, "ops": dict(sorted(counts.items()))}


# Published int8 MobileNetV2 1.0 (224x224, ~300M MACs) latencies on the boards, with the runtime that measured them.
MOBILENETV2_224_MACS = 300_000_000
PI_REFERENCES = (
    {"board": "Raspberry Pi 4 (Cortex-A72, 64-bit OS)", "ms": 17.0, "threads": 4, "measured": "XNNPACK end2end-bench, "
     "INT8 per-channel MobileNet v2 1.0X, Feb 2022", "source": "https://github.com/google/XNNPACK/blob/master/README.md"},
    {"board": "Raspberry Pi 5 (Cortex-A76)", "ms": 3.98, "threads": None, "measured": "ExecuTorch + XNNPACK INT8 "
     "MobileNetV2, median of 50 runs", "source": "https://learn.arm.com/courses/executorch-on-arm/optimize-image-"
     "classification/evaluate-int8-mobilenetv2/copy-the-int8-artifact-to-raspberry-pi/"},
)


def pi_estimate(macs: int) -> list[dict[str, Any]]:
    """Latency estimates for a model of `macs` multiply-accumulates: published ms x macs / 300M MACs."""
    return [{**ref, "estimate_ms": round(ref["ms"] * macs / MOBILENETV2_224_MACS, 2)} for ref in PI_REFERENCES]


def preprocess_costs(size: tuple[int, int], frames: int = 200) -> dict[str, Any]:
    """Preprocessing alone (p50 ms): a 640x480 RGB frame (camera path), and JPEG files through load_image +
    preprocess (classify path; JPEGs decode at reduced scale), at 640x480 and 1600x1200."""
    from .preprocess import load_image, preprocess

    def p50(fn: Any) -> float:
        fn()
        times = []
        for _ in range(frames):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return percentiles(times)["p50"]

    frame = bench_frame()
    out: dict[str, Any] = {"size": list(size), "frame_640x480_ms": p50(lambda: preprocess(frame, size))}
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 480), (1600, 1200)):
            path = Path(tmp) / f"{w}x{h}.jpg"
            Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
            out[f"jpeg_{w}x{h}"] = {"decoded_as": list(load_image(path, draft_size=size).size),
                                    "load_ms": p50(lambda path=path: load_image(path, draft_size=size)),
                                    "total_ms": p50(lambda path=path: preprocess(load_image(path, draft_size=size),
                                                                                  size))}
    return out


def import_profile(model: PathLike, image: PathLike) -> dict[str, Any]:
    """`python -X importtime -m skinedge device classify MODEL IMAGE`: modules imported, import time (ms, own time
    of each module summed by top-level package, the standard library as one), and any TensorFlow/Keras module."""
    cmd = [sys.executable, "-X", "importtime", "-m", "skinedge", "device", "classify", str(model), str(image)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COLD_START_TIMEOUT_S, check=False)
    by_root: dict[str, float] = {}
    modules = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2 or "self [us]" in line:
            continue
        own, _, name = line[len("import time:"):].split("|")
        modules.append(name.strip())
        root = name.strip().split(".")[0]
        root = "stdlib" if root in sys.stdlib_module_names or root.startswith("_") else root
        by_root[root] = by_root.get(root, 0.0) + int(own) / 1e3
    heavy = sorted(by_root.items(), key=lambda kv: -kv[1])[:6]
    return {"exit_code": proc.returncode, "modules": len(modules), "total_ms": round(sum(by_root.values()), 1),
            "top_ms": {k: round(v, 1) for k, v in heavy},
            "tensorflow": sorted({m for m in modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras")})}


def machine() -> str:
    """CPU model, cores, OS and Python of this machine, for the benchmark tables."""
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith(("model name", "Model"))), None) if Path("/proc/cpuinfo").is_file() else None
    return (f"{cpu or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}")


def report(model: PathLike, compare: Sequence[PathLike] = (), threads: Sequence[int] = (1, 2, 4),
           frames: int = 200, warmup: int = 10, cold_starts: int = 5) -> dict[str, Any]:
    """Everything `python -m skinedge.device.bench` prints: sweep, preprocessing, cold start and imports, Pi
    estimate, with the machine, date and load average (1, 5, 15 min) at the start and the end."""
    from datetime import datetime, timezone

    out: dict[str, Any] = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    out["sweep"] = sweep([model, *compare], threads, frames, warmup)
    first = out["sweep"]["models"][0]
    out["preprocess"] = preprocess_costs((first["input"][0], first["input"][1]), frames)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "frame.jpg"
        Image.fromarray(bench_frame()).save(image, quality=90)
        runs = [r for r in (cold_start(model, image) for _ in range(cold_starts)) if r[0] is not None]
        if runs:
            out["cold_start"] = {"image": "640x480 JPEG", "runs_ms": [r[0] for r in runs],
                                 "ms": percentiles([r[0] for r in runs]),
                                 "rss_mb": max((r[1] for r in runs if r[1] is not None), default=None),
                                 "imports": import_profile(model, image)}
    out["pi_estimate"] = pi_estimate(first["macs"])
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def markdown(rep: dict[str, Any]) -> str:
    """A `report` as Markdown tables, for BENCHMARKS.md."""
    s, p, c = rep["sweep"], rep["preprocess"], rep.get("cold_start")
    parts = [f"Machine: {rep['machine']}, {s['models'][0]['runtime']}  \nDate: {rep['date']}; load average "
             f"(1, 5, 15 min) {rep['load_average_start']} at the start, {rep['load_average_end']} at the end",
             _table(["model", "input", "bytes", "MACs", "parameters", "ops"], [
                 (Path(m["model"]).name, "x".join(map(str, m["input"])) + " " + m["input_dtype"], m["bytes"],
                  f"{m['macs'] / 1e6:.1f} M", f"{m['params'] / 1e6:.3f} M", sum(m["ops"].values()))
                 for m in s["models"]]),
             _table(["model", "threads", "bare invoke p50", "views", "classify invoke p50", "preprocess p50",
                     "end to end p50 (p90)", "overhead", "fps"], [
                 (Path(r["model"]).name, r["threads"], r["bare_invoke_ms"]["p50"], r.get("views", 1),
                  r["invoke_ms"]["p50"], r["preprocess_ms"]["p50"],
                  f"{r['end_to_end_ms']['p50']} ({r['end_to_end_ms']['p90']})", r["overhead"], r["fps"])
                 for r in s["runs"]])]
    for cmp in s["comparisons"]:
        parts.append(_table(["threads", f"bare invoke p50, {Path(cmp['against']).name} / {Path(cmp['model']).name}"],
                            sorted(cmp["speedup_bare_invoke"].items())) + f"\n\nsize ratio: {cmp['size_ratio']}x")
    rows = [("640x480 RGB array (camera)", "-", "-", p["frame_640x480_ms"])]
    rows += [(f"JPEG {k[5:]} file", "x".join(map(str, v["decoded_as"])), v["load_ms"], v["total_ms"])
             for k, v in p.items() if k.startswith("jpeg_")]
    parts.append(_table([f"input (to {p['size'][0]}x{p['size'][1]})", "decoded as", "decode p50",
                         "decode + preprocess p50"], rows))
    if c:
        parts.append(_table(["cold start p50 (min-max)", "peak RSS of `device classify`", "modules imported",
                             "import time by package (ms)", "TensorFlow imported"], [(
            f"{c['ms']['p50']} ({min(c['runs_ms'])}-{max(c['runs_ms'])})", f"{c['rss_mb']} MB",
            c["imports"]["modules"], ", ".join(f"{k} {v}" for k, v in c["imports"]["top_ms"].items()),
            ", ".join(c["imports"]["tensorflow"]) or "no")]))
    parts.append(_table(["board", "published ms (threads)", "measured with", "estimate for this model"], [
        (e["board"], f"{e['ms']} ({e['threads'] or 'default'})", e["measured"], f"{e['estimate_ms']} ms")
        for e in rep["pi_estimate"]]) + "".join(f"\n\n{e['board']}: {e['source']}" for e in rep["pi_estimate"]))
    return "\n\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """python -m skinedge.device.bench MODEL [--compare OTHER] [--threads 1,2,4] [--cold-starts 5] [--json]"""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m skinedge.device.bench", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("--compare", action="append", default=[], help="Another model (e.g. the float32 TFLite).")
    ap.add_argument("--threads", default="1,2,4", help="Thread counts, comma-separated.")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cold-starts", type=int, default=5, help="Fresh `device classify` runs (0: none).")
    ap.add_argument("--json", action="store_true", help="One JSON object instead of Markdown tables.")
    args = ap.parse_args(argv)
    rep = report(args.model, args.compare, [int(t) for t in args.threads.split(",")], args.frames, args.warmup,
                 args.cold_starts)
    print(json.dumps(rep) if args.json else markdown(rep))


if __name__ == "__main__":
    main()
