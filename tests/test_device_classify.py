"""The on-device classifier and the `skinedge device classify` command, on real TFLite fixture models."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from skinedge.cli import main
from skinedge.device.bundle import BundleError
from skinedge.device.classifier import ImageClassifier
from skinedge.device.labels import LabelsError
from skinedge.device.preprocess import ImageError

LABELS = ["akiec", "mel", "nv"]


@pytest.fixture(scope="module")
def clf(bundle_dir) -> ImageClassifier:
    return ImageClassifier(bundle_dir, top_k=3)


@pytest.fixture(scope="module")
def float_clf(fixtures_dir) -> ImageClassifier:
    return ImageClassifier(fixtures_dir / "float32.tflite", labels_path=fixtures_dir / "labels3.txt", mean=0, std=1)


def grey_and_mixed_frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    grey = np.full((32, 32, 3), 128, np.uint8)
    noise = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, :16] = (220, 40, 40)
    half[:, 16:] = (235, 230, 225)
    return [grey, noise, half]


# -- ImageClassifier ------------------------------------------------------------------------------------------


def test_bundle_properties(clf, bundle_dir):
    assert clf.labels == LABELS
    assert clf.input_size == (32, 32)
    assert clf.input_dtype == np.uint8 and clf.output_dtype == np.int8
    assert clf.num_classes == 3
    assert clf.flag_rule is not None and clf.flag_rule.label == "mel" and clf.flag_rule.threshold == 0.3
    assert clf.source.meta["name"] == "tiny-fixture"


@pytest.mark.parametrize("label", LABELS)
def test_bundle_classifies_colours(clf, colour_frames, label):
    top = clf.classify(colour_frames[label])
    assert [c.label for c in top][0] == label
    assert top[0].score > 0.9
    assert len(top) == 3 and sorted(c.label for c in top) == sorted(LABELS)
    assert top[0].index == LABELS.index(label)
    assert all(top[i].score >= top[i + 1].score for i in range(2))
    probs = clf.last_probabilities
    assert probs.shape == (3,) and (probs >= 0).all() and abs(float(probs.sum()) - 1) < 0.02
    assert clf.flagged(probs) is (label == "mel")


def test_bundle_classify_path_and_pil(clf, colour_files):
    for label, path in colour_files.items():
        assert clf.classify_path(path)[0].label == label
        assert set(clf.last_timing) == {"load_ms", "preprocess_ms", "invoke_ms", "postprocess_ms"}
        assert clf.classify(Image.open(path))[0].label == label


def test_classify_path_bad_file(clf, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    with pytest.raises(ImageError, match="bad.jpg"):
        clf.classify_path(bad)


def test_top_k(clf, colour_frames):
    assert len(clf.classify(colour_frames["nv"], top_k=1)) == 1
    assert len(clf.classify(colour_frames["nv"], top_k=10)) == 3  # capped at the number of classes


def test_predict_batch(clf, colour_frames):
    pixels = [np.full((32, 32, 3), colour_frames[label][0, 0], np.uint8) for label in LABELS]
    probs = clf.predict_batch(pixels)
    assert probs.shape == (3, 3)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]
    assert clf.predict_batch([]).shape == (0, 3)


def test_int8_bundle_agrees_with_float_model(clf, float_clf, colour_frames):
    # the same network before and after full-integer quantization: probabilities within quantization error
    for frame in [*colour_frames.values(), *grey_and_mixed_frames()]:
        clf.classify(frame)
        float_clf.classify(frame)
        assert np.abs(clf.last_probabilities - float_clf.last_probabilities).max() < 0.06


@pytest.mark.parametrize("label", LABELS)
def test_float32_model_with_mean_std(float_clf, colour_frames, label):
    assert float_clf.input_dtype == np.float32
    assert float_clf.mean == 0.0 and float_clf.std == 1.0
    top = float_clf.classify(colour_frames[label])
    assert top[0].label == label and top[0].score > 0.9
    assert float_clf.flagged(float_clf.last_probabilities) is None  # no flag rule without a bundle


def test_float32_model_default_normalisation_differs(fixtures_dir, colour_frames):
    # without metadata the TFLite convention (x - 127.5) / 127.5 is applied: the wrong input for this model,
    # which rescales internally; the results must differ from the correct normalisation
    clf = ImageClassifier(fixtures_dir / "float32.tflite", labels_path=fixtures_dir / "labels3.txt")
    assert clf.mean == 127.5 and clf.std == 127.5
    labels = {clf.classify(frame)[0].label for frame in colour_frames.values()}
    assert labels != set(LABELS)


@pytest.mark.parametrize("label", LABELS)
def test_int8_input_model(fixtures_dir, colour_frames, label):
    clf = ImageClassifier(fixtures_dir / "int8_input.tflite", labels_path=fixtures_dir / "labels3.txt")
    assert clf.input_dtype == np.int8 and clf.input_zero_point != 0
    top = clf.classify(colour_frames[label])
    assert top[0].label == label and top[0].score > 0.9


def test_int8_input_matches_uint8_bundle(clf, fixtures_dir, colour_frames):
    int8 = ImageClassifier(fixtures_dir / "int8_input.tflite", labels_path=fixtures_dir / "labels3.txt")
    for frame in [*colour_frames.values(), *grey_and_mixed_frames()]:
        clf.classify(frame)
        int8.classify(frame)
        assert np.abs(clf.last_probabilities - int8.last_probabilities).max() < 0.02


def test_bare_model_without_labels_gets_class_names(fixtures_dir, colour_frames):
    clf = ImageClassifier(fixtures_dir / "int8_input.tflite")
    assert clf.labels == ["class_0", "class_1", "class_2"]
    assert clf.classify(colour_frames["mel"])[0].label == "class_1"


def test_logits_model_gives_probabilities(fixtures_dir, float_clf, colour_frames):
    clf = ImageClassifier(fixtures_dir / "logits.tflite", labels_path=fixtures_dir / "labels3.txt", mean=0, std=1)
    for label, frame in colour_frames.items():
        top = clf.classify(frame)
        assert top[0].label == label
        probs = clf.last_probabilities
        assert (probs >= 0).all() and (probs <= 1).all()
        assert abs(float(probs.sum()) - 1.0) < 1e-5
    assert clf.output_is_probabilities is False
    # same weights as float32.tflite, whose last layer has the softmax: the same probabilities
    for frame in grey_and_mixed_frames():
        clf.classify(frame)
        float_clf.classify(frame)
        np.testing.assert_allclose(clf.last_probabilities, float_clf.last_probabilities, atol=1e-4)


def test_flag_at_class_frequencies_reads_p_melanoma_after_bayes_rule(bundle_copy, colour_frames):
    """A bundle whose flag reads P(mel) at class frequencies where melanoma is rare: the score is the model's
    P(mel) moved to those frequencies, the flag follows the score, and the top classes stay the raw output's."""
    shares = {"akiec": 0.2, "mel": 0.001, "nv": 0.799}
    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["flag"] = {"label": "mel", "threshold": 0.3, "class_frequencies": shares}
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    clf = ImageClassifier(bundle_copy)
    # mostly melanoma's colour, some nevus: P(mel) high, P(akiec) not quite 0 (pure colours give exact int8 zeros)
    frame = (0.6 * colour_frames["mel"] + 0.4 * colour_frames["nv"]).astype(np.uint8)
    top = clf.classify(frame)
    p = clf.last_probabilities
    weighted = p * np.array([shares[c] for c in clf.labels])
    assert clf.flag_score(p) == pytest.approx(weighted[1] / weighted.sum())
    assert top[0].label == "mel" and p[1] >= 0.3  # the raw rule would flag this frame
    assert clf.flag_score(p) < 0.3 and clf.flagged(p) is False


