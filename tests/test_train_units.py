"""Metrics, weights download (against a local server), BN folding and the CLI's refusal of bad options."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_path

from skinedge.device.bundle import FlagRule


def test_metrics_match_hand_computed_values():
    from skinedge.convert.metrics import classification_metrics, threshold_for_sensitivity

    classes = ["mel", "nv"]
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probs = np.array([[.9, .1], [.6, .4], [.3, .7], [.2, .8], [.1, .9], [.7, .3], [.4, .6], [.2, .8]])
    m = classification_metrics(y, probs, classes, flag=FlagRule("mel", 0.3), reference_pred=np.zeros(8, int))
    assert m["accuracy"] == pytest.approx(6 / 8)  # predictions 0,0,1,1,1,0,1,1
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["melanoma"]["sensitivity"] == pytest.approx(2 / 3)
    assert m["melanoma"]["specificity"] == pytest.approx(4 / 5)
    assert m["melanoma"]["flag"]["sensitivity"] == pytest.approx(1.0)  # every mel has P >= 0.3
    assert m["agreement"] == pytest.approx(3 / 8)
    assert m["confusion_matrix"] == [[2, 1], [1, 4]]
    t = threshold_for_sensitivity(y == 0, probs[:, 0], 0.9)
    assert t == pytest.approx(0.3) and (probs[y == 0, 0] >= t).mean() >= 0.9


def test_flag_at_class_frequencies_matches_hand_computed_values():
    """P(mel) moved to class frequencies mel 0.2 / nv 0.8 by Bayes' rule: p_mel * 0.2 / (p_mel * 0.2 + p_nv * 0.8)."""
    from skinedge.convert.metrics import classification_metrics

    classes = ["mel", "nv"]
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probs = np.array([[.9, .1], [.6, .4], [.3, .7], [.2, .8], [.1, .9], [.7, .3], [.4, .6], [.2, .8]])
    rule = FlagRule("mel", 0.25, (("mel", 0.2), ("nv", 0.8)))
    expected = probs[:, 0] * 0.2 / (probs[:, 0] * 0.2 + probs[:, 1] * 0.8)
    assert rule.scores(probs, classes) == pytest.approx(expected)
    assert rule.scores(probs[1], classes) == pytest.approx(0.12 / 0.44)  # one vector as well as a batch
    # scores: mel .692 .273 .097; nv .059 .027 .368 .143 .059
    f = classification_metrics(y, probs, classes, flag=rule)["melanoma"]["flag"]
    assert f["sensitivity"] == pytest.approx(2 / 3) and f["specificity"] == pytest.approx(4 / 5)
    assert f["roc_auc"] == pytest.approx(12 / 15)  # positive-negative pairs ranked right: 5 + 4 + 3
    # the raw rule at the same threshold flags by P(mel) itself: every melanoma, and 2 of 5 nevi
    raw = classification_metrics(y, probs, classes, flag=FlagRule("mel", 0.25))["melanoma"]["flag"]
    assert raw["sensitivity"] == pytest.approx(1.0) and raw["specificity"] == pytest.approx(3 / 5)
    assert "roc_auc" not in raw


