"""`skinedge card`: the model card is written from recorded figures, atomically, and bad inputs get exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from skinedge.cli import main

CLASSES = ["mel", "nv"]


def _metrics(bal: dict[str, float]) -> dict:
    def variant(b: float) -> dict:
        return {"balanced_accuracy": b, "accuracy": b + 0.01, "macro_f1": b - 0.01, "roc_auc_macro": 0.9,
                "size_bytes": 2_500_000, "agreement": 0.995,
                "per_class": {c: {"precision": 0.7, "recall": b, "support": 10 + i} for i, c in enumerate(CLASSES)},
                "melanoma": {"class": "mel", "sensitivity": 0.8, "specificity": 0.9,
                             "flag": {"threshold": 0.2, "sensitivity": 0.875, "specificity": 0.83}}}
    return {"images": "DATA, the run's test split (21 images)", "classes": CLASSES,
            "variants": {k: variant(v) for k, v in bal.items()}}


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    bundle, report, run = tmp_path / "models" / "demo", tmp_path / "report", tmp_path / "run"
    for d in (bundle, report, run):
        d.mkdir(parents=True)
    meta = {"name": "demo", "labels": CLASSES, "disclaimer": "not a diagnosis", "intended_use": "research",
            "input": {"height": 128, "width": 128, "dtype": "uint8", "resize": "center_crop",
                      "interpolation": "bilinear"},
            "architecture": {"arch": "mobilenetv2", "alpha": 1.0, "img_size": 128},
            "quantization": {"method": "QAT", "calibration_images": 200, "tools": {"tensorflow": "2.x"}},
            "verification": {"images": 50, "top1_agreement_vs_qat_keras": 0.99, "min_agreement": 0.98,
                             "top1_agreement_xnnpack_vs_reference_kernels": 1.0},
            "validation": {"melanoma": {"flag": {"sensitivity": 0.9, "specificity": 0.8}}},
            "flag": {"label": "mel", "threshold": 0.2, "chosen_for": "sensitivity >= 0.95 on the validation split"},
            "model": {"bytes": 2_500_000, "sha256": "ab" * 32},
            "data": {"source": "DATA", "layout": "ham10000", "split": "grouped by lesion",
                     "split_counts": {"train": {"mel": 5, "nv": 9}, "test": {"mel": 10, "nv": 11}}},
            "training": {"config": {"weights": "imagenet.h5", "epochs": 6, "qat_epochs": 2, "finetune_from": 0.6,
                                    "extra": {"command": "skinedge train DATA --out run --epochs 6"}},
                         "run_dir": str(run)}}
    (bundle / "model.json").write_text(json.dumps(meta))
    (report / "metrics.json").write_text(json.dumps(_metrics({"float": 0.81, "int8": 0.805, "ptq_int8": 0.7})))
    (run / "summary.json").write_text(json.dumps({"train_seconds": 1800, "hardware": "test CPU, 2 cores"}))
    return bundle, report, run


def _card(bundle: Path, report: Path, run: Path | None = None, *options: str) -> str:
    """Run `skinedge card` (exit 0 required) and return the card it wrote."""
    args = ["card", str(bundle), "--report", str(report), *(["--run", str(run)] if run else []), *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return (bundle / "README.md").read_text()


def test_card_holds_the_recorded_figures_and_commands(tmp_path):
    bundle, report, run = _setup(tmp_path)
    card = _card(bundle, report, run)
    assert "skinedge train DATA --out run --epochs 6" in card
    assert f"skinedge convert {run} --out {bundle} --flag-sensitivity 0.95" in card  # rebuilt from model.json
    assert "| int8 TFLite (shipped) | 80.5 % |" in card and "| PTQ int8 baseline | 70.0 % |" in card
    assert "87.5 %" in card and "83.0 %" in card  # the flag's test-split operating point
    assert "30 min" in card and "test CPU, 2 cores" in card and "| test | 10 | 11 | 21 |" in card
    assert "not a diagnosis" in card and not list(bundle.glob(".tmp-*"))
    assert "SWA" not in card and "EMA" not in card and "mixup" not in card  # no weight averaging or mixup here


def test_card_says_fine_tuning_was_scored_on_a_moving_average(tmp_path):
    bundle, report, run = _setup(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["training"]["config"]["ema"] = 0.998
    (bundle / "model.json").write_text(json.dumps(meta))
    assert "moving average of its weights (EMA, decay 0.998 per step)" in _card(bundle, report, run)


def test_card_says_whether_the_weight_average_was_kept(tmp_path):
    bundle, report, run = _setup(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["training"]["config"]["swa_epochs"] = 4
    meta["training"]["config"]["mixup"] = 0.4
    (bundle / "model.json").write_text(json.dumps(meta))
    swa = {"epochs": 4, "best_single_epoch": 0.676, "val_balanced_accuracy": 0.691, "kept": True}
    (run / "summary.json").write_text(json.dumps({"train_seconds": 1800, "phases": {"finetune": {"swa": swa}}}))
    card = _card(bundle, report, run)
    assert "last 4 fine-tuning epochs averaged (SWA)" in card and "0.691 against 0.676" in card
    assert "the average was kept" in card
    assert "mixup 0.4 (float phases)" in card
    assert "warm-up" not in card and "strong augmentation" not in card
    meta["training"]["config"]["warmup_epochs"] = 1.5
    meta["training"]["config"]["augment_level"] = "strong"
    (bundle / "model.json").write_text(json.dumps(meta))
    card = _card(bundle, report, run)
    assert "strong augmentation (any angle, deeper crops, hue shift)" in card
    assert "fine-tuning 6 epochs (lr/10 after a 1.5-epoch warm-up, top 40% of the backbone)" in card


@pytest.mark.parametrize("seeds, words", [({"seed": 7, "split_seed": 42}, "seed 7 (split seed 42)"),
                                           ({"seed": 7, "split_seed": 7}, "seed 7 |"), ({"seed": 7}, "seed 7 |")])
def test_card_names_the_split_seed_only_where_it_is_not_the_seed(tmp_path, seeds, words):
    bundle, report, run = _setup(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["training"]["config"].update(seeds)
    (bundle / "model.json").write_text(json.dumps(meta))
    card = _card(bundle, report, run)
    assert words in card and ("split seed" in card) is (seeds.get("split_seed", 7) != 7)


@pytest.mark.parametrize("readable", [True, False])
def test_card_of_a_pretrained_run_lists_the_runs_it_builds_on_first(tmp_path, readable):
    """ISIC split -> HAM10000 leaving out its val/test lesions -> ISIC started from that: all three commands, in
    the order to run them; a run whose config cannot be read is named in a comment instead."""
    bundle, report, run = _setup(tmp_path)
    isic, ham = tmp_path / "isic", tmp_path / "ham"
    isic.mkdir()
    ham.mkdir()
    (isic / "config.json").write_text(json.dumps({"extra": {"command": "skinedge train ISIC --out isic"}}))
    if readable:
        (ham / "config.json").write_text(json.dumps({"extra": {"command": "skinedge train HAM --leave-out isic"},
                                                     "leave_out": str(isic)}))
    meta = json.loads((bundle / "model.json").read_text())
    meta["training"]["config"]["init_from"] = str(ham)
    (bundle / "model.json").write_text(json.dumps(meta))
    card = _card(bundle, report, run)
    order = (["skinedge train ISIC --out isic", "skinedge train HAM --leave-out isic"] if readable
             else [f"# first: the run {ham} (its config.json is unreadable here)"])
    order.append("skinedge train DATA --out run --epochs 6")
    positions = [card.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), positions
    assert f"backbone from the run {ham}" in card and "ImageNet init" not in card


def test_card_hardware_option_fills_what_the_run_did_not_record(tmp_path):
    bundle, report, run = _setup(tmp_path)
    (run / "summary.json").write_text(json.dumps({"train_seconds": 60}))
    assert "| hardware | Xeon, 2 cores |" in _card(bundle, report, run, "--hardware", "Xeon, 2 cores")


@pytest.mark.parametrize("finetune_rows, present, absent", [
    # early stopping ended fine-tuning after 3 of its 6 planned epochs: the card says so
    ("0,0.5\n1,0.6\n2,0.55\n", "fine-tuning 3 of 6 epochs, stopped early", None),
    # a history CSV that is not numbers costs the card its "N of M epochs" remark, not the card
    ("0,0.5\n1,garbage\n", "fine-tuning 6 epochs", "stopped early"),
], ids=["stopped-early", "damaged-history"])
def test_card_reads_epochs_run_from_the_history(tmp_path, finetune_rows, present, absent):
    bundle, report, run = _setup(tmp_path)
    (run / "history").mkdir()
    (run / "history" / "finetune.csv").write_text("epoch,val_balanced_accuracy\n" + finetune_rows)
    (run / "history" / "qat.csv").write_text("epoch,val_balanced_accuracy\n0,0.6\n1,0.61\n")
    card = _card(bundle, report, run)
    assert present in card and "QAT 2 epochs (lr/100)" in card
    assert absent is None or absent not in card


def test_card_bad_inputs_exit_2_naming_the_file(tmp_path):
    bundle, report, run = _setup(tmp_path)
    (report / "metrics.json").write_text(json.dumps({**_metrics({"int8": 0.5}), "classes": ["a", "b"]}))
    result = CliRunner().invoke(main, ["card", str(bundle), "--report", str(report)])
    assert result.exit_code == 2 and "metrics.json" in result.output and "labels" in result.output
    (report / "metrics.json").write_text("{not json")
    result = CliRunner().invoke(main, ["card", str(bundle), "--report", str(report)])
    assert result.exit_code == 2 and "metrics.json: unreadable" in result.output
    (report / "metrics.json").unlink()
    result = CliRunner().invoke(main, ["card", str(bundle), "--report", str(report)])
    assert result.exit_code == 2 and "metrics.json: not found" in result.output
    assert not (bundle / "README.md").exists()


def test_card_of_a_distilled_qat_run_names_its_float_run_and_its_targets(tmp_path):
    bundle, report, run = _setup(tmp_path)
    source = tmp_path / "float-run"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"extra": {"command": "skinedge train DATA --out float-run"}}))
    (source / "summary.json").write_text(json.dumps({"train_seconds": 4320}))
    meta = json.loads((bundle / "model.json").read_text())
    meta["training"]["config"].update(float_from=str(source), qat_distill=0.75, settle_epochs=2, extra={
        "command": f"skinedge train DATA --out run --float-from {source} --qat-distill 0.75"})
    (bundle / "model.json").write_text(json.dumps(meta))
    card = _card(bundle, report, run)
    first, second = card.index("skinedge train DATA --out float-run"), card.index("--float-from")
    assert first < second
    assert f"targets 0.75 float model + 0.25 labels, from the float model of {source}" in card
    assert "settling 2 epochs on unmixed images (lr/100), QAT" in card
    assert "| training time | 102 min: 72 min for the float model, 30 min for QAT on it |" in card


@pytest.mark.parametrize("flag, balance, words, option", [
    ({"prior": "train", "class_frequencies": {"mel": 0.36, "nv": 0.64}}, "weights",
     "P(mel) at the training split's class frequencies (mel 36.0 %, nv 64.0 %", ""),
    ({"prior": "train", "class_frequencies": {"mel": 0.43, "nv": 0.57}}, "sqrt",
     "P(mel) weighted by the square roots of the training split's class counts (mel 43.0 %, nv 57.0 %", ""),
    ({"prior": "none"}, "weights", "P(mel) >= 0.2", " --flag-prior none"),
    ({}, "weights", "P(mel) >= 0.2", " --flag-prior none"),  # a bundle from before the option: it read the raw P too
])
def test_card_words_the_flag_and_its_convert_option(tmp_path, flag, balance, words, option):
    bundle, report, run = _setup(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["flag"].update(flag)
    meta["training"]["config"]["balance"] = balance
    (bundle / "model.json").write_text(json.dumps(meta))
    if "class_frequencies" in flag:  # compare scores the flag's own score too
        metrics = json.loads((report / "metrics.json").read_text())
        metrics["variants"]["int8"]["melanoma"]["flag"]["roc_auc"] = 0.81
        (report / "metrics.json").write_text(json.dumps(metrics))
    card = _card(bundle, report, run)
    assert f"`flag` is true when {words}" in card
    assert ("ROC-AUC of the flag's score" in card) is ("class_frequencies" in flag)
    assert f"skinedge convert {run} --out {bundle} --flag-sensitivity 0.95{option}\n" in card


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    centre, half = p + z * z / (2 * n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_card_gives_the_flag_rates_with_their_confidence_intervals(tmp_path):
    """The operating point with 95 % Wilson intervals from the images behind each rate: validation from the
    bundle's split counts, test from the report's class support."""
    bundle, report, run = _setup(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["data"]["split_counts"]["val"] = {"mel": 10, "nv": 20}  # sensitivity 0.9 = 9/10, specificity 0.8 = 16/20
    (bundle / "model.json").write_text(json.dumps(meta))
    metrics = json.loads((report / "metrics.json").read_text())
    int8 = metrics["variants"]["int8"]
    int8["n"], int8["per_class"]["mel"]["support"] = 24, 8  # test sensitivity 0.875 = 7/8, specificity 13/16
    int8["melanoma"]["flag"]["specificity"] = 0.8125
    (report / "metrics.json").write_text(json.dumps(metrics))
    card = _card(bundle, report, run)
    for rate, k, n in ((0.9, 9, 10), (0.8, 16, 20), (0.875, 7, 8), (0.8125, 13, 16)):
        lo, hi = _wilson(k, n)
        assert f"{100 * rate:.1f} % (95 % CI {100 * lo:.1f}–{100 * hi:.1f} %, {n} images)" in card


def test_card_gives_balanced_accuracy_intervals_and_paired_differences(tmp_path):
    bundle, report, run = _setup(tmp_path)
    metrics = json.loads((report / "metrics.json").read_text())
    for name, ci in (("float", [0.78, 0.84]), ("int8", [0.775, 0.835]), ("ptq_int8", [0.66, 0.74])):
        metrics["variants"][name]["balanced_accuracy_ci"] = ci
    metrics["bootstrap"] = {"resamples": 1000, "confidence": 0.95, "unit": "lesion", "differences": {
        "int8 - float": [-0.021, 0.011], "ptq_int8 - float": [-0.15, -0.07], "int8 - ptq_int8": [0.062, 0.148]}}
    (report / "metrics.json").write_text(json.dumps(metrics))
    card = _card(bundle, report, run)
    assert "| int8 TFLite (shipped) | 80.5 % (77.5–83.5) |" in card
    assert "the 95 % interval from 1000 bootstrap draws of the test lesions" in card
    assert "int8 against float: balanced accuracy -0.5 points (95 % CI -2.1 to +1.1)" in card
    assert "QAT's int8 model against the PTQ baseline: balanced accuracy +10.5 points (95 % CI +6.2 to +14.8)." in card
    metrics["bootstrap"]["unit"] = "image"  # a folder per class without lesion ids: images are drawn one by one
    (report / "metrics.json").write_text(json.dumps(metrics))
    card = _card(bundle, report, run)
    assert ("1000 bootstrap draws of the test images (an image's byte-identical copies drawn together)." in card
            and "test lesions" not in card)


def test_card_without_intervals_reads_as_before(tmp_path):
    bundle, report, run = _setup(tmp_path)
    card = _card(bundle, report, run)
    assert "| int8 TFLite (shipped) | 80.5 % |" in card and "bootstrap" not in card
    assert "int8 against float: balanced accuracy -0.5 points, top-1 agreement 99.5 %." in card


def test_card_names_training_only_images_from_another_data_set(tmp_path):
    bundle, report, run = _setup(tmp_path)
    meta = json.loads((bundle / "model.json").read_text())
    meta["data"]["split_counts"]["extra"] = {"mel": 362, "nv": 280}
    meta["data"]["extra_train"] = {"source": "ISIC/Train", "labels": {"melanoma": "mel", "nevus": "nv"}}
    (bundle / "model.json").write_text(json.dumps(meta))
    card = _card(bundle, report, run)
    assert "The `extra` row: 642 images of `ISIC/Train` (melanoma as mel, nevus as nv), in training only." in card
    assert "| extra | 362 | 280 | 642 |" in card
    _, report2, _ = _setup(tmp_path / "plain")
    plain = tmp_path / "plain" / "models" / "demo"
    assert "`extra` row" not in _card(plain, report2)
