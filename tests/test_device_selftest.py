"""Golden outputs (skinedge.device.golden, the bundle's golden.npz) and `skinedge device selftest`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from skinedge.cli import main
from skinedge.device.bundle import (
    GOLDEN_FILE,
    BundleError,
    Golden,
    load_model_source,
    pack_golden,
    read_embedded,
    read_golden,
    write_bundle,
)
from skinedge.device.classifier import ImageClassifier
from skinedge.device.golden import GOLDEN_KINDS, check_golden, golden_inputs, make_golden, record_golden
from skinedge.device.runtime import load_interpreter
from skinedge.device.selftest import CHECKS, exit_code, selftest

LABELS = ["akiec", "mel", "nv"]


def run_selftest(*args: str):
    result = CliRunner().invoke(main, ["device", "selftest", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def selftest_json(*args: str) -> tuple[int, dict[str, dict[str, str]]]:
    result = run_selftest(*args, "--json")
    record = json.loads(result.stdout)
    assert [c["name"] for c in record["checks"]] == list(CHECKS)
    assert record["exit_code"] == result.exit_code
    return result.exit_code, {c["name"]: c for c in record["checks"]}


def statuses(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


def edit_meta(bundle, change) -> None:
    path = bundle / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


# -- golden inputs --------------------------------------------------------------------------------------------


def test_golden_inputs_are_deterministic_and_varied():
    x = golden_inputs(32, 24)
    assert x.shape == (6, 32, 24, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert np.array_equal(x, golden_inputs(32, 24))
    assert not np.array_equal(x, golden_inputs(32, 24, seed=1))
    assert len({img.tobytes() for img in x}) == 6  # six different pictures
    assert x[0].min() == 0 and x[0].max() == 255  # the noise image covers the range
    assert (x[2] == 128).all() and set(np.unique(x[3])) == {0, 255}
    assert np.array_equal(golden_inputs(32, 24, n=8)[:6], x)  # kinds cycle; more images keep the first ones
    assert len(GOLDEN_KINDS) == 6


def test_golden_inputs_fixed_bytes(bundle_dir):
    """Regenerating on any machine, any numpy, must give these exact bytes (bundles' golden.npz rely on it)."""
    digest = hashlib.sha256(golden_inputs(32, 32).tobytes()).hexdigest()
    assert digest == "6ad17f0f9cc7f81fa040b7ee1370cb80f2d75bd1d83eeaa8194d371f186ef017"
    inputs, _ = read_golden(bundle_dir / GOLDEN_FILE)
    assert np.array_equal(inputs, golden_inputs(32, 32))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**31))
def test_golden_inputs_any_size(height, width, n, seed):
    x = golden_inputs(height, width, n, seed)
    assert x.shape == (n, height, width, 3) and x.dtype == np.uint8
    assert np.array_equal(x, golden_inputs(height, width, n, seed))


@pytest.mark.parametrize("args", [(0, 4), (4, 0), (4, 4, 0)])
def test_golden_inputs_refuses_empty(args):
    with pytest.raises(ValueError):
        golden_inputs(*args)


# -- golden.npz in the bundle ---------------------------------------------------------------------------------


def test_pack_golden_is_a_reproducible_plain_npz(tmp_path):
    x, y = golden_inputs(8, 8), np.arange(18, dtype=np.int8).reshape(6, 3)
    data = pack_golden(x, y)
    assert data == pack_golden(x, y)  # fixed timestamps: same arrays, same bytes
    path = tmp_path / "g.npz"
    path.write_bytes(data)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["inputs", "outputs"]
        assert np.array_equal(npz["inputs"], x) and np.array_equal(npz["outputs"], y)


def test_tiny_bundle_has_golden(bundle_dir):
    src = load_model_source(bundle_dir)
    assert src.golden_path == bundle_dir / GOLDEN_FILE
    info = src.meta["golden"]
    assert info["sha256"] == hashlib.sha256(src.golden_path.read_bytes()).hexdigest()
    assert info["threads"] == 1 and info["count"] == 6 and info["compare"] == "same runtime family, bit exact"
    inputs, outputs = read_golden(src.golden_path)
    assert inputs.shape == (6, 32, 32, 3) and outputs.shape == (6, 3) and outputs.dtype == np.int8


def test_golden_reproduced_through_the_runtime(bundle_dir):
    inputs, outputs = read_golden(bundle_dir / GOLDEN_FILE)
    assert check_golden(load_interpreter(bundle_dir / "model.tflite", num_threads=1), inputs, outputs).ok
    flipped = outputs ^ np.int8(1)  # the lowest bit of every output
    result = check_golden(load_interpreter(bundle_dir / "model.tflite"), inputs, flipped)
    assert not result.ok and result.mismatched == list(range(6)) and result.max_abs_diff == 1


def test_write_bundle_without_golden_still_loads(tmp_path, fixtures_dir):
    out = write_bundle(tmp_path / "b", (fixtures_dir / "float32.tflite").read_bytes(), LABELS, {}, {"name": "t"})
    assert not (out / GOLDEN_FILE).exists() and "golden" not in json.loads((out / "model.json").read_text())
    assert load_model_source(out).golden_path is None