def _with_tta(bundle: Path, tta) -> Path:
    meta = json.loads((bundle / "model.json").read_text())
    meta["input"]["tta"] = tta
    (bundle / "model.json").write_text(json.dumps(meta))
    return bundle


def test_tta_bundle_averages_the_model_over_the_views_of_each_frame(bundle_copy):
    """A bundle with test-time augmentation answers the mean of the int8 model's answers on the mirrored views;
    `tta` overrides the bundle's choice."""
    clf, plain = ImageClassifier(_with_tta(bundle_copy, "flips")), ImageClassifier(bundle_copy, tta="none")
    assert clf.tta == "flips" and plain.tta == "none"
    # noise: its mirror images are other images to the model (a solid colour looks the same from every side)
    frame = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    views = [frame, frame[:, ::-1], frame[::-1], frame[::-1, ::-1]]
    expected = np.mean([plain.invoke(np.ascontiguousarray(v)) for v in views], axis=0)
    clf.classify(frame)
    assert np.allclose(clf.last_probabilities, expected, atol=1e-6)
    plain.classify(frame)
    assert not np.allclose(plain.last_probabilities, expected, atol=1e-3)  # the views do change the answer
    assert np.allclose(clf.predict_batch([frame]), expected[None], atol=1e-6)
    assert np.allclose(clf.predict_batch([frame], tta=False), plain.last_probabilities[None])
    each = clf.view_probabilities(frame)  # convert's check: the int8 model alone and the bundle's answer, one pass
    assert each.shape == (4, clf.num_classes) and np.array_equal(each[0], plain.last_probabilities)
    assert np.array_equal(clf.average_views(each), clf.last_probabilities)


