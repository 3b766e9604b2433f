"""Security and privacy of the device path (issue #4): no network, no unsafe deserialisation, no paths built from
names in the data. Device environment: no TensorFlow.

    - `device classify` opens no network socket: checked in-process with socket patched to refuse, and in a fresh
      interpreter where socket is patched before skinedge (or the TFLite runtime) is imported.
    - No pickle anywhere in the code base, numpy loads refuse pickles, Keras models are rebuilt from code (only
      weights are loaded) or loaded in safe mode: an AST scan of every module, with a test that the scan catches
      each pattern.
    - Labels are names, never paths: a bundle whose labels look like paths ('../../x') classifies and writes
      nothing anywhere. (The workstation side, class names from metadata and folders in run dirs and reports, is
      in test_train_badinput.py.)
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import skinedge
from skinedge.cli import main
from skinedge.device.bundle import BundleError, load_model_source

PACKAGE = Path(skinedge.__file__).resolve().parent
LABELS = ["akiec", "mel", "nv"]


# -- no network ---------------------------------------------------------------------------------------------


class NetworkRefused(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every way Python opens a network connection raises, and is recorded."""
    attempts: list[str] = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(f"{what}{args[1:2] if what.startswith('socket.') else args[:1]}")
            raise NetworkRefused(f"network access attempted: {what}")

        return refused

    for name in ("connect", "connect_ex", "sendto", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("gethostbyname"))
    return attempts


def test_the_network_guard_catches_a_connection(no_network):
    """The guard itself works: without this, the tests below could pass with a guard that catches nothing."""
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)
    assert no_network