@pytest.mark.parametrize("balance, prior, counts, expected", [
    ("weights", "train", {"mel": 1, "nv": 3}, {"mel": 0.25, "nv": 0.75}),
    ("oversample", "train", {"mel": 1, "nv": 3}, {"mel": 0.25, "nv": 0.75}),
    # trained at square-root shares (1 : 2), the model's P(mel) is moved to the data's 1 : 4 by weights 1 : 2
    ("sqrt", "train", {"mel": 1, "nv": 4}, {"mel": pytest.approx(1 / 3, abs=1e-6), "nv": pytest.approx(2 / 3)}),
    ("none", "train", {"mel": 1, "nv": 3}, None),  # trained at the data's frequencies: its outputs carry them
    ("weights", "none", {"mel": 1, "nv": 3}, None),
    ("weights", "train", {"nv": 3}, None),  # no training melanoma: no share to read P(mel) at
])
def test_flag_frequencies(balance, prior, counts, expected):
    from skinedge.convert.export import flag_frequencies

    assert flag_frequencies(["mel", "nv"], counts, balance, "mel", prior) == expected


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_imagenet_weights_download_from_a_local_server(tmp_path, monkeypatch):
    from skinedge.train.weights import WeightsError, resolve_weights, weights_filename

    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(shared_path("weights", "mobilenet_v2_1.0_imagenet_no_top.h5"), served / weights_filename(1.0))
    (served / weights_filename(0.5)).write_text("<html>captive portal</html>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SKINEDGE_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        path = resolve_weights("imagenet", 1.0, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == (served / weights_filename(1.0)).read_bytes()
        with pytest.raises(WeightsError, match="not an HDF5"):
            resolve_weights("imagenet", 0.5, cache_dir=tmp_path / "cache")
        assert list((tmp_path / "cache").iterdir()) == [Path(path)]  # no partial file left behind
    finally:
        server.shutdown()
    with pytest.raises(WeightsError, match="cannot download"):
        resolve_weights("imagenet", 0.75, cache_dir=tmp_path / "cache")  # server gone: clear error


def test_batchnorm_folding_is_exact():
    from skinedge.convert.tfcompat import keras
    from skinedge.convert.model import build_model, fold_batchnorm

    model = build_model("cnn", 3, 32)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial batch-norm statistics, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma, beta = rng.uniform(0.5, 2, n), rng.normal(0, 1, n)
            layer.set_weights([gamma, beta, rng.normal(0, 1, n), rng.uniform(0.1, 9, n)])  # ..., mean, variance
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("tta", ["none", "dihedral"])
def test_keras_probs_average_each_images_views_batch_by_batch(tta):
    """A batch size that splits the images unevenly gives each image the mean of its own views, nothing else."""
    from skinedge.convert.export import keras_probs, keras_view_probs
    from skinedge.convert.model import build_model
    from skinedge.device.preprocess import tta_views

    model = build_model("cnn", 3, 16)
    x = np.random.default_rng(1).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    per_image = [np.mean([model.predict(v[None].astype(np.float32), verbose=0)[0] for v in tta_views(img, tta)],
                         axis=0) for img in x]
    done = []
    probs = keras_probs(model, x, batch_size=3, tta=tta, on_batch=done.append)
    assert probs.shape == (7, 3) and done == [3, 3, 1]
    np.testing.assert_allclose(probs, per_image, atol=1e-6)
    assert keras_probs(model, x[:0], tta=tta).shape == (0, 3)
    views = keras_view_probs(model, x, batch_size=3, tta=tta)  # what convert checks: each view, the image first
    assert views.shape == (len(tta_views(x[0], tta)), 7, 3) and keras_view_probs(model, x[:0], tta=tta).shape[1] == 0
    np.testing.assert_allclose(views[0], model.predict(x.astype(np.float32), verbose=0), atol=1e-6)
    np.testing.assert_array_equal(views.mean(axis=0) if tta != "none" else views[0], probs)


def test_qat_fake_quantizes_the_weights_of_convs_before_relus_per_channel(tmp_path, caplog):
    """tfmot's LayerReLUQuantize gives a conv followed by a ReLU a no-op config (no weight quantization); after
    batch-norm folding that is most of MobileNetV2, and the int8 model then ran weights QAT never saw."""
    from skinedge.convert.tfcompat import keras
    from skinedge.convert.model import (ConvBeforeReLU, PerChannelWeights, build_model, load_qat_model,
                                        quantize_model)

    qat = quantize_model(build_model("mobilenetv2", 3, 32, alpha=0.35))
    convs = [layer for layer in qat.layers if isinstance(getattr(layer, "layer", None),
                                                         (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    assert convs and all(type(layer.quantize_config).__name__ != "NoOpQuantizeConfig" for layer in convs)
    depthwise = next(layer for layer in convs if isinstance(layer.layer, keras.layers.DepthwiseConv2D))
    assert isinstance(depthwise.quantize_config, ConvBeforeReLU)
    # per channel: a channel 1000x smaller than the others keeps its own 8-bit grid (per tensor it would be zeroed)
    quantizer = PerChannelWeights()
    quantizer.build(depthwise.layer.depthwise_kernel.shape, "k", depthwise)
    kernel = np.random.default_rng(0).normal(size=depthwise.layer.depthwise_kernel.shape).astype(np.float32)
    kernel[:, :, 0, :] *= 1e-3
    fq = quantizer(kernel, False, {}).numpy()
    assert np.abs(fq[:, :, 0] - kernel[:, :, 0]).max() <= np.abs(kernel[:, :, 0]).max() / 127 / 2 + 1e-9
    assert 0 < len(np.unique(np.round(fq[:, :, 1] / (np.abs(kernel[:, :, 1]).max() / 127), 4))) <= 255
    # a run trained before this change (convs before ReLUs without weight quantizers) still loads
    legacy = quantize_model(build_model("mobilenetv2", 3, 32, alpha=0.35), relu_conv_weights=False)
    legacy.save_weights(tmp_path / "qat.weights.h5")
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    loaded = load_qat_model("mobilenetv2", 3, 32, 0.35, str(tmp_path / "qat.weights.h5"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), legacy.predict(x, verbose=0), atol=1e-6)
    assert "earlier layout" in caplog.text


@pytest.mark.parametrize("args", [
    ["--epochs", "-1"], ["--img-size", "0"], ["--batch-size", "0"], ["--arch", "resnet"], ["--weights", "nope.h5"],
    ["--mixup", "-0.1"], ["--mixup", "nan"], ["--qat-distill", "1.5"], ["--qat-distill", "-0.2"],
    ["--augment-level", "wild"],
])
def test_train_refuses_nonsense_options(tmp_path, args):
    from skinedge.cli import main

    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_train_reports_a_bad_data_folder_in_one_line(tmp_path):
    from skinedge.cli import main

    (tmp_path / "data" / "only").mkdir(parents=True)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                                       "--weights", "none"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "data" in result.output and "Traceback" not in result.output


def test_all_zero_weight_channels_keep_their_bias_and_qat_is_checked_on_the_int32_bias_grid(tmp_path):
    """ImageNet MobileNetV2 has conv channels whose weights are all zero and whose folded bias is not. With a weight
    range near 0 the int32 bias scale (input scale x weight scale) underflowed and the converter saturated such a
    bias at the int32 limit (0.92 for 2.28 on the HAM10000 model). And the verification reference rounds every
    bias to exactly the grid the converter stores it on."""
    from skinedge.convert.export import to_int8_tflite
    from skinedge.convert.model import build_model, calibrate_qat_ranges, int32_biases, quantize_model
    from skinedge.device.runtime import load_interpreter

    qat = quantize_model(build_model("mobilenetv2", 3, 32, alpha=0.35))
    wrapper = qat.get_layer("quant_Conv1")
    kernel = next(v for v in wrapper.weights if v.name.endswith("/kernel:0"))
    dead = kernel.numpy()
    dead[..., 0] = 0.0
    kernel.assign(dead)
    bias = wrapper.layer.bias
    bias.assign(np.concatenate([[2.28], bias.numpy()[1:]]).astype(np.float32))
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    calibrate_qat_ranges(qat, x)
    (tmp_path / "m.tflite").write_bytes(to_int8_tflite(qat, x))
    interp = load_interpreter(tmp_path / "m.tflite", num_threads=1).interpreter
    detail = next(d for d in interp.get_tensor_details()
                  if d["dtype"] == np.int32 and "quant_Conv1/BiasAdd" in d["name"] and len(d["shape"]) == 1)
    stored = interp.get_tensor(detail["index"]).astype(np.float64) * detail["quantization_parameters"]["scales"]
    assert abs(stored[0] - 2.28) < 1e-3  # not saturated
    with int32_biases(qat):
        np.testing.assert_allclose(bias.numpy(), stored, rtol=1e-5, atol=1e-9)
    assert abs(bias.numpy()[0] - 2.28) < 1e-6  # restored


@pytest.mark.parametrize("finetune_from", [0.0, 0.6])
def test_finetune_from_sets_how_much_of_the_backbone_trains(finetune_from):
    from skinedge.convert.tfcompat import keras

    from skinedge.convert.model import backbone_layers, build_model, set_phase

    model = build_model("mobilenetv2", 3, 32, 0.35, weights_path=None)
    set_phase(model, "finetune", "mobilenetv2", finetune_from)
    layers = backbone_layers(model)
    weighted = [layer for layer in layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    frozen = [layer for layer in weighted if not layer.trainable]
    cut = int(len(layers) * finetune_from)
    assert frozen == [layer for layer in layers[:cut] if layer in weighted]
    assert all(layer.trainable for layer in model.layers if layer not in layers)  # the head always trains
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))


def test_the_bundle_says_how_its_split_kept_lesions_apart():
    from skinedge.convert.export import split_description

    ham = split_description({"extra": {"layout": "ham10000"}, "lesion_ids": None})
    assert "lesion_id from the HAM10000 metadata" in ham
    table = split_description({"extra": {"layout": "folders"}, "lesion_ids": "meta.csv"})
    assert "lesion ids from meta.csv" in table
    # an older run (no lesion_ids in its config) of a folder set claims no lesion grouping it did not have
    plain = split_description({"extra": {"layout": "folders"}})
    assert "grouped by image" in plain and "may sit on both sides" in plain
    warm = split_description({"extra": {"layout": "folders"}, "lesion_ids": "meta.csv", "init_from": "runs/ham"})
    assert "lesion ids from meta.csv" in warm and "that runs/ham (the run it started from) trained or validated" in warm


def _set_epoch_weights(model, rng) -> list[np.ndarray]:
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()]
    model.set_weights(weights)
    return weights


def test_weight_average_is_the_mean_of_its_window_and_continues_after_a_restart(tmp_path, caplog):
    from skinedge.convert.tfcompat import keras
    from skinedge.train.swa import WeightAverage

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    rng, state = np.random.default_rng(0), tmp_path / "finetune.swa.npz"
    first = WeightAverage(start_epoch=2, state_file=state)
    first.set_model(model)
    first.on_train_begin()
    window = []
    for epoch in range(4):  # epochs 0 and 1 fall before the window
        weights = _set_epoch_weights(model, rng)
        first.on_epoch_end(epoch)
        if epoch >= 2:
            window.append(weights)
    assert first.count == 2 and state.is_file() and not list(tmp_path.glob("*.tmp*"))
    # the process is killed; the resumed phase replays epoch 3 (its backup was not written yet), then goes on
    resumed = WeightAverage(start_epoch=2, state_file=state)
    resumed.set_model(model)
    resumed.on_train_begin()
    assert (resumed.count, resumed.last_epoch) == (2, 3)
    _set_epoch_weights(model, rng)
    resumed.on_epoch_end(3)  # already in the average: not counted twice
    for epoch in (4, 5):
        window.append(_set_epoch_weights(model, rng))
        resumed.on_epoch_end(epoch)
    assert resumed.count == 4
    resumed.apply(model)
    for got, *seen in zip(model.get_weights(), *window):
        np.testing.assert_allclose(got, np.mean(seen, axis=0), rtol=1e-5, atol=1e-6)
    # a damaged state file is reported and the average starts again rather than stopping the run
    state.write_bytes(b"not an npz")
    restarted = WeightAverage(start_epoch=2, state_file=state)
    restarted.set_model(model)
    restarted.on_train_begin()
    assert restarted.count == 0 and "unreadable" in caplog.text
    with pytest.raises(ValueError, match="no epoch"):
        restarted.apply(model)


def test_train_refuses_more_swa_epochs_than_fine_tuning_epochs(tmp_path):
    from conftest import assert_one_line_error
    from skinedge.cli import main

    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                                       "--epochs", "5", "--swa-epochs", "6"])
    assert_one_line_error(result, 2, "--swa-epochs", "--epochs")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("best_single_epoch", [-1.0, 2.0])