@pytest.mark.parametrize("tta", ["rot45", 4, None, ["flips"], {"views": 4}])
def test_unknown_tta_in_a_bundle_is_refused_naming_it(bundle_copy, tta):
    with pytest.raises(BundleError, match=r"model.tflite: test-time augmentation .* is not one of none, hflip"):
        ImageClassifier(_with_tta(bundle_copy, tta))


def test_cli_tta_option_overrides_the_bundle(bundle_copy, colour_files):
    _with_tta(bundle_copy, "flips")
    by_bundle, overridden = (json_lines(run_cli(bundle_copy, colour_files["mel"], "--json", *extra))[0]
                             for extra in ((), ("--tta", "none")))
    assert by_bundle["label"] == overridden["label"] == "mel"  # a solid colour looks the same from every side
    assert by_bundle["latency_ms"] > 0 and overridden["latency_ms"] > 0
    result = run_cli(bundle_copy, colour_files["mel"], "--tta", "sideways")
    assert result.exit_code == 2 and "'sideways' is not one of 'none', 'hflip', 'flips', 'dihedral'" in result.output


def test_two_inputs_refused(fixtures_dir):
    with pytest.raises(BundleError, match="one image input, found 2 inputs") as info:
        ImageClassifier(fixtures_dir / "two_inputs.tflite")
    assert "two_inputs.tflite" in str(info.value)


def test_label_count_mismatch_refused(fixtures_dir, tmp_path):
    labels = tmp_path / "four.txt"
    labels.write_text("a\nb\nc\nd\n")
    with pytest.raises(LabelsError, match="4 labels for a model with 3 outputs"):
        ImageClassifier(fixtures_dir / "float32.tflite", labels_path=labels)


def test_bundle_label_count_mismatch_refused(bundle_copy):
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = ["akiec", "mel"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LabelsError, match="2 labels for a model with 3 outputs"):
        ImageClassifier(bundle_copy)


def test_zero_std_refused(fixtures_dir):
    with pytest.raises(BundleError, match="std must not be 0"):
        ImageClassifier(fixtures_dir / "float32.tflite", labels_path=fixtures_dir / "labels3.txt", std=0)


# -- the CLI --------------------------------------------------------------------------------------------------


