"""skinedge.device.bundle and .runtime: embedded metadata, bundle folders, integrity checks, loading errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from skinedge.device import bundle as bundle_mod
from skinedge.device.bundle import (
    BundleError,
    FlagRule,
    embed_metadata,
    load_model_source,
    read_embedded,
    read_meta,
    sha256_file,
    write_bundle,
)
from skinedge.device.labels import LabelsError
from skinedge.device.runtime import load_interpreter

LABELS = ["akiec", "mel", "nv"]
SPEC = {
    "height": 32, "width": 32, "channels": 3, "dtype": "uint8", "color": "RGB", "layout": "NHWC",
    "resize": "center_crop", "interpolation": "bilinear", "mean": 0.0, "std": 1.0, "output": "probabilities",
    "flag": {"label": "mel", "threshold": 0.3},
}


@pytest.fixture(scope="module")
def float_tflite(fixtures_dir) -> bytes:
    return (fixtures_dir / "float32.tflite").read_bytes()


# -- embedded metadata ----------------------------------------------------------------------------------------


def test_embed_read_round_trip(tmp_path, float_tflite):
    data = embed_metadata(float_tflite, LABELS, SPEC)
    assert data.startswith(float_tflite)  # the flatbuffer is untouched; the zip is appended
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    labels, spec = read_embedded(path)
    assert labels == LABELS
    assert spec == SPEC


def test_embedded_model_still_runs(tmp_path, float_tflite):
    path = tmp_path / "m.tflite"
    path.write_bytes(embed_metadata(float_tflite, LABELS, SPEC))
    rt = load_interpreter(path)
    assert len(rt.interpreter.get_input_details()) == 1


def test_embed_is_deterministic(float_tflite, monkeypatch):
    first = embed_metadata(float_tflite, LABELS, SPEC)
    later = time.time() + 3 * 86400  # zip entries would carry a different date
    monkeypatch.setattr(time, "time", lambda: later)
    assert embed_metadata(float_tflite, LABELS, SPEC) == first


def test_read_embedded_plain_file_has_nothing(fixtures_dir, tmp_path):
    assert read_embedded(fixtures_dir / "float32.tflite") == (None, {})
    text = tmp_path / "plain.bin"
    text.write_bytes(b"no zip here" * 10)
    assert read_embedded(text) == (None, {})


def test_read_embedded_from_bundle_model(bundle_dir):
    labels, spec = read_embedded(bundle_dir / "model.tflite")
    assert labels == LABELS
    assert spec["flag"] == {"label": "mel", "threshold": 0.3}
    assert spec["height"] == 32 and spec["dtype"] == "uint8"


def test_read_embedded_model_maker_style_single_txt(tmp_path, float_tflite):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labelmap_v2.txt", "cat\ndog\nfox\n")
    path = tmp_path / "mm.tflite"
    path.write_bytes(float_tflite + buf.getvalue())
    assert read_embedded(path) == (["cat", "dog", "fox"], {})


@pytest.mark.parametrize(
    "files, match",
    [
        ({"skinedge.json": "[1, 2]"}, "not a JSON object"),
        ({"skinedge.json": "{broken"}, "unreadable"),
        ({"labels.txt": "a\na\n"}, "unreadable"),
        ({"labels.txt": b"\xff\xfe\xfa"}, "unreadable"),
    ],
)
def test_read_embedded_bad_contents(tmp_path, float_tflite, files, match):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    path = tmp_path / "bad.tflite"
    path.write_bytes(float_tflite + buf.getvalue())
    with pytest.raises(BundleError, match=match) as info:
        read_embedded(path)
    assert str(path) in str(info.value)


# -- load_model_source ----------------------------------------------------------------------------------------


def test_load_bundle_dir(bundle_dir):
    src = load_model_source(bundle_dir)
    assert src.model_path == bundle_dir / "model.tflite"
    assert src.labels == LABELS
    assert src.spec["mean"] == 0.0 and src.spec["std"] == 1.0 and src.spec["output"] == "probabilities"
    assert src.flag == FlagRule("mel", 0.3)
    assert src.meta is not None and src.meta["name"] == "tiny-fixture"
    assert src.sha256 == sha256_file(bundle_dir / "model.tflite") == src.meta["model"]["sha256"]
    assert src.meta["model"]["bytes"] == (bundle_dir / "model.tflite").stat().st_size


def test_load_bare_tflite_with_embedded_metadata(bundle_dir, tmp_path):
    bare = tmp_path / "alone.tflite"
    shutil.copy(bundle_dir / "model.tflite", bare)
    src = load_model_source(bare)
    assert src.model_path == bare and src.meta is None
    assert src.labels == LABELS and src.flag == FlagRule("mel", 0.3)


def test_load_bare_tflite_without_metadata(fixtures_dir):
    src = load_model_source(fixtures_dir / "float32.tflite")
    assert src.labels is None and src.spec == {} and src.flag is None and src.meta is None
    src = load_model_source(fixtures_dir / "float32.tflite", labels_path=fixtures_dir / "labels3.txt")
    assert src.labels == LABELS


def test_labels_path_overrides_bundle(bundle_dir, tmp_path):
    other = tmp_path / "labels.txt"
    other.write_text("x\nmel\nz\n", encoding="utf-8")
    assert load_model_source(bundle_dir, labels_path=other).labels == ["x", "mel", "z"]


def test_missing_model(tmp_path):
    with pytest.raises(BundleError, match="no such model file or bundle folder") as info:
        load_model_source(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(info.value)


def test_dir_without_model(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_model_source(tmp_path)


def test_sha256_mismatch_refused_unless_allowed(bundle_copy):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes() + b"\0")  # any change to the file
    with pytest.raises(BundleError, match="does not match model.json") as info:
        load_model_source(bundle_copy)
    assert str(model) in str(info.value) and "--allow-modified" in str(info.value)
    src = load_model_source(bundle_copy, allow_modified=True)
    assert src.sha256 == sha256_file(model) and src.labels == LABELS


def test_sha256_recorded_wrong_is_refused(bundle_copy):
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="modified or corrupted"):
        load_model_source(bundle_copy)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2, 3]", "not a skinedge model.json"),
        ('{"labels": ["a"]}', "not a skinedge model.json"),
        (b"\xff\xfe{}", "malformed JSON"),
    ],
)
def test_malformed_model_json(bundle_copy, content, match):
    meta_path = bundle_copy / "model.json"
    if isinstance(content, bytes):
        meta_path.write_bytes(content)
    else:
        meta_path.write_text(content)
    with pytest.raises(BundleError, match=match) as info:
        load_model_source(bundle_copy)
    assert str(meta_path) in str(info.value)
    with pytest.raises(BundleError):
        read_meta(meta_path)


def test_flag_label_not_in_labels(bundle_copy):
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["flag"] = {"label": "bcc", "threshold": 0.5}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="flag label 'bcc' is not one of the model's labels"):
        load_model_source(bundle_copy)


def test_flag_without_threshold(bundle_copy):
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["flag"] = {"label": "mel"}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="numeric threshold"):
        load_model_source(bundle_copy)


def test_flag_rule_applies():
    rule = FlagRule("mel", 0.3)
    assert rule.applies({"mel": 0.3}) and rule.applies({"mel": 0.9})
    assert not rule.applies({"mel": 0.29}) and not rule.applies({"nv": 1.0})
    assert rule.describe() == "flag when P(mel) >= threshold"


def test_flag_rule_at_class_frequencies():
    """Bayes' rule to new priors: P(mel) 0.5 against an even nv becomes 0.1 / (0.1 + 0.9) where nevi are 9x as
    common; frequencies that are all equal change nothing."""
    rule = FlagRule("mel", 0.3, (("mel", 0.1), ("nv", 0.9)))
    assert rule.scores(np.array([0.5, 0.5]), ["mel", "nv"]) == pytest.approx(0.1)
    assert rule.scores(np.array([0.5, 0.5]), ["nv", "mel"]) == pytest.approx(0.1)  # read by name, not position
    assert not rule.applies({"mel": 0.5, "nv": 0.5}) and rule.applies({"mel": 0.8, "nv": 0.2})  # .8*.1/(.08+.18)
    even = FlagRule("mel", 0.3, (("akiec", 1 / 3), ("mel", 1 / 3), ("nv", 1 / 3)))
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=20)
    assert even.scores(p, LABELS) == pytest.approx(p[:, 1])
    assert "at the training data's class frequencies" in rule.describe()


def test_flag_class_frequencies_load_from_the_bundle(bundle_copy):
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["flag"] = {"label": "mel", "threshold": 0.3, "class_frequencies": {"akiec": 0.1, "mel": 0.2, "nv": 0.7}}
    meta_path.write_text(json.dumps(meta))
    assert load_model_source(bundle_copy).flag == FlagRule("mel", 0.3, (("akiec", 0.1), ("mel", 0.2), ("nv", 0.7)))


# -- write_bundle ---------------------------------------------------------------------------------------------


def test_write_bundle_contents(tmp_path, float_tflite):
    out = write_bundle(tmp_path / "b", float_tflite, LABELS, SPEC, {"name": "t", "model": {"quantization": "none"}})
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.json", "model.tflite"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "skinedge-bundle" and meta["format_version"] == 1
    assert meta["labels"] == LABELS and meta["flag"] == SPEC["flag"] and "flag" not in meta["input"]
    assert meta["model"]["quantization"] == "none"
    assert meta["model"]["sha256"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert (out / "labels.txt").read_text() == "akiec\nmel\nnv\n"
    src = load_model_source(out)
    assert src.labels == LABELS and src.flag == FlagRule("mel", 0.3)


def test_write_bundle_is_reproducible(tmp_path, float_tflite):
    a = write_bundle(tmp_path / "a", float_tflite, LABELS, SPEC, {"name": "t"})
    b = write_bundle(tmp_path / "b", float_tflite, LABELS, SPEC, {"name": "t"})
    for name in ("model.tflite", "labels.txt", "model.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_write_bundle_folder_is_readable_by_others(tmp_path, float_tflite):
    umask = os.umask(0o022)
    try:
        out = write_bundle(tmp_path / "b", float_tflite, LABELS, SPEC, {"name": "t"})
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0700


def test_write_bundle_replaces_existing_and_leaves_no_temp(tmp_path, float_tflite):
    out = tmp_path / "models" / "b"
    write_bundle(out, float_tflite, LABELS, SPEC, {"name": "first"})
    (out / "stale.txt").write_text("left from the old bundle")
    write_bundle(out, float_tflite, ["x", "mel", "y"], SPEC, {"name": "second"})
    assert sorted(p.name for p in out.parent.iterdir()) == ["b"]  # no .b.* temp or .b.old folders
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.json", "model.tflite"]
    src = load_model_source(out)
    assert src.labels == ["x", "mel", "y"] and src.meta["name"] == "second"


def test_write_bundle_failure_keeps_old_bundle(tmp_path, float_tflite, monkeypatch):
    out = tmp_path / "b"
    write_bundle(out, float_tflite, LABELS, SPEC, {"name": "good"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_bundle(out, float_tflite, ["p", "mel", "q"], SPEC, {"name": "bad"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_write_bundle_refuses_bad_labels_before_touching_disk(tmp_path, float_tflite):
    with pytest.raises(LabelsError):
        write_bundle(tmp_path / "b", float_tflite, ["ok", "two\nlines"], SPEC, {})
    assert list(tmp_path.iterdir()) == []


# -- runtime loading errors -----------------------------------------------------------------------------------


def assert_bundle_error(path: Path, *fragments):
    with pytest.raises(BundleError) as info:
        load_interpreter(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_random_bytes_model(tmp_path):
    path = tmp_path / "random.tflite"
    path.write_bytes(os.urandom(4096))
    assert_bundle_error(path, "not a TFLite model")


def test_tiny_file_model(tmp_path):
    path = tmp_path / "tiny.tflite"
    path.write_bytes(b"TFL3")
    assert_bundle_error(path, "not a TFLite model", "4 bytes")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_model(tmp_path, float_tflite, keep):
    path = tmp_path / "truncated.tflite"
    path.write_bytes(float_tflite[: int(len(float_tflite) * keep)])
    assert_bundle_error(path, "cannot load this model")


def test_missing_model_file(tmp_path):
    assert_bundle_error(tmp_path / "absent.tflite", "cannot read model")


def test_real_models_load(fixtures_dir, bundle_dir):
    for path in (bundle_dir / "model.tflite", fixtures_dir / "float32.tflite", fixtures_dir / "logits.tflite"):
        rt = load_interpreter(path, num_threads=2)
        assert rt.name in ("ai-edge-litert", "tflite-runtime", "tf.lite") and rt.version