def test_weight_average_replaces_the_best_checkpoint_only_when_it_scores_higher(tmp_path, best_single_epoch):
    from skinedge.convert.tfcompat import keras
    from skinedge.train.fit import MONITOR, _use_average
    from skinedge.train.swa import WeightAverage

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    best_file = tmp_path / "finetune.weights.h5"
    model.save_weights(str(best_file))
    before = best_file.read_bytes()
    swa = WeightAverage(0, tmp_path / "finetune.swa.npz")
    swa.set_model(model)
    rng = np.random.default_rng(3)
    for epoch in range(3):
        _set_epoch_weights(model, rng)
        swa.on_epoch_end(epoch)
    x, y = rng.normal(size=(20, 3)).astype(np.float32), rng.integers(0, 2, 20)
    result = _use_average(swa, model, (x, y), 8, best_single_epoch, best_file)
    assert result["epochs"] == 3 and 0 <= result[MONITOR] <= 1
    assert result["kept"] == (best_single_epoch < 0)  # a score of 2 cannot be beaten, -1 always is
    if result["kept"]:
        reloaded = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
        reloaded.load_weights(str(best_file))
        for got, want in zip(reloaded.get_weights(), swa.mean):
            np.testing.assert_allclose(got, want)
    else:
        assert best_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["finetune.swa.npz", "finetune.weights.h5"]


