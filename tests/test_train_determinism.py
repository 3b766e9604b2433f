"""`skinedge train --deterministic`: the same command run twice gives bit-identical float and QAT weights, with
augmentation, rot90 and mixup on. Without the flag two CPU runs of one command differ (threaded tf.data maps draw
their random numbers in whatever order the threads run), so each run here is its own process: op determinism is
process-wide and TensorFlow cannot switch it back off."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from conftest import shared_path

ARGS = ["--arch", "cnn", "--weights", "none", "--img-size", "32", "--limit", "150", "--epochs", "1",
        "--qat-epochs", "1", "--mixup", "0.4", "--rot90", "--seed", "3"]


def arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array in a Keras weights file, by its name in the file."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_two_deterministic_runs_give_bit_identical_weights(tmp_path: Path):
    data = shared_path("data", "ham10000")
    for name in ("a", "b"):
        proc = subprocess.run([sys.executable, "-m", "skinedge", "train", str(data), "--out", str(tmp_path / name),
                               *ARGS, "--deterministic"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["deterministic"] is True
    for weights in ("float.weights.h5", "qat.weights.h5"):
        a, b = arrays(tmp_path / "a" / weights), arrays(tmp_path / "b" / weights)
        assert a and a.keys() == b.keys(), weights
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{weights}: {name}")