def test_device_classify_opens_no_socket(no_network, bundle_dir, colour_files):
    result = CliRunner().invoke(main, ["device", "classify", str(bundle_dir), *map(str, colour_files.values()),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == list(colour_files)
    assert no_network == []


def test_device_classify_bad_inputs_open_no_socket(no_network, bundle_dir, tmp_path, colour_files):
    """The error paths too (a missing file, a bad image, a bad model) stay offline."""
    (tmp_path / "bad.jpg").write_text("<html>")
    result = CliRunner().invoke(main, ["device", "classify", str(bundle_dir), str(tmp_path / "bad.jpg"),
                                       str(tmp_path / "missing.png"), str(colour_files["nv"]), "--json"])
    assert result.exit_code == 1
    (tmp_path / "model.tflite").write_bytes(os.urandom(512))
    result = CliRunner().invoke(main, ["device", "classify", str(tmp_path / "model.tflite"),
                                       str(colour_files["nv"])])
    assert result.exit_code == 2
    assert no_network == []


GUARDED = r"""
import json, socket, sys
attempts = []
def refuse(what):
    def refused(*args, **kwargs):
        attempts.append(what)
        raise OSError("network access attempted: " + what)
    return refused
class GuardedSocket(socket.socket):
    def __init__(self, family=-1, *args, **kwargs):
        if family in (socket.AF_INET, socket.AF_INET6, -1):
            attempts.append("socket(%s)" % family)
            raise OSError("network socket attempted")
        super().__init__(family, *args, **kwargs)
socket.socket = GuardedSocket
for name in ("create_connection", "getaddrinfo", "gethostbyname"):
    setattr(socket, name, refuse(name))
from skinedge.cli import main   # only now: anything skinedge or the runtime does at import is guarded too
try:
    main(["device", "classify", sys.argv[1], *sys.argv[2:], "--json"], standalone_mode=False)
except SystemExit as exc:
    if exc.code:
        raise
print("ATTEMPTS " + json.dumps(attempts))
"""


def test_device_classify_in_a_fresh_interpreter_opens_no_socket(bundle_dir, colour_files, tmp_path):
    proc = subprocess.run([sys.executable, "-c", GUARDED, str(bundle_dir), *map(str, colour_files.values())],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [json.loads(line)["label"] for line in lines[:-1]] == list(colour_files)
    assert lines[-1] == "ATTEMPTS []"


def test_the_fresh_interpreter_guard_catches_a_socket(tmp_path):
    script = GUARDED.split("from skinedge.cli import main")[0] + (
        "try:\n    socket.socket()\nexcept OSError:\n    pass\nprint('ATTEMPTS ' + json.dumps(attempts))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == 'ATTEMPTS ["socket(-1)"]', proc.stderr


# -- no unsafe deserialisation ------------------------------------------------------------------------------

PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
UNSAFE_CALLS = {"eval", "exec", "model_from_json", "model_from_yaml", "model_from_config", "unsafe_load",
                "full_load"}


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else (func.id if isinstance(func, ast.Name) else "")


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _kwarg(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def unsafe_deserialisation(source: str, filename: str) -> list[str]:
    """What in `source` could deserialise code: pickle-family imports, np.load without allow_pickle=False,
    allow_pickle=True, Keras model loading without safe_mode=True (or with safe_mode=False), yaml.load,
    torch.load, eval/exec and Keras' model_from_* (which rebuild Lambda layers from code)."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"{where}: imports {n}" for n in names if n.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "safe_mode"):
            value = node.value.value if isinstance(node.value, ast.Constant) else None
            if value is not (node.arg == "safe_mode"):
                problems.append(f"{where}: {node.arg}={value!r}")
        elif isinstance(node, ast.Call):
            name, dotted = _call_name(node), _dotted(node.func)
            if name in UNSAFE_CALLS:
                problems.append(f"{where}: calls {name}")
            elif name == "load" and dotted.split(".")[0] in ("np", "numpy"):
                if _kwarg(node, "allow_pickle") is not False:
                    problems.append(f"{where}: {dotted} without allow_pickle=False")
            elif name == "load_model" and _kwarg(node, "safe_mode") is not True:
                problems.append(f"{where}: {dotted} without safe_mode=True")
            elif dotted in ("yaml.load", "torch.load"):
                problems.append(f"{where}: calls {dotted}")
    return problems


def _modules() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(PACKAGE).parts)
             and p.relative_to(PACKAGE).parts[0] not in ("tests", "build", "dist")]
    return sorted(files)


def test_code_base_has_no_unsafe_deserialisation():
    files = _modules()
    assert {"device", "convert", "train"} <= {p.relative_to(PACKAGE).parts[0] for p in files}  # really scanned
    problems = []
    for path in files:
        problems += unsafe_deserialisation(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    assert problems == []


def test_code_base_never_mentions_pickle():
    """The plain grep the issue asks for, over the same files (comments included: no "allow_pickle=True" even in
    an example)."""
    offenders = []
    for path in _modules():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "pickle" in line.replace("allow_pickle=False", "").replace("no pickles", "").lower():
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_keras_models_are_rebuilt_from_code_not_deserialised():
    """The workstation loads weights into models built by code (skinedge.convert.model), never a saved model."""
    sources = {p.name: p.read_text(encoding="utf-8") for p in _modules()}
    assert "def load_qat_model" in sources["model.py"] and "load_weights" in sources["model.py"]
    assert not any("load_model(" in text for text in sources.values())


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "from pickle import loads",
    "import joblib",
    "import numpy as np\nnp.load('x.npy')",
    "import numpy as np\nnp.load('x.npz', allow_pickle=True)",
    "import numpy\nnumpy.load(f, allow_pickle=flag)",
    "keras.models.load_model('m.keras')",
    "keras.models.load_model('m.keras', safe_mode=False)",
    "tf.keras.models.model_from_json(text)",
    "yaml.load(stream)",
    "eval(user_text)",
    "torch.load('m.pt')",
])
def test_the_scan_catches_each_unsafe_pattern(snippet):
    assert unsafe_deserialisation(snippet, "x.py")


@pytest.mark.parametrize("snippet", [
    "import numpy as np\nnp.load('x.npz', allow_pickle=False)",
    "keras.models.load_model('m.keras', safe_mode=True)",
    "model.load_weights('w.h5')",
    "import json\njson.loads(text)",
])
def test_the_scan_accepts_safe_patterns(snippet):
    assert unsafe_deserialisation(snippet, "x.py") == []


# -- labels are names, never paths ----------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_path_like_labels_are_printed_not_followed(bundle_copy, colour_files, tmp_path, monkeypatch):
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    evil = ["../../akiec", "mel", "nv/../../../etc/x"]
    meta["labels"] = evil
    meta_path.write_text(json.dumps(meta))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(tmp_path)
    result = CliRunner().invoke(main, ["device", "classify", str(bundle_copy), *map(str, colour_files.values()),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == evil  # verbatim
    assert _tree(tmp_path) == before  # nothing written or touched, in the cwd or next to the bundle
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("name", ["../outside.npz", "ABSOLUTE"])
def test_golden_file_named_in_model_json_never_leaves_the_bundle(bundle_copy, tmp_path, name):
    (bundle_copy.parent / "outside.npz").write_bytes((bundle_copy / "golden.npz").read_bytes()
                                                     if (bundle_copy / "golden.npz").is_file() else b"PK")
    meta_path = bundle_copy / "model.json"
    meta = json.loads(meta_path.read_text())
    if name == "ABSOLUTE":
        name = str((bundle_copy.parent / "outside.npz").resolve())
    meta["golden"] = {**(meta.get("golden") or {}), "file": name}
    meta_path.write_text(json.dumps(meta))
    try:
        source = load_model_source(bundle_copy)
    except BundleError as exc:  # refused, naming model.json: fine
        assert str(meta_path) in str(exc)
        return
    assert source.golden_path is None or source.golden_path.resolve().parent == bundle_copy.resolve()