def test_mixup_blends_each_image_with_its_partner_by_the_drawn_share():
    from skinedge.train.pipeline import mix_batch

    images = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 2, 2, 3), np.float32)
    target = np.eye(4, dtype=np.float32)
    weight = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    mixed, mixed_target, mixed_weight = (t.numpy() for t in mix_batch(images, target, weight,
                                                                       np.array([1.0, 0.5, 0.25, 0.0])))
    # partners are the reversed batch: 0-3, 1-2
    np.testing.assert_allclose(mixed[:, 0, 0, 0], [0.0, 1.5, 0.25 * 2 + 0.75 * 1, 0.0])
    np.testing.assert_allclose(mixed_target[1], [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(mixed_target.sum(1), 1.0)
    np.testing.assert_allclose(mixed_weight, [1.0, 2.5, 0.25 * 3 + 0.75 * 2, 1.0])


def test_sample_beta_has_the_beta_distributions_mean_and_variance():
    from skinedge.train.pipeline import sample_beta

    lam = sample_beta(20_000, 0.4, seed=1).numpy()
    assert lam.min() >= 0 and lam.max() <= 1
    assert lam.mean() == pytest.approx(0.5, abs=0.01)
    assert lam.var() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.05)  # Var Beta(a, a) = 1 / (4 (2a + 1))
    assert np.isfinite(sample_beta(1000, 1e-3, seed=2).numpy()).all()  # both Gamma draws can underflow to 0


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_training_batches_carry_class_weights_blended_like_their_targets(mixup):
    from skinedge.train.pipeline import class_weights, make_dataset

    y = np.array([0] * 40 + [1] * 16 + [2] * 8)
    x = np.random.default_rng(0).integers(0, 256, (len(y), 8, 8, 3), dtype=np.uint8)
    table = class_weights(y, 3)
    ds = make_dataset(x, y, 3, batch_size=16, training=True, seed=3, augment=None, class_weight=table, mixup=mixup)
    batches = [tuple(t.numpy() for t in batch) for batch in ds]
    images, target, weight = (np.concatenate(parts) for parts in zip(*batches))
    assert images.shape == x.shape and np.allclose(target.sum(1), 1)
    # a blend of two images has the same blend of their class weights (one-hot: the class's own weight)
    np.testing.assert_allclose(weight, target @ np.array([table[c] for c in range(3)]), rtol=1e-5)
    blended = np.mean(target.max(1) < 0.99)
    # pairs of one class keep a one-hot target, and Beta(0.4, 0.4) puts many shares near 0 or 1
    assert blended == 0 if mixup == 0 else blended > 0.2
    val = make_dataset(x, y, 3, batch_size=16, training=False, mixup=mixup)
    assert all(len(batch) == 2 and batch[1].numpy().max() == 1 for batch in val)  # evaluation never mixes


@pytest.mark.parametrize("balance, shares", [("oversample", [1 / 3] * 3), ("sqrt", [4 / 8, 2 / 8, 2 / 8]),
                                              ("weights", [16 / 24, 4 / 24, 4 / 24])])
def test_class_sampling_draws_classes_equally_by_square_root_or_as_they_come(balance, shares):
    from skinedge.train.config import OVERSAMPLE
    from skinedge.train.pipeline import make_dataset

    y = np.array([0] * 1600 + [1] * 400 + [2] * 400)  # square roots 40 : 20 : 20
    x = y.astype(np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)  # every pixel its class
    ds = make_dataset(x, y, 3, batch_size=200, training=True, seed=1, augment=None,
                      oversample=OVERSAMPLE.get(balance))
    batches = [(batch[0].numpy()[:, 0, 0, 0], batch[1].numpy().argmax(1)) for batch in ds]  # one pass: one shuffle
    images, labels = (np.concatenate(parts) for parts in zip(*batches))
    assert len(labels) == len(y) and np.array_equal(images, labels)  # an epoch is as long; images keep their labels
    np.testing.assert_allclose(np.bincount(labels, minlength=3) / len(y), shares, atol=0.03)


def test_random_transpose_turns_about_half_of_a_batch_and_leaves_the_rest():
    from skinedge.train.pipeline import random_transpose

    images = np.random.default_rng(0).integers(0, 256, (200, 5, 5, 3)).astype(np.float32)
    out = random_transpose(images, seed=1).numpy()
    same = [np.array_equal(o, i) for o, i in zip(out, images)]
    swapped = [np.array_equal(o, i.transpose(1, 0, 2)) for o, i in zip(out, images)]
    assert all(a != b for a, b in zip(same, swapped))  # every image is either itself or its transpose
    assert 70 < sum(swapped) < 130


@pytest.mark.parametrize("rot90", [False, True])
def test_rot90_augmentation_reaches_the_turned_orientations_of_square_images_only(rot90):
    """With the flips alone a bright top half stays a bright top or bottom half (RandomRotation's +-29 degrees
    never turn it past 45); --rot90 also turns it into a left or right half, which only a square image can take."""
    from skinedge.train.pipeline import make_dataset

    x = np.zeros((64, 16, 16, 3), np.uint8)
    x[:, :8] = 200
    images = np.concatenate([b[0].numpy() for b in make_dataset(x, np.zeros(64, np.int64), 2, 16, training=True,
                                                                 seed=5, rot90=rot90)])[..., 0]
    by_rows = np.abs(images[:, :8].mean((1, 2)) - images[:, 8:].mean((1, 2)))
    by_columns = np.abs(images[:, :, :8].mean((1, 2)) - images[:, :, 8:].mean((1, 2)))
    turned = np.mean(by_columns > by_rows)
    assert 0.3 < turned < 0.7 if rot90 else turned == 0
    wide = np.zeros((8, 6, 10, 3), np.uint8)
    batch = next(iter(make_dataset(wide, np.zeros(8, np.int64), 2, 8, training=True, seed=5, rot90=True)))[0]
    assert batch.shape == (8, 6, 10, 3)  # a wide image is never turned


def test_shift_hue_turns_each_image_by_its_own_share_of_the_colour_circle():
    from skinedge.train.pipeline import shift_hue

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(shift_hue(images, np.zeros(3, np.float32)).numpy(), images, atol=0.05)
    red = np.zeros((3, 2, 2, 3), np.float32)
    red[..., 0] = 200
    out = shift_hue(red, np.array([1 / 3, -1 / 3, 0.0], np.float32)).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [0, 200, 0], atol=0.05)  # red a third of the way on is green
    np.testing.assert_allclose(out[1, 0, 0], [0, 0, 200], atol=0.05)  # and a third back, blue (the circle wraps)
    np.testing.assert_allclose(out[2], red[2], atol=0.05)
    grey = np.full((1, 2, 2, 3), 90, np.float32)  # no saturation: no hue to turn
    np.testing.assert_allclose(shift_hue(grey, np.array([0.2], np.float32)).numpy(), grey, atol=0.05)