def test_write_bundle_with_golden(tmp_path, bundle_dir):
    tflite = (bundle_dir / "model.tflite").read_bytes()
    golden = make_golden(tflite, 32, 32, n=3, seed=7)
    assert golden.info["runtime"] and golden.info["seed"] == 7 and golden.outputs.shape == (3, 3)
    out = write_bundle(tmp_path / "b", tflite, LABELS, {"height": 32, "width": 32}, {"name": "t"}, golden=golden)
    assert sorted(p.name for p in out.iterdir()) == ["golden.npz", "labels.txt", "model.json", "model.tflite"]
    assert load_model_source(out).golden_path == out / GOLDEN_FILE
    code, checks = selftest_json(out)
    assert code == 0 and checks["golden_outputs"]["status"] == "PASS"


# -- selftest: pass and fail ----------------------------------------------------------------------------------


def test_selftest_passes_on_pristine_bundle(bundle_dir):
    result = run_selftest(bundle_dir)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines[:7]] == [["PASS", name] for name in CHECKS]
    assert "ai-edge-litert" in lines[0] or "tflite-runtime" in lines[0] or "tf.lite" in lines[0]
    assert lines[-1].startswith("selftest passed: 7 passed, 0 failed, 0 skipped")
    code, checks = selftest_json(bundle_dir)
    assert code == 0 and set(statuses(checks).values()) == {"PASS"}
    assert "bit-exact" in checks["golden_outputs"]["detail"]


def test_selftest_library_api(bundle_dir):
    checks = selftest(bundle_dir)
    assert [c.name for c in checks] == list(CHECKS) and exit_code(checks) == 0


def test_tampered_model_fails_sha256(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes() + b"\0")
    code, checks = selftest_json(bundle_copy)
    assert code == 1
    assert statuses(checks)["model_sha256"] == "FAIL" and "modified or corrupted" in checks["model_sha256"]["detail"]
    assert statuses(checks)["golden_outputs"] == "PASS"  # the flatbuffer itself is untouched
    result = run_selftest(bundle_copy)
    assert result.exit_code == 1 and "FAIL  model_sha256" in result.output and "selftest FAILED" in result.output


