"""train --ema: a moving average of the fine-tuning weights is what validation, the checkpoint and the history see,
training goes on from the live weights, and an interrupted phase continues the same average."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner


def _model(keras):
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                             keras.layers.Dense(2, activation="softmax")])


def _recorder(keras, model, seen: list, when: str):
    """A callback that appends the model's weights to `seen` at the end of every batch or epoch."""
    hook = {"batch": "on_train_batch_end", "epoch": "on_epoch_end"}[when]
    return keras.callbacks.LambdaCallback(**{hook: lambda *_: seen.append(model.get_weights())})


def test_decay_warms_up_then_holds():
    from skinedge.train.ema import ema_decay

    assert ema_decay(0.998, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.998, 90) == pytest.approx(0.91)
    assert ema_decay(0.998, 10_000) == 0.998


def test_validation_and_checkpoint_see_the_average_and_training_goes_on_from_the_live_weights(tmp_path):
    from skinedge.convert.tfcompat import keras
    from skinedge.train.ema import ModelEMA, ema_decay

    keras.utils.set_random_seed(0)
    model = _model(keras)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 2, 12), 2)
    start = model.get_weights()
    steps_seen, scored, live = [], [], []
    ema = ModelEMA(0.5, tmp_path / "finetune.ema.npz")
    best_file = tmp_path / "finetune.weights.h5"
    callbacks = [ema.scoring(), _recorder(keras, model, scored, "epoch"),
                 keras.callbacks.ModelCheckpoint(str(best_file), save_weights_only=True),
                 ema, _recorder(keras, model, live, "epoch"), _recorder(keras, model, steps_seen, "batch")]
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, callbacks=callbacks, verbose=0)

    assert len(steps_seen) == 9 and int(ema.steps.numpy()) == 9
    expected, averages = [w.astype(np.float64) for w in start], []
    for t, weights in enumerate(steps_seen, 1):
        d = ema_decay(0.5, t)
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights)]
        if t % 3 == 0:
            averages.append(expected)
    for epoch in range(3):
        for got, want in zip(scored[epoch], averages[epoch]):  # what validation scores: the average
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        for got, want in zip(live[epoch], steps_seen[3 * epoch + 2]):  # swapped back: training goes on from these
            np.testing.assert_array_equal(got, want)
    assert not all(np.allclose(a, b) for a, b in zip(averages[-1], steps_seen[-1]))
    for got, want in zip(model.get_weights(), steps_seen[-1]):
        np.testing.assert_array_equal(got, want)
    saved = _model(keras)
    saved.load_weights(str(best_file))  # the checkpoint holds the average of the last epoch
    for got, want in zip(saved.get_weights(), averages[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # batch norm's moving statistics are averaged too: they are weights the averaged model predicts with
    assert len(ema.shadow) == len(model.weights) == 8

    # an interrupted phase: a new callback on the same file continues the same average and step count
    resumed = ModelEMA(0.5, tmp_path / "finetune.ema.npz")
    resumed.set_model(model)
    resumed.on_train_begin()
    resumed.on_train_batch_begin(0)
    assert int(resumed.steps.numpy()) == 9
    for got, want in zip(resumed.shadow, averages[-1]):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp*"))
    # killed after the state file of epoch 2 but before its backup: the resumed phase runs epoch 2 again, and the
    # average, which holds it already, takes in neither its steps nor a new state file
    saved_before = (tmp_path / "finetune.ema.npz").read_bytes()
    resumed.on_epoch_begin(2)
    resumed.on_train_batch_end(0)
    resumed.on_epoch_end(2)
    assert int(resumed.steps.numpy()) == 9 and (tmp_path / "finetune.ema.npz").read_bytes() == saved_before
    resumed.on_epoch_begin(3)  # the first epoch it has not seen is taken in
    resumed.on_train_batch_end(0)
    resumed.on_epoch_end(3)
    assert int(resumed.steps.numpy()) == 10 and resumed.last_epoch == 3


def test_a_damaged_state_file_restarts_the_average_from_the_live_weights(tmp_path, caplog):
    from skinedge.convert.tfcompat import keras
    from skinedge.train.ema import ModelEMA

    model = _model(keras)
    state = tmp_path / "finetune.ema.npz"
    state.write_bytes(b"not an npz")
    ema = ModelEMA(0.9, state)
    ema.set_model(model)
    ema.on_train_begin()
    assert "unreadable" in caplog.text
    ema.on_train_batch_begin(0)
    assert int(ema.steps.numpy()) == 0
    for got, want in zip(ema.shadow, model.get_weights()):
        np.testing.assert_array_equal(got.numpy(), want)
    np.savez(state, n_weights=1, steps=5, last_epoch=0, w0=np.zeros(7, np.float32))  # another model's average
    other = ModelEMA(0.9, state)
    other.set_model(model)
    other.on_train_begin()
    assert "another model" in caplog.text
    shapes = [w.shape for w in model.get_weights()]
    np.savez(state, n_weights=len(shapes), steps=5, **{f"w{i}": np.ones(s, np.float32) for i, s in enumerate(shapes)})
    older = ModelEMA(0.9, state)  # written before the average recorded its last epoch
    older.set_model(model)
    older.on_train_begin()
    assert "written by an earlier skinedge (no last_epoch)" in caplog.text
    older.on_train_batch_begin(0)
    assert int(older.steps.numpy()) == 0


@pytest.mark.parametrize("args, hint", [
    (["--ema", "0.99", "--swa-epochs", "2"], "--ema"),
    (["--ema", "1"], "--ema"),
    (["--ema", "-0.5"], "--ema"),
])
def test_train_refuses_an_ema_it_cannot_use(tmp_path, args, hint):
    from conftest import assert_one_line_error
    from skinedge.cli import main

    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "r"), *args])
    assert_one_line_error(result, 2, hint)
    assert not (tmp_path / "r").exists()


def test_config_refuses_both_averages():
    from skinedge.train.config import TrainConfig

    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(data="d", out="o", epochs=5, ema=0.99, swa_epochs=2).validate()
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(data="d", out="o", ema=1.0).validate()
