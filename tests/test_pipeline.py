"""The real pipeline on a small slice of the shared data: train (QAT) -> convert -> compare -> device classify.

Small image size, one epoch per phase, a few hundred images: minutes on a laptop CPU. Everything goes through the
`skinedge` CLI, as a user would run it.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_path

# A barely trained model's top-1 answers are too close to call at int8 precision (two int8 kernel sets, XNNPACK and
# TFLite's reference kernels, disagree with each other on 10-30% of images), so the smoke runs accept a low top-1
# agreement; the default (0.98) applies to real runs. The measured agreement is asserted below.
SMOKE_MIN_AGREEMENT = "0.3"
# The from-scratch CNN after one epoch answers near-uniformly, and its int8 top-1 is a coin toss against the QAT model
# (a fresh clone once measured 19.4 % of 36 validation images): the tests that train it check shapes, splits and
# metadata, so they turn the gate off. The gate itself is tested on the MobileNet smoke run
# (test_convert_refuses_below_min_agreement_and_writes_nothing).
CNN_MIN_AGREEMENT = "0"


def _cli(*args: str) -> str:
    from skinedge.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pipeline") / "run"
    _cli("train", str(shared_path("data", "isic9", "Train")), "--out", str(run), "--arch", "mobilenetv2",
         "--weights", str(shared_path("weights", "mobilenet_v2_1.0_imagenet_no_top.h5")), "--img-size", "64",
         "--head-epochs", "1", "--epochs", "1", "--qat-epochs", "1", "--limit", "200", "--batch-size", "16")
    return run


@pytest.fixture(scope="module")
def mobilenet_bundle(mobilenet_run: Path) -> Path:
    bundle = mobilenet_run.parent / "bundle"
    out = _cli("convert", str(mobilenet_run), "--out", str(bundle), "--min-agreement", SMOKE_MIN_AGREEMENT)
    assert "int8 agreement with QAT Keras" in out
    assert "melanoma flag: P at the training class frequencies >= " in out  # the smoke run is class-weighted
    return bundle


def test_run_dir_holds_everything(mobilenet_run: Path):
    for name in ("config.json", "split.csv", "labels.txt", "curves.png", "float.weights.h5", "float.keras",
                 "qat.weights.h5", "metrics.json", "state.json", "history/head.csv", "history/finetune.csv",
                 "history/qat.csv"):
        assert (mobilenet_run / name).is_file(), name
    config = json.loads((mobilenet_run / "config.json").read_text())
    assert config["arch"] == "mobilenetv2" and config["img_size"] == 64 and config["limit"] == 200
    metrics = json.loads((mobilenet_run / "metrics.json").read_text())
    assert {"float", "qat"} <= set(metrics) and 0 <= metrics["qat"]["balanced_accuracy"] <= 1
    with open(mobilenet_run / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups = {name: {r["group"] for r in rows if r["split"] == name} for name in ("train", "val", "test")}
    assert groups["test"] and not groups["test"] & (groups["train"] | groups["val"])
    labels = (mobilenet_run / "labels.txt").read_text().splitlines()
    assert labels == sorted(p.name for p in shared_path("data", "isic9", "Train").iterdir() if p.is_dir())


def test_bundle_is_full_integer_and_self_describing(mobilenet_bundle: Path, mobilenet_run: Path):
    from skinedge.device.classifier import ImageClassifier

    model = mobilenet_bundle / "model.tflite"
    meta = json.loads((mobilenet_bundle / "model.json").read_text())
    assert meta["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    labels = (mobilenet_run / "labels.txt").read_text().splitlines()
    assert meta["labels"] == labels == (mobilenet_bundle / "labels.txt").read_text().splitlines()
    with zipfile.ZipFile(model) as zf:  # readable with the standard library alone
        assert zf.read("labels.txt").decode().splitlines() == labels
        assert json.loads(zf.read("skinedge.json"))["height"] == 64
    assert meta["quantization"]["full_integer"] is True
    # the rescale is the input quantization: uint8 pixel p means (p - 128) / 127.5 exactly, with no rescale ops
    q_in = meta["quantization"]["input"]
    assert q_in["dtype"] == "uint8" and q_in["zero_point"] == 128 and q_in["scale"] == pytest.approx(1 / 127.5)
    assert meta["input"]["dtype"] == "uint8" and (meta["input"]["mean"], meta["input"]["std"]) == (128.0, 127.5)
    assert meta["quantization"]["output"]["dtype"] == "int8"
    assert meta["verification"]["images"] > 0
    assert meta["verification"]["top1_agreement_vs_qat_keras"] >= float(SMOKE_MIN_AGREEMENT)
    assert "not a diagnosis" in meta["disclaimer"] and meta["intended_use"]
    assert meta["flag"]["label"] == "melanoma" and 0 < meta["flag"]["threshold"] <= 1
    # the run was trained class-weighted: the flag reads P(melanoma) at the training split's class frequencies
    with open(mobilenet_run / "split.csv", newline="") as fh:
        train = [r["label"] for r in csv.DictReader(fh) if r["split"] == "train"]
    assert meta["flag"]["prior"] == "train"
    assert meta["flag"]["class_frequencies"] == {c: pytest.approx(train.count(c) / len(train), abs=1e-6)
                                                 for c in labels}
    assert meta["validation"]["melanoma"]["flag"]["sensitivity"] >= 0.9  # what the threshold was chosen for
    clf = ImageClassifier(mobilenet_bundle)
    types = {np.dtype(t["dtype"]).name for t in clf.interpreter.get_tensor_details()}
    assert types <= {"int8", "uint8", "int32"}, types
    ops = [d["op_name"] for d in clf.interpreter._get_ops_details()]
    assert ops[:2] == ["QUANTIZE", "CONV_2D"], ops[:4]  # no MUL/ADD rounding the pixels before the first conv
    assert clf._identity_input  # camera pixels go in as they are


def test_convert_writes_golden_and_device_selftest_passes(mobilenet_bundle: Path):
    meta, golden = json.loads((mobilenet_bundle / "model.json").read_text()), mobilenet_bundle / "golden.npz"
    assert meta["golden"]["sha256"] == hashlib.sha256(golden.read_bytes()).hexdigest() and meta["golden"]["count"] == 6
    assert 0 < meta["verification"]["top1_agreement_xnnpack_vs_reference_kernels"] <= 1
    out = _cli("device", "selftest", str(mobilenet_bundle), "--json")
    assert json.loads(next(line for line in out.splitlines() if line.startswith("{")))["status"] == "PASS", out


def test_convert_flag_prior_none_keeps_the_raw_p_melanoma(mobilenet_run: Path, mobilenet_bundle: Path,
                                                          tmp_path: Path):
    from skinedge.device.classifier import ImageClassifier

    _cli("convert", str(mobilenet_run), "--out", str(tmp_path / "raw"), "--min-agreement", SMOKE_MIN_AGREEMENT,
         "--flag-prior", "none")
    flag = json.loads((tmp_path / "raw" / "model.json").read_text())["flag"]
    assert flag["prior"] == "none" and "class_frequencies" not in flag
    assert flag["rule"] == "flag when P(melanoma) >= threshold"
    # the same int8 model; only the flag's score differs, and the device reads each bundle's own
    raw, weighted = ImageClassifier(tmp_path / "raw"), ImageClassifier(mobilenet_bundle)
    p = np.full(len(raw.labels), 1 / len(raw.labels))
    assert raw.flag_score(p) == pytest.approx(p[raw.labels.index("melanoma")])
    assert weighted.flag_score(p) == pytest.approx(weighted.flag_rule.scores(p, weighted.labels))
    assert weighted.flag_score(p) != pytest.approx(raw.flag_score(p))


def test_convert_with_tta_stores_it_and_compare_and_card_score_the_averaged_model(mobilenet_run: Path,
                                                                                  tmp_path: Path):
    from skinedge.device.bundle import read_embedded
    from skinedge.device.classifier import ImageClassifier
    from skinedge.train.card import commands

    bundle, report = tmp_path / "tta", tmp_path / "report"
    out = _cli("convert", str(mobilenet_run), "--out", str(bundle), "--min-agreement", SMOKE_MIN_AGREEMENT,
               "--tta", "flips")
    assert "averaged over 4 views (flips)" in out
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["input"]["tta"] == "flips" and read_embedded(bundle / "model.tflite")[1]["tta"] == "flips"
    assert ImageClassifier(bundle).tta == "flips"
    assert any(c.endswith(" --tta flips") for c in commands(meta, str(bundle), "r", str(mobilenet_run)))
    _cli("compare", "--run", str(mobilenet_run), "--bundle", str(bundle), "--split", "val", "--out", str(report))
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["tta"] == "flips" and "averaged over 4 views" in metrics["images"]
    # convert chose the flag and scored validation on what the device will answer: compare measures the same
    assert metrics["variants"]["int8"]["balanced_accuracy"] == pytest.approx(meta["validation"]["balanced_accuracy"])
    assert metrics["variants"]["int8"]["melanoma"]["flag"] == meta["validation"]["melanoma"]["flag"]


def test_convert_refuses_an_unknown_tta_before_any_work(mobilenet_run: Path, tmp_path: Path):
    from skinedge.cli import main

    result = CliRunner().invoke(main, ["convert", str(mobilenet_run), "--out", str(tmp_path / "b"), "--tta", "x"])
    assert result.exit_code == 2 and "'x' is not one of 'none', 'hflip', 'flips', 'dihedral'" in result.output
    assert not (tmp_path / "b").exists()


def test_convert_refuses_a_run_without_qat(tmp_path: Path):
    from skinedge.cli import main

    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "run"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "not a finished training run" in result.output
    assert not (tmp_path / "b").exists()


def test_convert_refuses_below_min_agreement_and_writes_nothing(mobilenet_run: Path, tmp_path: Path):
    from skinedge.cli import main

    meta_agreement = None
    result = CliRunner().invoke(main, ["convert", str(mobilenet_run), "--out", str(tmp_path / "b"),
                                       "--min-agreement", "1.0"])
    if result.exit_code == 0:  # a perfect match is allowed to pass; then the bundle must say so
        meta_agreement = json.loads((tmp_path / "b" / "model.json").read_text())["verification"]
        assert meta_agreement["top1_agreement_vs_qat_keras"] == 1.0
    else:
        assert result.exit_code == 1 and "nothing was written" in result.output
        assert "below --min-agreement 100.0%" in result.output  # the way out is in the message, not cut off
        assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_compare_writes_the_report(mobilenet_run: Path, mobilenet_bundle: Path, tmp_path: Path):
    report = tmp_path / "report"
    out = _cli("compare", "--run", str(mobilenet_run), "--bundle", str(mobilenet_bundle), "--out", str(report))
    assert "| variant |" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"float", "qat", "ptq_int8", "int8"}
    assert "test split" in metrics["images"]
    for name, m in metrics["variants"].items():
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "roc_auc_macro", "melanoma",
                    "size_bytes", "latency_ms", "agreement"):
            assert key in m, (name, key)
        assert m["melanoma"]["sensitivity"] is not None and m["latency_ms"] > 0
        assert (report / f"confusion_{name}.png").stat().st_size > 1000
    assert metrics["variants"]["float"]["agreement"] == 1.0
    for name, m in metrics["variants"].items():  # lesion-bootstrap intervals (containment: the unit tests)
        lo, hi = m["balanced_accuracy_ci"]
        assert 0 <= lo <= hi <= 1, name
    boot = metrics["bootstrap"]
    assert boot["unit"] == "image" and boot["resamples"] == 1000  # the smoke run's ISIC split has no lesion ids
    assert set(boot["differences"]) == {"qat - float", "ptq_int8 - float", "int8 - float", "int8 - ptq_int8"}
    assert metrics["flag_rule"] == "flag when P(melanoma) at the training data's class frequencies >= threshold"
    assert metrics["variants"]["int8"]["size_bytes"] < metrics["variants"]["float"]["size_bytes"] / 3
    md = (report / "report.md").read_text()
    assert "| int8 |" in md and "confusion_int8.png" in md and "not a diagnosis" in md
    page = (report / "report.html").read_text()
    for section in ("metrics", "confusion", "roc", "recall", "calibration", "gallery", "training", "data"):
        assert f'id="{section}' in page, section
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert html.escape(metrics["summary"]["verdict"]) in page


def test_device_classify_on_unseen_images(mobilenet_run: Path, mobilenet_bundle: Path):
    with open(mobilenet_run / "split.csv", newline="") as fh:
        test_images = [r["path"] for r in csv.DictReader(fh) if r["split"] == "test"][:12]
    out = _cli("device", "classify", str(mobilenet_bundle), *test_images, "--json", "--top-k", "2")
    records = [json.loads(line) for line in out.splitlines()]
    labels = set((mobilenet_bundle / "labels.txt").read_text().splitlines())
    assert [r["path"] for r in records] == test_images
    for r in records:
        assert r["label"] in labels and 0 <= r["score"] <= 1 and len(r["top"]) == 2
        assert isinstance(r["flag"], bool) and r["latency_ms"] > 0


def test_resume_continues_an_unfinished_run(mobilenet_run: Path):
    state_file = mobilenet_run / "state.json"
    state = json.loads(state_file.read_text())
    before = (mobilenet_run / "qat.weights.h5").stat().st_mtime_ns
    del state["phases"]["qat"]  # as if the run had been killed during QAT
    state_file.write_text(json.dumps(state))
    out = _cli("train", str(shared_path("data", "isic9", "Train")), "--out", str(mobilenet_run), "--resume")
    assert "qat" in out
    state = json.loads(state_file.read_text())
    assert all(state["phases"][p]["done"] for p in ("head", "finetune", "qat"))
    assert (mobilenet_run / "qat.weights.h5").stat().st_mtime_ns > before
    split_before = (mobilenet_run / "split.csv").read_text()
    assert split_before == (mobilenet_run / "split.csv").read_text()


def test_train_refuses_to_overwrite_a_run(mobilenet_run: Path):
    from skinedge.cli import main

    result = CliRunner().invoke(main, ["train", str(shared_path("data", "isic9", "Train")), "--out",
                                       str(mobilenet_run), "--weights", "none"])
    assert result.exit_code == 2 and "--resume" in result.output


def test_cnn_on_ham10000_end_to_end_at_a_4_by_3_input(tmp_path: Path):
    """The from-scratch CNN on the HAM10000 layout (lesion-grouped split), through to a device classification, with
    a 4:3 input (--img-size HxW): every stage keeps the shape, so the model sees HAM10000's whole 200x150 images."""
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    _cli("train", str(shared_path("data", "ham10000")), "--out", str(run), "--arch", "cnn", "--img-size", "48x64",
         "--epochs", "1", "--qat-epochs", "1", "--limit", "250")
    config = json.loads((run / "config.json").read_text())
    assert (config["img_size"], config["img_width"]) == (48, 64)
    assert all(np.load(f)["x"].shape[1:] == (48, 64, 3) for f in (run / "cache").glob("*.npz"))
    _cli("convert", str(run), "--out", str(bundle), "--min-agreement", CNN_MIN_AGREEMENT)
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["labels"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert 0 <= meta["verification"]["top1_agreement_vs_qat_keras"] <= 1  # measured and recorded, whatever it is
    assert meta["data"]["layout"] == "ham10000" and meta["flag"]["label"] == "mel"
    assert (meta["input"]["height"], meta["input"]["width"]) == (48, 64)
    assert meta["architecture"]["img_width"] == 64
    from skinedge.device.runtime import load_interpreter

    interpreter = load_interpreter(str(bundle / "model.tflite"))
    assert list(interpreter.interpreter.get_input_details()[0]["shape"]) == [1, 48, 64, 3]
    image = shared_path("data", "ham10000", "images", "ISIC_0027419.jpg")
    out = _cli("device", "classify", str(bundle), str(image), "--json")
    assert json.loads(out)["label"] in meta["labels"]
    _cli("device", "selftest", str(bundle))  # the golden outputs were made at 48x64 too
    _cli("compare", "--run", str(run), "--bundle", str(bundle), "--out", str(tmp_path / "report"), "--limit", "40")


def test_extra_train_images_join_training_only_and_the_flag_keeps_the_data_frequencies(tmp_path: Path, caplog):
    """HAM10000 with the ISIC set's melanomas and nevi added to training (--extra-train): validation and test are
    the split the data alone gives, no added image is a HAM10000 image, --limit takes the same share of the added
    images as of the data's, and the bundle records the added images while its flag reads P(mel) at the
    frequencies of HAM10000's own training split."""
    from skinedge.convert.rundir import RunDir
    from skinedge.train import data as D

    ham, isic = shared_path("data", "ham10000"), shared_path("data", "isic9", "Train")
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    with caplog.at_level(logging.INFO, logger="skinedge.train.fit"):
        _cli("train", str(ham), "--out", str(run), "--arch", "cnn", "--img-size", "32", "--epochs", "1",
             "--qat-epochs", "1", "--limit", "250", "--extra-train", str(isic), "--extra-label", "melanoma=mel",
             "--extra-label", "nevus=nv")
    splits = RunDir.open(run).splits
    samples, classes, _ = D.list_samples(ham)
    alone = D.split_samples(D.limit_samples(samples, 250, 42), 0.15, 0.15, 42)
    for name in ("train", "val", "test"):
        assert [s.path for s in splits[name]] == [s.path for s in alone[name]], name
    added = D.extra_samples(isic, {"melanoma": "mel", "nevus": "nv"}, classes, samples)
    assert D.class_counts(added) == {"mel": 362, "nv": 280}
    assert splits["extra"] == D.limit_samples(added, round(250 / len(samples) * len(added)), 42)
    assert D.class_counts(splits["extra"]) == {"mel": 11, "nv": 8}
    assert not {Path(s.path).stem for s in added} & {Path(s.path).stem for s in samples}
    # a folder per class names no lesions: the log counts its images alone, and HAM10000's lesions
    lines = [r.getMessage() for r in caplog.records if r.name == "skinedge.train.fit"]
    assert any(m.startswith("extra: 19 images {") for m in lines), lines
    assert any(m.startswith("train: ") and " lesions {" in m for m in lines), lines
    _cli("convert", str(run), "--out", str(bundle), "--min-agreement", CNN_MIN_AGREEMENT)
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["data"]["extra_train"] == {"source": str(isic), "labels": {"melanoma": "mel", "nevus": "nv"}}
    assert meta["data"]["split_counts"]["extra"] == {"mel": 11, "nv": 8}
    assert f"training also on images of {isic}" in meta["data"]["split"]
    train = D.class_counts(splits["train"])
    assert meta["flag"]["class_frequencies"] == pytest.approx(
        {c: train.get(c, 0) / sum(train.values()) for c in meta["labels"]}, abs=1e-6)


def test_init_from_another_run_takes_its_backbone_and_keeps_its_lesions_out_of_validation_and_test(
        mobilenet_run: Path, tmp_path: Path):
    """HAM10000 started from the ISIC run above (the two share images): the backbone arrives unchanged (the head
    phase trains only the head), and every lesion the ISIC run trained or validated on stays in training."""
    from skinedge.convert.model import backbone_layers, load_float_model
    from skinedge.convert.rundir import RunDir
    from skinedge.train import data as D

    run = tmp_path / "warm"
    _cli("train", str(shared_path("data", "ham10000")), "--out", str(run), "--init-from", str(mobilenet_run),
         "--img-size", "64", "--head-epochs", "1", "--epochs", "0", "--qat-epochs", "0", "--limit", "2000",
         "--batch-size", "32")
    warm, source = RunDir.open(run), RunDir.open(mobilenet_run)
    assert warm.config["init_from"] == str(mobilenet_run) and warm.config["weights"] == "imagenet"
    everything = [s for items in warm.splits.values() for s in items]
    seen = D.seen_groups(everything, source.splits["train"] + source.splits["val"])
    assert seen, "the ISIC slice shares no HAM10000 image with this one: the test proves nothing"
    assert seen <= {s.group for s in warm.splits["train"]}
    assert not seen & {s.group for name in ("val", "test") for s in warm.splits[name]}
    ours = load_float_model("mobilenetv2", 7, 64, 1.0, str(run / "float.weights.h5"))
    theirs = load_float_model("mobilenetv2", 9, 64, 1.0, str(mobilenet_run / "float.weights.h5"))
    layers = [layer for layer in backbone_layers(ours) if layer.get_weights()]
    assert len(layers) > 100
    for layer in layers:
        for a, b in zip(layer.get_weights(), theirs.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)


def test_float_from_runs_qat_alone_on_the_float_model_and_split_of_another_run(mobilenet_run: Path, tmp_path: Path):
    """QAT with distillation on the run above's float model: same split, labels, settings and float weights; only
    the QAT phase trains; the card lists the float run's command first."""
    from skinedge.convert.model import load_qat_model
    from skinedge.train.card import prior_commands

    run = tmp_path / "distilled"
    _cli("train", str(shared_path("data", "isic9", "Train")), "--out", str(run), "--float-from", str(mobilenet_run),
         "--settle-epochs", "1", "--qat-epochs", "1", "--qat-distill", "1")
    for name in ("split.csv", "labels.txt", "history/head.csv", "history/finetune.csv"):
        assert (run / name).read_bytes() == (mobilenet_run / name).read_bytes(), name
    adopted = run / "checkpoints" / "float_from.weights.h5"
    assert adopted.read_bytes() == (mobilenet_run / "float.weights.h5").read_bytes()
    ours, theirs = (json.loads((r / "config.json").read_text()) for r in (run, mobilenet_run))
    assert ours["float_from"] == str(mobilenet_run) and ours["qat_distill"] == 1.0 and ours["qat_epochs"] == 1
    assert {k: ours[k] for k in ("img_size", "limit", "seed", "split_seed", "batch_size", "lr")} == \
        {k: theirs[k] for k in ("img_size", "limit", "seed", "split_seed", "batch_size", "lr")}
    state = json.loads((run / "state.json").read_text())
    assert state["phases"]["finetune"]["from"] == str(mobilenet_run) and state["phases"]["qat"]["done"]
    # settling is kept only if it scores at least as well on validation; the float model is whichever won
    settled = state["phases"]["settle"]["best"] >= max(state["phases"][p]["best"] for p in ("head", "finetune"))
    assert state["float_best"] == ("checkpoints/settle.weights.h5" if settled else "checkpoints/float_from.weights.h5")
    assert (run / "float.weights.h5").read_bytes() == (run / state["float_best"]).read_bytes()
    for phase in ("settle", "qat"):  # header + the one epoch each
        assert len((run / "history" / f"{phase}.csv").read_text().strip().splitlines()) == 2, phase
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["qat"]["agreement"] <= 1 and "float" in metrics
    qat = load_qat_model("mobilenetv2", 9, 64, 1.0, str(run / "qat.weights.h5"))  # the student alone, as saved
    assert qat.output_shape[-1] == 9
    assert prior_commands(ours) == [theirs["extra"]["command"]]
    # `skinedge runs` lists the pair on one split, differing in the QAT recipe alone, with the scores they kept
    header, _, first, second = _cli("runs", str(mobilenet_run), str(run)).splitlines()
    assert header.split(" | ")[3:6] == ["float-from", "settle-epochs", "qat-distill"]  # after run, status, split
    kept = json.loads((run / "summary.json").read_text())["validation"]
    assert first.startswith(f"| {mobilenet_run} | done | A |  | 0 | 0 | ")
    assert second.startswith(f"| {run} | done | A | {mobilenet_run} | 1 | 1 | {kept['float']['balanced_accuracy']:.3f}")
    assert f"| {kept['qat']['balanced_accuracy']:.3f} (ep 1) |" in second