def test_augment_levels_are_the_pipelines_and_strong_goes_further_than_mild():
    from skinedge.train.config import AUGMENT_LEVELS, TrainConfig
    from skinedge.train.pipeline import AUGMENTATIONS, make_dataset

    assert tuple(AUGMENTATIONS) == AUGMENT_LEVELS
    with pytest.raises(ValueError, match="augment level"):
        TrainConfig(data="d", out="o", augment_level="wild").validate()
    x = np.random.default_rng(2).integers(0, 256, (64, 24, 24, 3)).astype(np.uint8)
    y = np.zeros(64, np.int64)

    def batch(level):
        return next(iter(make_dataset(x, y, 2, 64, training=True, seed=4, augment=level)))[0].numpy()

    mild, strong, plain = batch("mild"), batch("strong"), batch(None)
    assert mild.shape == strong.shape == x.shape and strong.min() >= 0 and strong.max() <= 255
    order = np.argsort(x.reshape(64, -1).sum(1))  # training shuffles: match images by their pixel sums
    np.testing.assert_array_equal(plain[np.argsort(plain.reshape(64, -1).sum(1))], x[order])  # None: as they are
    # hue turns and stronger colour changes move a batch's colours further from the images' own
    shift = {name: np.abs(np.sort(b.mean((1, 2)), 0) - np.sort(x.mean((1, 2)), 0)).mean()
             for name, b in (("mild", mild), ("strong", strong))}
    assert shift["strong"] > shift["mild"]


