"""`skinedge device bench` and skinedge.device.bench: latency percentiles, FPS, memory, cold start."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skinedge.cli import main
from skinedge.device.bench import (
    bench,
    bench_frame,
    measure_cold_start,
    overhead,
    peak_rss_mb,
    percentiles,
)
from skinedge.device.classifier import ImageClassifier

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


# -- how close to the hardware: sweep, model statistics, Pi estimate, cold start RSS, imports -----------------


def test_bench_frame_is_golden_smooth_noise():
    from skinedge.device.golden import golden_inputs

    assert np.array_equal(bench_frame(48, 64), golden_inputs(48, 64, n=6, seed=1)[5])


def test_model_stats_counts_macs_and_parameters_of_the_tiny_model(bundle_dir):
    from skinedge.device.bench import model_stats
    from skinedge.device.classifier import ImageClassifier

    # make_fixtures.py: conv1 3x3x3->8 stride 2 (16x16 out), max pool, conv2 3x3x8->16 (8x8 out), GAP, dense 16->3
    stats = model_stats(ImageClassifier(bundle_dir).interpreter)
    assert stats["macs"] == 16 * 16 * 8 * 3 * 3 * 3 + 8 * 8 * 16 * 3 * 3 * 8 + 3 * 16
    assert stats["params"] == (8 * 27 + 8) + (16 * 72 + 16) + (3 * 16 + 3)  # Keras' count_params(): 1443
    assert stats["ops"]["CONV_2D"] == 2 and stats["ops"]["FULLY_CONNECTED"] == 1 and "DELEGATE" not in stats["ops"]


def test_pi_estimate_scales_published_figures_by_macs():
    from skinedge.device.bench import MOBILENETV2_224_MACS, pi_estimate

    full, half = pi_estimate(MOBILENETV2_224_MACS), pi_estimate(MOBILENETV2_224_MACS // 2)
    assert [e["estimate_ms"] for e in full] == [e["ms"] for e in full]
    assert [e["estimate_ms"] for e in half] == [round(e["ms"] / 2, 2) for e in full]
    assert all(e["source"].startswith("https://") and e["board"].startswith("Raspberry Pi") for e in full)


def test_sweep_json_shape(bundle_dir, fixtures_dir):
    from skinedge.device.bench import sweep

    other = fixtures_dir / "int8_input.tflite"
    result = sweep([bundle_dir, other], threads=(1, 2), frames=4, warmup=1)
    json.dumps(result)  # plain JSON types all the way
    assert [m["model"] for m in result["models"]] == [str(bundle_dir), str(other)]
    assert [(r["model"], r["threads"]) for r in result["runs"]] == [
        (str(bundle_dir), 1), (str(other), 1), (str(bundle_dir), 2), (str(other), 2)]
    for run in result["runs"]:
        assert set(run) == {"model", "threads", "bare_invoke_ms", "invoke_ms", "preprocess_ms", "end_to_end_ms",
                            "fps", "overhead", "views"}
        assert run["views"] == 1  # the fixtures have no test-time augmentation
        assert run["overhead"] == round(run["end_to_end_ms"]["p50"] / run["bare_invoke_ms"]["p50"], 3) > 0
    (cmp,) = result["comparisons"]
    assert cmp["model"] == str(bundle_dir) and cmp["against"] == str(other) and set(cmp["speedup_bare_invoke"]) == {
        "1", "2"}
    assert cmp["size_ratio"] == round(result["models"][1]["bytes"] / result["models"][0]["bytes"], 2)


def test_cold_start_reports_the_child_peak_rss(bundle_dir, tmp_path):
    from skinedge.device.bench import cold_start

    image = tmp_path / "frame.jpg"
    Image.fromarray(bench_frame()).save(image)
    ms, rss = cold_start(bundle_dir, image)
    assert ms > 0
    if os.path.exists("/proc/self/status"):
        assert 10 < rss < 1000  # its own peak, not this test process's (which holds far more)


def test_report_and_markdown_of_the_module_cli(bundle_dir, fixtures_dir, capsys):
    from skinedge.device.bench import main

    main([str(bundle_dir), "--compare", str(fixtures_dir / "int8_input.tflite"), "--threads", "1", "--frames", "3",
          "--warmup", "1", "--cold-starts", "1", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert {"machine", "date", "sweep", "preprocess", "cold_start", "pi_estimate", "load_average_start",
            "load_average_end"} <= set(rep)
    assert rep["cold_start"]["imports"]["tensorflow"] == [] and rep["cold_start"]["imports"]["modules"] > 50
    assert set(rep["preprocess"]) == {"size", "frame_640x480_ms", "jpeg_640x480", "jpeg_1600x1200"}
    assert rep["preprocess"]["jpeg_1600x1200"]["decoded_as"][0] < 1600  # JPEG drafted at reduced scale
    from skinedge.device.bench import markdown

    text = markdown(rep)
    assert text.count("\n|---|") >= 6 and "overhead" in text and "Raspberry Pi 4" in text


# -- the preprocessing fast path the bench measures ---------------------------------------------------------------


def test_camera_frame_preprocessing_is_a_box_reduction_of_the_centre_crop():
    from skinedge.device.preprocess import preprocess

    frame = np.random.default_rng(7).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(frame[:, 80:560]).reduce(3))
    assert np.array_equal(preprocess(frame, (160, 160)), expected)  # 640x480 -> 160x160: one 3x3 box filter
    rgbx = np.concatenate([frame, np.full((480, 640, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(preprocess(rgbx, (160, 160)), expected)  # the 4th byte is skipped, not blended
    strided = np.zeros((480, 700, 3), np.uint8)
    strided[:, :640] = frame
    assert np.array_equal(preprocess(strided[:, :640], (160, 160)), expected)  # a non-contiguous frame


def test_overhead_of_a_tta_bundle_counts_one_bare_invoke_per_view(bundle_copy):
    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["input"]["tta"] = "flips"
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    run = overhead(ImageClassifier(bundle_copy), bench_frame(), frames=5, warmup=1)
    assert run["views"] == 4
    assert run["overhead"] == round(run["end_to_end_ms"]["p50"] / (4 * run["bare_invoke_ms"]["p50"]), 3) > 0
