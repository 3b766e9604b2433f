"""Issue #4 on the workstation: `skinedge train`, `convert` and `compare` refuse bad data, bad run dirs, bad models
and nonsense options with one line naming the folder or file and exit status 2, before any work starts; data with
some bad parts (corrupt images, non-image files, metadata naming missing images, a class with one image) trains,
with a warning and a count for each. Extends test_train_data.py and test_train_units.py.

Workstation environment (TensorFlow); the training here is one tiny real run (cnn, 32 px, one epoch per phase).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from conftest import TEST_COLOURS, assert_one_line_error

LABELS = ["akiec", "mel", "nv"]


def cli(*args) -> Result:
    from skinedge.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def noisy_image(path: Path, colour, size=(36, 28), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def folder_data(root: Path, counts: dict[str, int]) -> Path:
    """A folder-per-class data set of noisy fixture colours (labels cycle through the three colours)."""
    colours = list(TEST_COLOURS.values())
    for k, (label, n) in enumerate(counts.items()):
        for i in range(n):
            noisy_image(root / label / f"{label}_{i}.png", colours[k % 3], seed=100 * k + i)
    return root


def ham_data(root: Path, rows: list[tuple[str, str, str]], make: bool = True) -> Path:
    """A HAM10000-layout data set: metadata rows (lesion_id, image_id, dx) and, when `make`, their images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    colours = {}
    with open(root / "HAM10000_metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["lesion_id", "image_id", "dx", "dx_type", "age"])
        for i, (lesion, image_id, dx) in enumerate(rows):
            writer.writerow([lesion, image_id, dx, "histo", "50"])
            colour = colours.setdefault(dx, list(TEST_COLOURS.values())[len(colours) % 3])
            if make:
                noisy_image(root / "images" / f"{image_id}.jpg", colour, seed=i)
    return root


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- nonsense options: usage errors (exit 2) before anything is read or written ---------------------------------


@pytest.fixture
def colour_data(tmp_path) -> Path:
    return folder_data(tmp_path / "data", {"akiec": 4, "mel": 4, "nv": 4})


@pytest.mark.parametrize("option", [
    ["--lr", "0"], ["--lr", "-0.1"], ["--lr", "nan"], ["--lr", "inf"], ["--limit", "0"], ["--limit", "-5"],
    ["--qat-epochs", "-1"], ["--head-epochs", "-2"], ["--img-size", "31"], ["--img-size", "100000"],
    ["--img-size", "64x31"], ["--img-size", "64x"], ["--img-size", "64x64x3"], ["--img-size", "wide"],
    ["--seed", "-1"], ["--split-seed", "x"], ["--val-fraction", "0"], ["--val-fraction", "0.5"],
    ["--test-fraction", "nan"],
    ["--test-fraction", "-0.1"], ["--label-smoothing", "0.9"], ["--label-smoothing", "nan"], ["--patience", "0"],
    ["--batch-size", "-3"], ["--alpha", "2"], ["--balance", "magic"], ["--epochs", "ten"],
    ["--finetune-from", "1.5"], ["--finetune-from", "nan"], ["--warmup-epochs", "-1"], ["--warmup-epochs", "nan"],
    ["--warmup-epochs", "11"],  # more than the 10 fine-tuning epochs
])
def test_train_refuses_nonsense_options(colour_data, tmp_path, option):
    result = cli("train", colour_data, "--out", tmp_path / "run", "--arch", "cnn", "--weights", "none", *option)
    assert_one_line_error(result, 2, "Invalid value", option[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [
    ["--min-agreement", "-0.1"], ["--min-agreement", "1.5"], ["--min-agreement", "nan"],
    ["--calibration-images", "0"], ["--flag-sensitivity", "0"], ["--flag-sensitivity", "1.2"],
    ["--flag-sensitivity", "nan"],
])
def test_convert_refuses_nonsense_options(tmp_path, option):
    (tmp_path / "run").mkdir()
    result = cli("convert", tmp_path / "run", "--out", tmp_path / "bundle", *option)
    assert_one_line_error(result, 2, "Invalid value", option[0])
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("option", [["--limit", "0"], ["--threads", "0"], ["--threads", "-2"], ["--split", "x"]])
def test_compare_refuses_nonsense_options(bundle_dir, colour_data, tmp_path, option):
    result = cli("compare", colour_data, "--bundle", bundle_dir, "--out", tmp_path / "report", *option)
    assert_one_line_error(result, 2, "Invalid value", option[0])
    assert not (tmp_path / "report").exists()


def test_compare_needs_a_model(colour_data, tmp_path):
    assert_one_line_error(cli("compare", colour_data, "--out", tmp_path / "r"), 2, "give --run, --bundle or both")


# -- unusable data: exit 2, one line naming the folder or file, nothing created --------------------------------


def _ham_rows(n_per_class: int = 3, classes=("mel", "nv")) -> list[tuple[str, str, str]]:
    return [(f"L{c}{i}", f"I{c}{i}", dx) for c, dx in enumerate(classes) for i in range(n_per_class)]


def _write_metadata(root: Path, text: str | bytes) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    meta = root / "HAM10000_metadata.csv"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return meta


UNUSABLE = {
    "empty folder": (lambda d: d.mkdir(), "neither a HAM10000 folder", ""),
    "one class": (lambda d: folder_data(d, {"nv": 5}), "found only one class (nv)", ""),
    "class folders without images": (
        lambda d: [(d / c).mkdir(parents=True) or (d / c / "notes.txt").write_text("x") for c in ("a", "b")],
        "no images found", ""),
    "only hidden and non-image files": (
        lambda d: [(d / c).mkdir(parents=True) or (d / c / "._x.jpg").write_bytes(b"\0\x05\x16\x07")
                   or (d / c / "x.json").write_text("{}") for c in ("a", "b")], "no images found", ""),
    "too few images to split": (lambda d: folder_data(d, {"mel": 1, "nv": 1}), "too few images", ""),
    "metadata naming only missing images": (lambda d: ham_data(d, _ham_rows(), make=False),
                                            "none of the 6 images it names exist", "HAM10000_metadata.csv"),
    "metadata without images folder": (lambda d: ham_data(d, _ham_rows()) and shutil.rmtree(d / "images"),
                                       "folder not found", "images"),
    "metadata missing a column": (lambda d: _write_metadata(d, "lesion_id,image_id\nL1,I1\n"),
                                  "missing column(s) dx", "HAM10000_metadata.csv"),
    "metadata not UTF-8": (lambda d: _write_metadata(d, "lesion_id,image_id,dx\nL1,I1,n\xe9vus\n".encode("latin-1")),
                           "not UTF-8", "HAM10000_metadata.csv"),
    "metadata image id escaping the folder": (
        lambda d: _write_metadata(d, "lesion_id,image_id,dx\nL1,../../../etc/passwd,nv\n"), "bad image_id",
        "HAM10000_metadata.csv"),
    "metadata label with a line break": (
        lambda d: ham_data(d, _ham_rows()) and _write_metadata(
            d, 'lesion_id,image_id,dx\nL00,I00,"mel\nnv"\nL10,I10,nv\n'), "cannot be used", "line 3"),
    "metadata with short rows": (
        lambda d: ham_data(d, _ham_rows(), make=False) and _write_metadata(d, "lesion_id,image_id,dx\nL1,I1\n"),
        "bad image_id", "line 2"),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_train_refuses_unusable_data_in_one_line(tmp_path, case):
    make, fragment, names = UNUSABLE[case]
    data = tmp_path / "data"
    make(data)
    result = cli("train", data, "--out", tmp_path / "run", "--arch", "cnn", "--weights", "none")
    line = assert_one_line_error(result, 2, fragment, str(data))
    assert names in line
    assert not (tmp_path / "run").exists()  # refused before the run dir was made


def test_train_data_that_is_a_file_or_missing(tmp_path):
    (tmp_path / "file.csv").write_text("x")
    for data in (tmp_path / "file.csv", tmp_path / "missing"):
        result = cli("train", data, "--out", tmp_path / "run", "--arch", "cnn", "--weights", "none")
        assert_one_line_error(result, 2, "Invalid value for 'DATA'")


def test_train_out_inside_the_data_folder_is_refused(colour_data):
    result = cli("train", colour_data, "--out", colour_data / "run", "--arch", "cnn", "--weights", "none")
    assert_one_line_error(result, 2, "inside the data folder")
    assert not (colour_data / "run").exists()


def test_train_bad_weights_file_is_exit_2(colour_data, tmp_path):
    fake = tmp_path / "weights.h5"
    fake.write_text("<html>captive portal</html>")
    result = cli("train", colour_data, "--out", tmp_path / "run", "--weights", str(fake), "--img-size", "32")
    assert_one_line_error(result, 2, str(fake), "not an HDF5 weights file")


def test_folder_layout_skips_hidden_and_non_image_files_with_a_count(tmp_path, caplog):
    from skinedge.train import data as D

    data = folder_data(tmp_path / "data", {"mel": 3, "nv": 3})
    (data / "mel" / "notes.txt").write_text("x")
    (data / "mel" / "._mel_0.png").write_bytes(b"\0\x05\x16\x07 AppleDouble")
    (data / "mel" / ".DS_Store").write_bytes(b"\0")
    (data / ".hidden_class").mkdir()
    noisy_image(data / ".hidden_class" / "x.png", (1, 2, 3))
    (data / "empty_class").mkdir()
    with caplog.at_level(logging.WARNING):
        samples, classes, _ = D.list_samples(data)
    assert classes == ["mel", "nv"] and len(samples) == 6
    assert "3 non-image or hidden files ignored" in caplog.text
    assert "empty_class: no images" in caplog.text


def test_class_folder_named_with_a_line_break_is_refused(tmp_path):
    from skinedge.train import data as D

    data = folder_data(tmp_path / "data", {"mel": 2, "nv": 2})
    noisy_image(data / "bad\nname" / "x.png", (1, 2, 3))
    with pytest.raises(D.DataError, match="cannot be used") as info:
        D.list_samples(data)
    assert str(data) in str(info.value)


def test_class_folder_name_that_is_not_utf8(tmp_path):
    """A folder name with bytes that are not UTF-8 could not be written to labels.txt: refused by name."""
    from skinedge.train import data as D

    data = folder_data(tmp_path / "data", {"mel": 2, "nv": 2})
    noisy_image(data / b"n\xe9vus".decode("utf-8", "surrogateescape") / "x.png", (1, 2, 3))
    with pytest.raises(D.DataError, match="not UTF-8"):
        D.list_samples(data)


def test_image_file_names_that_are_not_utf8_survive_the_split_file(tmp_path):
    from skinedge.train import data as D

    odd = D.Sample(str(tmp_path / b"x\xff.png".decode("utf-8", "surrogateescape")), "nv", "g1")
    splits = {"train": [odd], "val": [D.Sample("b.png", "mel", "g2")], "test": []}
    D.save_split(tmp_path / "split.csv", splits)
    assert D.load_split(tmp_path / "split.csv") == splits


def test_a_class_with_one_image_is_trained_on_not_lost(tmp_path, caplog):
    from skinedge.train import data as D

    samples, _, _ = D.list_samples(folder_data(tmp_path / "data", {"mel": 10, "nv": 10, "vasc": 1}))
    for seed in range(6):  # wherever the random split would have put it, the single image ends up in training
        with caplog.at_level(logging.WARNING):
            splits = D.split_samples(samples, 0.15, 0.15, seed)
        assert [s.label for s in splits["train"]].count("vasc") == 1
        assert sum(len(v) for v in splits.values()) == len(samples)
    assert "vasc have too few images to appear in the val split" in caplog.text


# -- unusable run dirs, models and bundles (convert, compare): exit 2, one line -------------------------------


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run dir with every file convert reads, all well-formed (the weights are never reached)."""
    from skinedge.train import data as D

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"arch": "cnn", "alpha": 1.0, "img_size": 32, "data": "d"}))
    (run / "labels.txt").write_text("mel\nnv\n")
    D.save_split(run / "split.csv", {"train": [D.Sample("a.png", "mel", "a")], "val": [], "test": []})
    (run / "qat.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (run / "float.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    return run


@pytest.mark.parametrize("damage, fragment", [
    (lambda r: (r / "qat.weights.h5").unlink(), "qat.weights.h5 is missing"),
    (lambda r: (r / "qat.weights.h5").write_text("<html>502 Bad Gateway</html>"),
     "qat.weights.h5: not an HDF5 weights file"),
    (lambda r: (r / "config.json").write_text("{broken"), "unreadable run files"),
    (lambda r: (r / "config.json").write_text("[1, 2]"), "not a JSON object"),
    (lambda r: (r / "config.json").write_text('{"arch": "cnn", "alpha": 1, "img_size": "big"}'), "img_size"),
    (lambda r: (r / "config.json").write_text('{"arch": "cnn", "alpha": 1, "img_size": 32, "img_width": 0}'),
     "img_width 0 is not"),
    (lambda r: (r / "labels.txt").write_bytes(b""), "no labels"),
    (lambda r: (r / "split.csv").write_text("a,b\n1,2\n"), "not a split file"),
    (lambda r: (r / "split.csv").write_bytes(b"split,path,label,group\ntrain,\xff.png,mel,g\ntrain\n"),
     "split.csv: line 3 is incomplete"),
    (lambda r: (r / "split.csv").write_text("split,path,label,group\ntrain,a.png,bcc,a\n"), "bcc are not in"),
])
def test_convert_refuses_unusable_run_dirs_before_converting(fake_run, tmp_path, damage, fragment):
    damage(fake_run)
    result = cli("convert", fake_run, "--out", tmp_path / "bundle")
    assert_one_line_error(result, 2, fragment, str(fake_run))
    assert not (tmp_path / "bundle").exists()


def test_convert_refuses_to_replace_its_own_run_dir(fake_run):
    before = tree(fake_run)
    assert_one_line_error(cli("convert", fake_run, "--out", fake_run), 2, "cannot replace the run dir")
    assert tree(fake_run) == before


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_bytes(os.urandom(1000)), "not a TFLite model"),
    (lambda p: p.mkdir(), "not a bundle"),
    (lambda p: p.write_bytes(b""), "not a TFLite model"),
])
def test_compare_refuses_a_bad_bundle_in_one_line(colour_data, tmp_path, make, fragment):
    bundle = tmp_path / "model.tflite"
    make(bundle)
    result = cli("compare", colour_data, "--bundle", bundle, "--out", tmp_path / "report")
    assert_one_line_error(result, 2, str(bundle), fragment)
    assert not (tmp_path / "report").exists()


def test_compare_refuses_a_run_dir_that_is_not_one(colour_data, tmp_path):
    (tmp_path / "notarun").mkdir()
    result = cli("compare", "--run", tmp_path / "notarun", "--out", tmp_path / "report")
    assert_one_line_error(result, 2, "not a finished training run")


def test_compare_data_labels_unknown_to_the_bundle(bundle_dir, tmp_path):
    data = folder_data(tmp_path / "data", {"mel": 3, "bcc": 3})
    result = cli("compare", data, "--bundle", bundle_dir, "--out", tmp_path / "report")
    assert_one_line_error(result, 2, "bcc", "not among the model's classes")


def test_compare_with_only_unreadable_images(bundle_dir, tmp_path):
    data = tmp_path / "data"
    for label in ("mel", "nv"):
        (data / label).mkdir(parents=True)
        (data / label / "x.jpg").write_text("<html>")
    result = cli("compare", data, "--bundle", bundle_dir, "--out", tmp_path / "report")
    assert_one_line_error(result, 2, "none of the images could be read")


def _tflite(build) -> bytes:
    from skinedge.convert.tfcompat import keras, tf

    model = build(keras)
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


@pytest.mark.parametrize("name, build, fragment", [
    ("vector_input.tflite", lambda k: k.Sequential([k.Input((10,)), k.layers.Dense(3, activation="softmax")]),
     "input shape [1, 10] is not an RGB image"),
    ("grey_input.tflite", lambda k: k.Sequential([k.Input((32, 32, 1)), k.layers.GlobalAveragePooling2D(),
                                                  k.layers.Dense(3, activation="softmax")]),
     "input shape [1, 32, 32, 1] is not an RGB image"),
    ("int32_input.tflite", lambda k: k.Sequential([k.Input((32, 32, 3), dtype="int32"),
                                                   k.layers.Lambda(lambda x: k.backend.cast(x, "float32")),
                                                   k.layers.GlobalAveragePooling2D(), k.layers.Dense(3)]),
     "unsupported input type int32"),
])
def test_device_refuses_models_whose_input_is_not_an_image(tmp_path, colour_files, name, build, fragment):
    model = tmp_path / name
    model.write_bytes(_tflite(build))
    result = cli("device", "classify", model, colour_files["nv"])
    assert_one_line_error(result, 2, str(model), fragment)


# -- data with bad parts still trains: a real tiny run ------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


EVIL = "a/../../evil"  # a dx label that looks like a path: it must stay a name
CORRUPT = {  # image file -> what is done to its bytes
    "I0_3.jpg": lambda data: b"",                               # empty
    "I1_4.jpg": lambda data: b"<html><body>404</body></html>",  # HTML named .jpg
    "I1_5.jpg": lambda data: data[: len(data) // 3],            # truncated
    "I2_6.jpg": lambda data: b"\x89PNG\r\n\x1a\n" + data[8:],    # wrong signature
}


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    """HAM-layout data with three good classes, one class with a single image, a path-like label, metadata rows
    naming missing images and corrupt files among the images; trained for real (cnn, 32 px)."""
    from skinedge.cli import main

    root = tmp_path_factory.mktemp("messy")
    rows = [(f"L{k}_{i}", f"I{k}_{i}", dx) for k, dx in enumerate(("akiec", "mel", EVIL)) for i in range(10)]
    rows += [("Lsingle", "Isingle", "nv")]
    data = ham_data(root / "data", rows)
    with open(data / "HAM10000_metadata.csv", "a", newline="") as fh:
        csv.writer(fh).writerows([[f"Lgone{i}", f"Igone{i}", "mel", "histo", "1"] for i in range(4)])
    for name, content in CORRUPT.items():
        path = data / "images" / name
        path.write_bytes(content(path.read_bytes()))
    before = tree(root)
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        result = CliRunner().invoke(main, ["train", str(data), "--out", str(root / "run"), "--arch", "cnn",
                                           "--weights", "none", "--img-size", "32", "--epochs", "1",
                                           "--qat-epochs", "1", "--batch-size", "8", "--seed", "3"])
    finally:
        logging.getLogger().removeHandler(handler)
    return {"root": root, "data": data, "run": root / "run", "result": result, "warnings": handler.lines,
            "before": before}


def test_messy_data_trains_to_the_end(messy_run):
    result = messy_run["result"]
    assert result.exit_code == 0, result.output
    for name in ("qat.weights.h5", "float.weights.h5", "metrics.json", "split.csv", "labels.txt"):
        assert (messy_run["run"] / name).is_file(), name


def test_missing_images_named_in_metadata_are_counted(messy_run):
    warnings = "\n".join(messy_run["warnings"])
    assert "4 images named in the metadata are missing" in warnings and "(31 of 35 remain)" in warnings


def test_corrupt_images_are_skipped_with_a_count(messy_run):
    """Training decodes its train and val splits once, before the first epoch: each corrupt file there is skipped
    with a warning naming it, and a count per split; nothing can fail mid-epoch."""
    with open(messy_run["run"] / "split.csv", newline="") as fh:
        decoded = {Path(r["path"]).name for r in csv.DictReader(fh) if r["split"] in ("train", "val")}
    expected = sorted(set(CORRUPT) & decoded)
    assert expected, "the split put every corrupt file in the test split: change the seed"
    warnings = messy_run["warnings"]
    skipped = [w for w in warnings if w.startswith("skipped ")]
    assert sorted(Path(w[len("skipped "):].split(": ")[0]).name for w in skipped) == expected
    counts = [w for w in warnings if "could not be read and were skipped" in w]
    assert counts and sum(int(w.split()[0]) for w in counts) == len(expected)


def test_single_image_class_is_kept_and_trained_on(messy_run):
    run = messy_run["run"]
    assert (run / "labels.txt").read_text().splitlines() == sorted(["akiec", "mel", "nv", EVIL])
    with open(run / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["split"] for r in rows if r["label"] == "nv"] == ["train"]
    assert any("nv have too few images to appear in the val split" in w for w in messy_run["warnings"])


def test_path_like_label_builds_no_path(messy_run):
    """The label 'a/../../evil' is written into labels.txt and split.csv as a name; every file the run made is
    inside the run dir (nothing next to it, nothing in the data folder)."""
    root, run = messy_run["root"], messy_run["run"]
    created = tree(root) - messy_run["before"]
    assert created and all(name == "run" or name.startswith("run/") for name in created), sorted(created)
    assert EVIL in (run / "labels.txt").read_text().splitlines()
    assert not (root.parent / "evil").exists() and not (run.parent / "evil").exists()


def test_compare_with_path_like_labels_writes_only_into_its_report(bundle_copy, tmp_path):
    """compare names its files after the variants, never the classes: labels that look like paths stay names."""
    evil = ["../../akiec", "mel", "nv/../../../x"]
    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["labels"] = evil
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    rows = [(f"L{i}{j}", f"I{i}{j}", label) for i, label in enumerate(evil) for j in range(3)]
    data = ham_data(tmp_path / "data", rows)
    before = tree(tmp_path)
    result = cli("compare", data, "--bundle", bundle_copy, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    created = tree(tmp_path) - before
    assert created and all(name == "report" or name.startswith("report/") for name in created), sorted(created)
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["classes"] == evil


def test_train_bad_lesion_id_table_is_one_line_naming_it(colour_data, tmp_path):
    table = tmp_path / "lesions.csv"
    table.write_text("image,lesion\nI1,L1\n")
    result = cli("train", colour_data, "--out", tmp_path / "run", "--arch", "cnn", "--weights", "none",
                 "--lesion-ids", table)
    assert_one_line_error(result, 2, str(table), "missing column(s) image_id, lesion_id")
    assert not (tmp_path / "run").exists()
    missing = cli("train", colour_data, "--out", tmp_path / "run", "--lesion-ids", tmp_path / "absent.csv")
    assert_one_line_error(missing, 2, "absent.csv", "does not exist")


def test_train_init_from_something_that_is_not_a_usable_run_is_one_line(colour_data, fake_run, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    result = cli("train", colour_data, "--out", tmp_path / "out", "--arch", "cnn", "--init-from", empty)
    assert_one_line_error(result, 2, "--init-from", str(empty), "config.json is missing")
    # fake_run is a cnn run: a MobileNetV2 run cannot take its layers
    other = cli("train", colour_data, "--out", tmp_path / "out", "--init-from", fake_run)
    assert_one_line_error(other, 2, str(fake_run), "a cnn (alpha 1.0) run", "pass the same --arch")
    left = cli("train", colour_data, "--out", tmp_path / "out", "--arch", "cnn", "--leave-out", empty)
    assert_one_line_error(left, 2, "--leave-out", str(empty), "config.json is missing")
    assert not (tmp_path / "out").exists()


def test_train_extra_data_that_cannot_apply_is_one_line(colour_data, fake_run, tmp_path):
    extra = folder_data(tmp_path / "extra", {"melanoma": 2, "naevus": 2})
    base = ["train", colour_data, "--out", tmp_path / "out", "--arch", "cnn", "--weights", "none"]
    bad_pair = cli(*base, "--extra-train", extra, "--extra-label", "melanoma")
    assert_one_line_error(bad_pair, 2, "'melanoma': expected THEIRS=OURS")
    twice = cli(*base, "--extra-train", extra, "--extra-label", "melanoma=mel", "--extra-label", "melanoma=nv")
    assert_one_line_error(twice, 2, "'melanoma': mapped to both mel and nv")
    alone = cli(*base, "--extra-label", "melanoma=mel")
    assert_one_line_error(alone, 2, "--extra-label", "names classes of --extra-train, which is not given")
    unknown = cli(*base, "--extra-train", extra, "--extra-label", "melanoma=melanoma")
    assert_one_line_error(unknown, 2, "--extra-label: melanoma not among the classes of the data (akiec, mel, nv)")
    absent = cli(*base, "--extra-train", extra, "--extra-label", "nevus=nv")
    assert_one_line_error(absent, 2, str(extra), "has no class 'nevus' (--extra-label); its classes: melanoma, naevus")
    nothing = cli(*base, "--extra-train", extra)  # no folder named like a class, none mapped
    assert_one_line_error(nothing, 2, str(extra), "no images to add")
    assert not (tmp_path / "out").exists()
    with_float = cli("train", colour_data, "--out", tmp_path / "out", "--float-from", fake_run, "--extra-train", extra)
    assert_one_line_error(with_float, 2, "--extra-train", "set by the run --float-from names")
