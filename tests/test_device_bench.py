"""`skinedge device bench` and skinedge.device.bench: latency percentiles, FPS, memory, cold start."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from skinedge.cli import main
from skinedge.device.bench import bench, bench_frame, measure_cold_start, peak_rss_mb, percentiles

LATENCIES = ("invoke_ms", "preprocess_ms", "end_to_end_ms")
KEYS = {"model", "model_bytes", "runtime", "runtime_version", "threads", "frames", "warmup", "frame_shape", "input",
        "fps", "rss_mb", "cold_start_ms", "cold_start_method", *LATENCIES}
QUICK = ("--frames", "5", "--warmup", "1", "--no-cold-start")


def run_bench(*args: str):
    result = CliRunner().invoke(main, ["device", "bench", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def bench_json(*args: str) -> dict:
    result = run_bench(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_sane(report: dict, frames: int) -> None:
    assert set(report) == KEYS
    for key in LATENCIES:
        p = report[key]
        assert set(p) == {"p50", "p90", "p99", "mean"}
        assert 0 <= p["p50"] <= p["p90"] <= p["p99"], (key, p)
    # end to end contains both stages
    assert report["end_to_end_ms"]["p50"] >= report["invoke_ms"]["p50"]
    assert report["fps"] > 0 and report["rss_mb"] > 0 and report["model_bytes"] > 0
    assert report["frames"] == frames and report["frame_shape"] == [480, 640, 3]
    assert report["runtime"] in ("ai-edge-litert", "tflite-runtime", "tf.lite") and report["runtime_version"]


def test_bench_tiny_bundle_json_with_cold_start(bundle_dir):
    report = bench_json(bundle_dir, "--frames", "30", "--warmup", "3", "--threads", "2")
    assert_sane(report, 30)
    assert report["threads"] == 2 and report["warmup"] == 3
    assert report["model"] == str(bundle_dir / "model.tflite")
    assert report["input"] == {"shape": [1, 32, 32, 3], "dtype": "uint8"}
    # a fresh Python with imports and a model load: longer than one warm frame, well under a minute here
    assert report["end_to_end_ms"]["p50"] < report["cold_start_ms"] < 60_000
    assert "fresh process" in report["cold_start_method"]


@pytest.mark.parametrize(
    "name, extra, dtype",
    [
        ("float32.tflite", ("--mean", "0", "--std", "1"), "float32"),
        ("int8_input.tflite", (), "int8"),
        ("logits.tflite", ("--labels", "labels3.txt"), "float32"),
    ],
)
def test_bench_any_model(fixtures_dir, name, extra, dtype):
    extra = tuple(str(fixtures_dir / e) if e.endswith(".txt") else e for e in extra)
    report = bench_json(fixtures_dir / name, *QUICK, *extra)
    assert_sane(report, 5)
    assert report["input"]["dtype"] == dtype and report["cold_start_ms"] is None


def test_bench_text_output(bundle_dir):
    result = run_bench(bundle_dir, *QUICK)
    assert result.exit_code == 0, result.output
    for key in LATENCIES:
        assert key in result.output
    assert "fps" in result.output and "cold start n/a" in result.output


def test_bench_refuses_unusable_models(fixtures_dir, tmp_path):
    result = run_bench(fixtures_dir / "two_inputs.tflite", *QUICK)
    assert result.exit_code == 2 and "2 inputs" in result.output
    random = tmp_path / "random.tflite"
    random.write_bytes(os.urandom(2048))
    result = run_bench(random, *QUICK)
    assert result.exit_code == 2 and "not a TFLite model" in result.output
    assert run_bench(tmp_path / "absent", *QUICK).exit_code == 2


def test_bench_refuses_tampered_bundle_unless_allowed(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes() + b"\0")
    assert run_bench(bundle_copy, *QUICK).exit_code == 2
    assert bench_json(bundle_copy, *QUICK, "--allow-modified")["fps"] > 0


@pytest.mark.parametrize("args", [("--threads", "0"), ("--frames", "0"), ("--warmup", "-1"), ("--frames", "x")])
def test_bench_refuses_nonsense_values(bundle_dir, args):
    result = run_bench(bundle_dir, *args)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_bench_help_has_example():
    result = CliRunner().invoke(main, ["device", "bench", "--help"])
    assert result.exit_code == 0 and "skinedge device bench models/" in result.output


# -- library --------------------------------------------------------------------------------------------------


def test_bench_library(bundle_dir):
    report = bench(bundle_dir, frames=3, warmup=0, cold_start=False)
    assert_sane(report, 3)
    with pytest.raises(ValueError):
        bench(bundle_dir, frames=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_ordered(values):
    p = percentiles(values)
    assert p["p50"] <= p["p90"] <= p["p99"] <= round(max(values), 3) + 1e-9
    assert round(min(values), 3) - 1e-9 <= p["p50"]


def test_bench_frame_is_a_camera_frame():
    frame = bench_frame()
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame, bench_frame()) and len(np.unique(frame)) > 10


def test_peak_rss_is_positive():
    assert peak_rss_mb() > 1


def test_cold_start_failure_is_none(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"not used")
    assert measure_cold_start(tmp_path / "absent", image) is None