def run_cli(*args: str):
    runner = CliRunner()
    return runner.invoke(main, ["device", "classify", *[str(a) for a in args]])


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_cli_human_output(bundle_dir, colour_files):
    result = run_cli(bundle_dir, colour_files["akiec"], colour_files["mel"], colour_files["nv"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, (label, path) in zip(lines, colour_files.items()):
        # "PATH: LABEL SCORE[  [FLAG: ...]]  (OTHER SCORE, OTHER SCORE)"
        match = re.fullmatch(r"(.+): (\w+) (\d\.\d\d)(  \[FLAG: refer for examination\])?  \((.+)\)", line)
        assert match, line
        assert match[1] == str(path) and match[2] == label and float(match[3]) > 0.9
        assert bool(match[4]) is (label == "mel")
        others = [part.split(" ")[0] for part in match[5].split(", ")]
        assert sorted(others) == sorted(set(LABELS) - {label})
    assert "not a medical device" in result.stderr  # the notice, kept out of stdout


def test_cli_json_output(bundle_dir, colour_files):
    result = run_cli(bundle_dir, *colour_files.values(), "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    records = json_lines(result)
    assert len(records) == 3
    for record, (label, path) in zip(records, colour_files.items()):
        assert set(record) == {"path", "label", "score", "top", "latency_ms", "flag", "flag_score"}
        assert record["path"] == str(path)
        assert record["label"] == label and 0.9 < record["score"] <= 1.0
        assert len(record["top"]) == 2 and record["top"][0] == {"label": label, "score": record["score"]}
        assert record["latency_ms"] > 0
        assert record["flag"] is (label == "mel") is (record["flag_score"] >= 0.3)  # the tiny bundle: P(mel) >= 0.3
        assert record["flag_score"] == pytest.approx(record["score"] if label == "mel" else 0, abs=0.1)
    assert "not a medical device" not in result.stdout


def test_cli_json_no_flag_without_rule(fixtures_dir, colour_files):
    result = run_cli(
        fixtures_dir / "float32.tflite", colour_files["nv"], "--labels", fixtures_dir / "labels3.txt",
        "--mean", "0", "--std", "1", "--json",
    )
    assert result.exit_code == 0, result.output
    (record,) = json_lines(result)
    assert record["label"] == "nv" and "flag" not in record


def test_cli_float_model_mean_std(fixtures_dir, colour_files):
    result = run_cli(
        fixtures_dir / "float32.tflite", *colour_files.values(), "--labels", fixtures_dir / "labels3.txt",
        "--mean", "0", "--std", "1", "--json", "--threads", "2",
    )
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in json_lines(result)] == list(colour_files)


def test_cli_walks_folders_recursively(bundle_dir, make_image, colour_frames, tmp_path):
    make_image("photos/a.png", colour_frames["akiec"])
    make_image("photos/sub/B.JPG", colour_frames["mel"], format="JPEG", quality=95)
    make_image("photos/sub/deeper/c.Png", colour_frames["nv"], format="PNG")
    make_image("photos/sub/d.TIFF", colour_frames["mel"], format="TIFF")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "sub" / "README").write_text("nor this")
    result = run_cli(bundle_dir, tmp_path / "photos", "--json")
    assert result.exit_code == 0, result.output
    records = json_lines(result)
    found = {Path(r["path"]).relative_to(tmp_path / "photos").as_posix(): r["label"] for r in records}
    assert found == {"a.png": "akiec", "sub/B.JPG": "mel", "sub/deeper/c.Png": "nv", "sub/d.TIFF": "mel"}
    assert len(records) == 4


def test_cli_bad_image_among_good(bundle_dir, colour_files, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    missing = tmp_path / "missing.png"
    result = run_cli(bundle_dir, colour_files["akiec"], bad, colour_files["nv"], missing, "--json")
    assert result.exit_code == 1
    records = json_lines(result)
    assert len(records) == 4
    assert records[0]["label"] == "akiec" and records[2]["label"] == "nv"
    for record, path in ((records[1], bad), (records[3], missing)):
        assert set(record) == {"path", "error"}
        assert record["path"] == str(path) and str(path) in record["error"]


def test_cli_bad_image_human_output(bundle_dir, colour_files, tmp_path):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    result = run_cli(bundle_dir, bad, colour_files["mel"])
    assert result.exit_code == 1
    assert f"error: {bad}: empty file" in result.stderr
    assert result.stdout.startswith(f"{colour_files['mel']}: mel")


def assert_model_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_missing_model(tmp_path, colour_files):
    model = tmp_path / "no_such_model"
    assert_model_error(run_cli(model, colour_files["nv"]), str(model), "no such model")


def test_cli_random_bytes_model(tmp_path, colour_files):
    model = tmp_path / "random.tflite"
    model.write_bytes(os.urandom(2048))
    assert_model_error(run_cli(model, colour_files["nv"]), str(model), "not a TFLite model")


def test_cli_two_inputs_model(fixtures_dir, colour_files):
    assert_model_error(run_cli(fixtures_dir / "two_inputs.tflite", colour_files["nv"]), "2 inputs")


def test_cli_labels_mismatch(fixtures_dir, colour_files, tmp_path):
    labels = tmp_path / "two.txt"
    labels.write_text("a\nb\n")
    result = run_cli(fixtures_dir / "float32.tflite", colour_files["nv"], "--labels", labels)
    assert_model_error(result, "2 labels for a model with 3 outputs")


def test_cli_modified_bundle(bundle_copy, colour_files):
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes() + b"\0")
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), "does not match")
    result = run_cli(bundle_copy, colour_files["nv"], "--allow-modified", "--json")
    assert result.exit_code == 0, result.output
    assert json_lines(result)[0]["label"] == "nv"