@pytest.mark.parametrize("extra", [["--img-size", "96"], ["--mixup", "0.2"], ["--split-seed", "1"],
                                   ["--warmup-epochs", "1"]])
def test_float_from_refuses_float_settings_of_its_own(tmp_path, extra):
    """With --float-from the float run's settings apply: a value given beside it would be ignored, so it is a
    usage error naming the option, before anything is read."""
    from skinedge.cli import main

    (tmp_path / "float-run").mkdir()
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "r"), "--float-from",
                                       str(tmp_path / "float-run"), "--qat-distill", "1", *extra])
    assert result.exit_code == 2, result.output
    assert extra[0] in result.output and "--float-from" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("extra", [[], ["--deterministic"]])
def test_float_from_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path, extra):
    """--deterministic is this run's own setting, so --float-from takes it: the one line is about the source run."""
    from skinedge.cli import main

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "not-a-run").mkdir()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                                       "--float-from", str(tmp_path / "not-a-run"), *extra])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "not-a-run" in result.output and "config.json" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r" / "state.json").exists()


def _toy_models(seed: int):
    from skinedge.convert.tfcompat import keras

    keras.utils.set_random_seed(seed)

    def make():
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8, "relu")(inp)))

    return make(), make()


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_distiller_pulls_the_student_towards_the_teacher_or_the_labels(weight):
    """With weight 1 the student learns the teacher's answers and ignores labels that contradict them; with weight
    0 it learns the labels. The teacher never changes."""
    from skinedge.convert.tfcompat import keras
    from skinedge.train.distill import Distiller

    student, teacher = _toy_models(0)
    x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    soft = teacher.predict(x, verbose=0)
    labels = keras.utils.to_categorical((soft.argmax(1) + 1) % 3, 3)  # never the teacher's answer
    before = [w.copy() for w in teacher.get_weights()]
    model = Distiller(student, teacher, weight)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=keras.losses.CategoricalCrossentropy())
    model.fit(x, labels, sample_weight=np.ones(len(x), np.float32), batch_size=32, epochs=30, verbose=0)
    pred = model.predict(x, verbose=0).argmax(1)
    agreement = np.mean(pred == soft.argmax(1))
    assert agreement > 0.9 if weight == 1.0 else agreement < 0.2
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_distiller_saves_and_loads_the_student_alone(tmp_path):
    from skinedge.train.distill import Distiller

    student, teacher = _toy_models(1)
    model = Distiller(student, teacher, 0.5)
    model.save_weights(str(tmp_path / "student.weights.h5"))
    fresh, _ = _toy_models(2)
    fresh.load_weights(str(tmp_path / "student.weights.h5"))
    for a, b in zip(student.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="between 0"):
        Distiller(student, teacher, 1.5)


