"""The device stage must never load TensorFlow or Keras: checked at run time in a fresh interpreter, and
statically over the source of skinedge/device/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skinedge.device

FORBIDDEN = ("tensorflow", "tf_keras", "keras")
DEVICE_DIR = Path(skinedge.device.__file__).resolve().parent

SCRIPT = r"""
import json, sys
from skinedge.cli import main
try:
    main(["device", "classify", sys.argv[1], sys.argv[2], "--json"], standalone_mode=False)
except SystemExit as exc:  # main exits 1 on failed inputs even without standalone mode
    if exc.code:
        raise
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras"))
print("MODULES " + json.dumps(loaded))
"""


def test_device_classify_does_not_import_tensorflow(bundle_dir, tmp_path):
    image = tmp_path / "dark.png"
    Image.fromarray(np.full((40, 40, 3), (25, 20, 20), np.uint8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(bundle_dir), str(image)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    record = json.loads(lines[0])
    assert record["path"] == str(image) and record["label"] == "mel" and record["flag"] is True
    assert lines[-1].startswith("MODULES ")
    assert json.loads(lines[-1][len("MODULES "):]) == []


def _imported_modules(source: str, filename: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (  # importlib.import_module("...") / __import__("...") with a literal name
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def test_device_source_has_no_tensorflow_imports():
    files = sorted(DEVICE_DIR.glob("*.py"))
    assert len(files) >= 7  # the check really looks at the device stage
    offenders = []
    for path in files:
        for module in _imported_modules(path.read_text(encoding="utf-8"), str(path)):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_import_checker_catches_imports():
    source = ("import tensorflow as tf\nfrom tf_keras import layers\n"
              "import importlib\nimportlib.import_module('keras')\n")
    assert {"tensorflow", "tf_keras", "keras"} <= _imported_modules(source, "x.py")


def test_device_environment_has_no_tensorflow_installed():
    """`make test-device` sets SKINEDGE_DEVICE_ONLY=1 in the .[device] environment: TensorFlow must be absent."""
    import importlib.util
    import os

    if os.environ.get("SKINEDGE_DEVICE_ONLY") != "1":
        pytest.skip("only meaningful in the device-only environment (make test-device)")
    for name in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed in the device environment"


def test_stages_depend_one_way():
    """device <- convert <- train: device imports neither later stage, convert does not import train."""
    root = DEVICE_DIR.parent
    later = {"device": ("skinedge.convert", "skinedge.train"), "convert": ("skinedge.train",)}
    offenders = []
    for stage, forbidden in later.items():
        files = sorted((root / stage).glob("*.py"))
        assert files, f"no sources found for {stage}"
        for path in files:
            for module in _imported_modules(path.read_text(encoding="utf-8"), str(path)):
                if module.startswith(forbidden):
                    offenders.append(f"{stage}/{path.name}: {module}")
    assert offenders == []