def test_altered_golden_outputs_fail(bundle_copy):
    path = bundle_copy / GOLDEN_FILE
    inputs, outputs = read_golden(path)
    outputs = outputs.copy()
    outputs[2, 0] ^= 1
    path.write_bytes(pack_golden(inputs, outputs))
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and statuses(checks)["golden_file"] == "FAIL" and statuses(checks)["golden_outputs"] == "FAIL"
    assert "sha256" in checks["golden_file"]["detail"] and "1 of 6 outputs differ" in checks["golden_outputs"]["detail"]
    # even with model.json updated to match, the outputs themselves must be reproduced
    edit_meta(bundle_copy, lambda m: m["golden"].update(sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and statuses(checks)["golden_file"] == "PASS" and statuses(checks)["golden_outputs"] == "FAIL"
    assert "images [2]" in checks["golden_outputs"]["detail"]


def test_golden_inputs_not_from_recipe_fail(bundle_copy):
    path = bundle_copy / GOLDEN_FILE
    inputs, outputs = read_golden(path)
    path.write_bytes(pack_golden(255 - inputs, outputs))
    edit_meta(bundle_copy, lambda m: m["golden"].update(sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and "not what the recipe" in checks["golden_file"]["detail"]


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04broken"])
def test_unreadable_golden_fails(bundle_copy, content):
    (bundle_copy / GOLDEN_FILE).write_bytes(content)
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and statuses(checks)["golden_file"] == "FAIL" and statuses(checks)["golden_outputs"] == "SKIP"


def test_golden_without_outputs_fails(bundle_copy):
    path = bundle_copy / GOLDEN_FILE
    np.savez(path, inputs=golden_inputs(32, 32))
    with pytest.raises(BundleError, match="golden file lacks outputs") as info:
        read_golden(path)
    assert str(info.value).count(str(path)) == 1
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and "lacks outputs" in checks["golden_file"]["detail"]


def test_golden_recorded_but_missing_fails(bundle_copy):
    (bundle_copy / GOLDEN_FILE).unlink()
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and "missing" in checks["golden_file"]["detail"]


def test_bundle_from_before_golden_skips(bundle_copy):
    (bundle_copy / GOLDEN_FILE).unlink()
    edit_meta(bundle_copy, lambda m: m.pop("golden"))
    code, checks = selftest_json(bundle_copy)
    assert code == 0 and statuses(checks)["golden_file"] == statuses(checks)["golden_outputs"] == "SKIP"


@pytest.mark.parametrize(
    "change, check, fragment",
    [
        (lambda m: m["input"].update(height=64), "input_spec", "input height 64"),
        (lambda m: m["input"].update(dtype="float32"), "input_spec", "input dtype float32"),
        (lambda m: m["quantization"]["input"].update(scale=0.5), "input_spec", "input scale 0.5"),
        (lambda m: m["quantization"]["output"].update(zero_point=0), "output_spec", "output zero_point 0"),
        (lambda m: m.update(labels=["akiec", "mel", "nv", "bcc"]), "output_spec", "4 labels for a model with 3"),
    ],
)
def test_edited_model_json_fails(bundle_copy, change, check, fragment):
    edit_meta(bundle_copy, change)
    code, checks = selftest_json(bundle_copy)
    assert code == 1 and statuses(checks)[check] == "FAIL" and fragment in checks[check]["detail"]
    assert [n for n, s in statuses(checks).items() if s == "FAIL"] == [check]


def test_random_bytes_exit_2(tmp_path):
    model = tmp_path / "random.tflite"
    model.write_bytes(os.urandom(4096))
    code, checks = selftest_json(model)
    assert code == 2 and statuses(checks)["model_loads"] == "FAIL"
    assert "not a TFLite model" in checks["model_loads"]["detail"]
    assert all(s == "SKIP" for n, s in statuses(checks).items() if n not in ("runtime", "model_loads"))
    result = run_selftest(model)
    assert result.exit_code == 2 and "FAIL  model_loads" in result.output


def test_random_bytes_in_bundle_and_missing_path_exit_2(bundle_copy, tmp_path):
    (bundle_copy / "model.tflite").write_bytes(os.urandom(4096))
    assert run_selftest(bundle_copy).exit_code == 2
    assert run_selftest(tmp_path / "absent").exit_code == 2
    (bundle_copy / "model.json").write_text("{broken")
    assert run_selftest(bundle_copy).exit_code == 2


# -- any model ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["float32.tflite", "int8_input.tflite", "logits.tflite"])
def test_selftest_bare_models(fixtures_dir, name):
    code, checks = selftest_json(fixtures_dir / name)
    assert code == 0
    assert statuses(checks) == {"runtime": "PASS", "model_loads": "PASS", "model_sha256": "SKIP",
                                "input_spec": "SKIP", "output_spec": "SKIP", "golden_file": "SKIP",
                                "golden_outputs": "SKIP"}
    code, checks = selftest_json(fixtures_dir / name, "--labels", fixtures_dir / "labels3.txt")
    assert code == 0 and statuses(checks)["output_spec"] == "PASS"


def test_selftest_refuses_two_inputs(fixtures_dir):
    code, checks = selftest_json(fixtures_dir / "two_inputs.tflite")
    assert code == 2 and "2 inputs" in checks["model_loads"]["detail"]


def test_int8_input_bundle_golden_through_classifier(tmp_path, fixtures_dir):
    """A model that does not take uint8: golden outputs are recorded and checked through the classifier's own
    input quantization."""
    tflite = (fixtures_dir / "int8_input.tflite").read_bytes()
    clf = ImageClassifier(fixtures_dir / "int8_input.tflite", labels_path=fixtures_dir / "labels3.txt",
                          num_threads=1)
    inputs = golden_inputs(32, 32)
    with pytest.raises(ValueError, match="ImageClassifier"):
        record_golden(clf.interpreter, inputs)  # a bare interpreter would feed uint8 to an int8 input
    golden = Golden(inputs, record_golden(clf, inputs), {"count": 6})
    spec = {"height": 32, "width": 32, "channels": 3, "dtype": "int8", "mean": 0.0, "std": 1.0}
    out = write_bundle(tmp_path / "b", tflite, LABELS, spec, {"name": "int8 in"}, golden=golden)
    code, checks = selftest_json(out)
    assert code == 0 and statuses(checks)["golden_outputs"] == "PASS", checks


def test_metadata_labels_from_associated_file(tmp_path, fixtures_dir):
    """TFLite Metadata models carry labels as an associated .txt in the appended zip, beside other files."""
    tflite = (fixtures_dir / "float32.tflite").read_bytes()
    for files, expected in (
        ({"vocab.txt": "x\ny\n", "labelmap.txt": "cat\ndog\nfox\n"}, ["cat", "dog", "fox"]),
        ({"a.txt": "cat\ndog\nfox\n", "b.txt": "p\nq\n"}, ["cat", "dog", "fox"]),
    ):
        path = tmp_path / "meta.tflite"
        with open(path, "wb") as fh:
            fh.write(tflite)
        with zipfile.ZipFile(path, "a") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
        assert read_embedded(path)[0] == expected
        code, checks = selftest_json(path)
        assert code == 0 and statuses(checks)["output_spec"] == "PASS"


def test_selftest_help_has_example():
    result = CliRunner().invoke(main, ["device", "selftest", "--help"])
    assert result.exit_code == 0 and "skinedge device selftest models/" in result.output


def test_selftest_runs_on_a_copy_moved_elsewhere(bundle_dir, tmp_path):
    moved = shutil.copytree(bundle_dir, tmp_path / "elsewhere" / "bundle")
    assert selftest_json(moved)[0] == 0