def test_settling_runs_after_fine_tuning_at_a_tenth_of_its_rate_and_only_blending_phases_mix():
    from skinedge.train.config import TrainConfig, phase_plan
    from skinedge.train.fit import phase_mixup

    cfg = TrainConfig(data="d", out="o", epochs=5, settle_epochs=2, qat_epochs=3, lr=1e-3, mixup=0.4)
    assert phase_plan(cfg) == [("head", 2, 1e-3), ("finetune", 5, 1e-4), ("settle", 2, 1e-5), ("qat", 3, 1e-5)]
    assert [phase_mixup(cfg, p) for p, _, _ in phase_plan(cfg)] == [0.4, 0.4, 0.0, 0.0]
    cnn = TrainConfig(data="d", out="o", arch="cnn", epochs=5, settle_epochs=1, qat_epochs=0, lr=1e-3)
    assert phase_plan(cnn) == [("finetune", 5, 1e-3), ("settle", 1, 1e-4)]
    assert [p for p, _, _ in phase_plan(TrainConfig(data="d", out="o"))] == ["head", "finetune", "qat"]


def test_bootstrap_balanced_accuracy_intervals():
    from skinedge.convert.metrics import bootstrap_balanced_accuracy

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)  # right on about 80 % of images
    worse = np.where(rng.random(300) < 0.6, y, (y + 2) % 3)
    groups = [f"lesion{i}" for i in range(300)]
    out = bootstrap_balanced_accuracy(y, {"good": good, "worse": worse, "same": good.copy()}, groups,
                                      pairs=[("good", "worse"), ("good", "same")], resamples=400)
    point = np.mean([(good[y == c] == c).mean() for c in range(3)])
    lo, hi = out["balanced_accuracy"]["good"]
    assert lo < point < hi and hi - lo < 0.2
    assert out["differences"]["good - worse"][0] > 0  # 20 points apart on 300 images: clearly better
    assert out["differences"]["good - same"] == [0.0, 0.0]  # paired: identical predictions never differ
    assert bootstrap_balanced_accuracy(y, {"good": good}, groups, resamples=400) == \
        {**out, "balanced_accuracy": {"good": [lo, hi]}, "differences": {}}  # seeded: the same draws again