@pytest.mark.parametrize("option", [["--threads", "0"], ["--top-k", "0"], ["--std", "0"], ["--top-k", "x"]])
def test_cli_usage_errors(bundle_dir, colour_files, option):
    result = run_cli(bundle_dir, colour_files["nv"], *option)
    assert result.exit_code == 2
    assert "Invalid value" in result.stderr and option[0] in result.stderr
    assert result.stdout == ""


def test_cli_no_images_found(bundle_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(bundle_dir, tmp_path / "empty")
    assert result.exit_code == 2
    assert "no image files found" in result.stderr


def test_cli_requires_paths(bundle_dir):
    result = run_cli(bundle_dir)
    assert result.exit_code == 2 and "Missing argument" in result.stderr


def test_integer_input_model_applies_the_normalisation(fixtures_dir, colour_frames):
    # the model's real-valued input is (pixel - mean) / std for integer inputs too (then quantized with the
    # tensor's own scale and zero point): mean 255, std -1 feeds the colour negative of every frame
    plain = ImageClassifier(fixtures_dir / "int8_input.tflite", labels_path=fixtures_dir / "labels3.txt")
    negative = ImageClassifier(fixtures_dir / "int8_input.tflite", labels_path=fixtures_dir / "labels3.txt",
                               mean=255.0, std=-1.0)
    for frame in [*colour_frames.values(), *grey_and_mixed_frames()]:
        negative.classify(frame)
        plain.classify(255 - frame)
        assert np.array_equal(negative.last_probabilities, plain.last_probabilities)


def test_uint8_pixels_go_in_unchanged_only_when_the_quantization_undoes_the_normalisation(fixtures_dir):
    bundle = ImageClassifier(fixtures_dir / "tiny_bundle")  # scale 1, zero point 0, spec mean 0, std 1
    assert bundle._identity_input
    assert not ImageClassifier(fixtures_dir / "tiny_bundle", mean=1.0)._identity_input
    assert not ImageClassifier(fixtures_dir / "tiny_bundle", std=2.0)._identity_input