def test_bootstrap_of_no_images_has_no_intervals():
    from skinedge.convert.metrics import bootstrap_balanced_accuracy

    out = bootstrap_balanced_accuracy(np.zeros(0, int), {"m": np.zeros(0, int)}, [], pairs=[("m", "m")])
    assert out["balanced_accuracy"] == {"m": [None, None]} and out["differences"] == {"m - m": [None, None]}


def test_bootstrap_draws_a_lesions_images_together():
    """60 images of 6 lesions (10 each) carry the evidence of 6 lesions, not of 60 images: the interval widens."""
    from skinedge.convert.metrics import bootstrap_balanced_accuracy

    y = np.repeat([0, 1, 0, 1, 0, 1], 10)
    pred = np.repeat([0, 1, 1, 1, 0, 0], 10)  # lesions 3 and 6 wrong
    per_lesion = [f"l{i // 10}" for i in range(60)]
    per_image = [f"i{i}" for i in range(60)]
    wide = bootstrap_balanced_accuracy(y, {"m": pred}, per_lesion, resamples=500)["balanced_accuracy"]["m"]
    narrow = bootstrap_balanced_accuracy(y, {"m": pred}, per_image, resamples=500)["balanced_accuracy"]["m"]
    assert wide[1] - wide[0] > 1.5 * (narrow[1] - narrow[0])


@pytest.mark.parametrize("split, extra, expected", [
    ("val", [], "the run's val split (1 images, lesion-disjoint from training)"),
    ("all", [], "the run's train, val and test splits (3 images, training images included: optimistic figures)"),
    ("all", ["e.jpg"], "splits (not its --extra-train images) (3 images, training images included"),
])
def test_compare_says_which_images_it_scored_and_that_all_includes_training(split, extra, expected):
    """`compare --split all` scores the run's training images too: its description must not call them held out."""
    from types import SimpleNamespace

    from skinedge.train import data as D
    from skinedge.train.compare import _select

    splits = {name: [D.Sample(f"{name}.jpg", "mel", f"L_{name}")] for name in ("train", "val", "test")}
    if extra:
        splits[D.EXTRA_SPLIT] = [D.Sample(path, "mel", path) for path in extra]
    run = SimpleNamespace(path=Path("run"), splits=splits, config={"data": "ham", "extra": {"layout": "ham10000"}})
    samples, where, unit = _select(None, run, split, None, 0)
    assert expected in where and unit == "lesion"
    assert [s.path for s in samples] == (["train.jpg", "val.jpg", "test.jpg"] if split == "all" else ["val.jpg"])


@pytest.mark.parametrize("warmup", [0, 40])
def test_lr_schedule_warms_up_linearly_then_decays_to_five_percent(warmup):
    """--warmup-epochs: the fine-tuning rate starts at 0 and reaches its peak after the warm-up steps; the cosine
    decay then runs over the remaining steps to 5 % of the peak, as without warm-up."""
    from skinedge.train.fit import lr_schedule

    schedule = lr_schedule(1e-4, 200, warmup)
    rate = [float(schedule(step)) for step in range(201)]
    assert rate[warmup] == pytest.approx(1e-4) and rate[200] == pytest.approx(5e-6)
    assert all(a >= b - 1e-12 for a, b in zip(rate[warmup:], rate[warmup + 1:]))  # non-increasing after the peak
    if warmup:
        assert rate[0] == 0 and rate[warmup // 2] == pytest.approx(5e-5)
        assert all(a < b for a, b in zip(rate[:warmup], rate[1:warmup + 1]))
    assert float(lr_schedule(1e-4, 1, 5)(0)) == pytest.approx(1e-4)  # a one-step phase has no room to warm up


@pytest.mark.parametrize("command", [["train"], ["convert"], ["compare"], ["card"], ["runs"], ["device"],
                                     ["device", "classify"], ["device", "run"], ["device", "bench"],
                                     ["device", "selftest"]])
def test_every_help_gives_an_example(command):
    from skinedge.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "skinedge " + " ".join(command) in result.output
