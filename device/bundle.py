"""The model bundle: a folder with `model.tflite`, `labels.txt`, `model.json` and (optionally) `golden.npz`.

    from skinedge.device.bundle import load_model_source
    src = load_model_source("models/ham10000")      # or a bare .tflite
    src.model_path, src.labels, src.spec, src.meta, src.golden_path

`model.tflite` is self-describing: a zip archive appended to the flatbuffer (the TFLite Metadata convention for
associated files) holds `labels.txt` and `skinedge.json` (the input spec and flag rule). Any runtime loads the
model unchanged, and the standard library's zipfile reads the archive. `model.json` beside it is the full record:
labels, input spec, quantization, validation metrics, the model's sha256, data and training summary, intended use.
`golden.npz` holds a few synthetic uint8 inputs and the raw outputs recorded at conversion (see `golden.py`);
`model.json` records its sha256 and recipe under "golden". Bundles without it still load.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .atomic import staged_dir
from .constants import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    EMBEDDED_LABELS,
    EMBEDDED_SPEC,
    LABELS_FILE,
    META_FILE,
    MODEL_FILE,
)
from .labels import LabelsError, format_labels, parse_labels, read_labels

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

GOLDEN_FILE = "golden.npz"
GOLDEN_ARRAYS = ("inputs", "outputs")  # uint8 N x H x W x 3, and the raw first output tensor N x ...


class BundleError(ValueError):
    """A model or bundle that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class FlagRule:
    """Raise a flag when P(label) >= threshold (chosen on validation data for high sensitivity).

    With `class_frequencies`, P(label) is read after Bayes' rule moves the model's probabilities to those class
    frequencies: p_c * f_c, renormalised. A model trained class-balanced answers as if every class were equally
    common, so its raw P(melanoma) weighs melanoma against an even mix of the other classes; the lesions it is
    shown are mostly nevi. At the training data's frequencies the score ranks melanoma against the rest as the
    rest occurs, which is the one-vs-rest question the flag asks (and the top classes, which balanced accuracy
    scores, stay those of the raw output)."""

    label: str
    threshold: float
    class_frequencies: tuple[tuple[str, float], ...] = ()  # (class, share) pairs; empty: the raw P(label)

    def scores(self, probabilities: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """The flag's P(label) for one probability vector (C,) or many (N x C), classes in `labels` order."""
        p = np.asarray(probabilities, dtype=np.float64)
        if self.class_frequencies:
            shares = dict(self.class_frequencies)
            p = p * np.array([shares.get(name, 0.0) for name in labels])
            p = p / np.maximum(p.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
        return p[..., list(labels).index(self.label)]

    def applies(self, probabilities: Mapping[str, float]) -> bool:
        if self.label not in probabilities:
            return False
        names = list(probabilities)
        return bool(self.scores(np.array([probabilities[n] for n in names]), names) >= self.threshold)

    def describe(self) -> str:
        """The rule in words, as model.json and the model card give it."""
        at = " at the training data's class frequencies" if self.class_frequencies else ""
        return f"flag when P({self.label}){at} >= threshold"


@dataclass
class ModelSource:
    """What the device needs to run a model: its file, labels, input spec, flag rule and full metadata."""

    model_path: Path
    labels: Optional[list[str]]
    spec: dict[str, Any] = field(default_factory=dict)  # the embedded/`model.json` "input" section
    flag: Optional[FlagRule] = None
    meta: Optional[dict[str, Any]] = None  # model.json, when the model came from a bundle folder
    sha256: str = ""
    golden_path: Optional[Path] = None  # the bundle's golden.npz, when it has one


@dataclass
class Golden:
    """Reference inputs and the raw outputs recorded for them, with how they were made (model.json "golden")."""

    inputs: np.ndarray
    outputs: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _sha256(data: bytes = b"") -> Any:
    """A SHA-256 hash object. CPython's built-in implementation where there is one: hashlib's OpenSSL backend maps
    libcrypto, 3.6 MB of resident memory on a device that hashes one model at start-up (same digest)."""
    try:
        from _sha2 import sha256  # CPython >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # CPython <= 3.11
        except ImportError:
            from hashlib import sha256
    return sha256(data)


def sha256_file(path: PathLike) -> str:
    digest = _sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold


def embed_metadata(tflite: bytes, labels: Sequence[str], spec: Mapping[str, Any]) -> bytes:
    """Append a zip with labels and the input spec to a TFLite flatbuffer."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, text in (
            (EMBEDDED_LABELS, format_labels(labels)),
            (EMBEDDED_SPEC, json.dumps(dict(spec), indent=1, sort_keys=True)),
        ):
            # a fixed timestamp, so the same model and metadata always give the same bytes (and sha256)
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, text)
    return bytes(tflite) + buf.getvalue()


def read_embedded(path: PathLike) -> tuple[Optional[list[str]], dict[str, Any]]:
    """Labels and spec packed inside a .tflite file, or (None, {}) for a model without them.

    Reads TFLite Metadata / Model Maker models too: their labels are an associated .txt file in the archive
    (the one whose name has "label" in it, else the first .txt); a wrong pick is caught by the label count check.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            spec: dict[str, Any] = {}
            if EMBEDDED_SPEC in names:
                spec = json.loads(_read_member(zf, EMBEDDED_SPEC).decode("utf-8"))
                if not isinstance(spec, dict):
                    raise BundleError(f"{path}: embedded {EMBEDDED_SPEC} is not a JSON object")
            texts = [n for n in names if n.lower().endswith(".txt")]
            # the metadata flatbuffer says which file holds the labels, but reading it needs tflite-support
            texts = [n for n in texts if "label" in n.lower()] or texts
            label_name = EMBEDDED_LABELS if EMBEDDED_LABELS in names else (texts[0] if texts else None)
            labels = None
            if label_name is not None:
                labels = parse_labels(_read_member(zf, label_name).decode("utf-8-sig"), f"{path}!{label_name}")
            return labels, spec
    except BundleError:
        raise
    except zipfile.BadZipFile:
        return None, {}
    except (UnicodeDecodeError, json.JSONDecodeError, LabelsError, KeyError) as exc:
        raise BundleError(f"{path}: embedded metadata is unreadable ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read model ({exc.strerror or exc})") from None
    except (NotImplementedError, RuntimeError, EOFError, ValueError, zlib.error) as exc:
        # a damaged archive: unknown zip version or compression, encryption, corrupt or cut deflate data
        raise BundleError(f"{path}: embedded metadata is unreadable ({type(exc).__name__}: {exc})") from None


MAX_EMBEDDED_BYTES = 1 << 20  # labels and spec are a few kB; refuse to inflate anything bigger (a zip bomb)


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    if zf.getinfo(name).file_size > MAX_EMBEDDED_BYTES:
        raise BundleError(f"{zf.filename}!{name}: {zf.getinfo(name).file_size} bytes, too large for metadata")
    return zf.read(name)


def pack_golden(inputs: np.ndarray, outputs: np.ndarray) -> bytes:
    """An .npz (what np.savez writes, no pickles) with fixed zip timestamps, so the same arrays always give the
    same bytes and sha256; np.savez stamps the current time into the archive."""
    if inputs.dtype != np.uint8 or inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise BundleError(f"golden inputs must be uint8 N x H x W x 3, got {inputs.dtype.name}{list(inputs.shape)}")
    if len(outputs) != len(inputs):
        raise BundleError(f"golden data has {len(inputs)} inputs but {len(outputs)} outputs")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, array in zip(GOLDEN_ARRAYS, (inputs, outputs)):
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


def read_golden(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, outputs) from a golden.npz, or BundleError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in GOLDEN_ARRAYS if n not in data.files]
            if missing:
                raise BundleError(f"{path}: golden file lacks {', '.join(missing)}")
            inputs, outputs = data["inputs"], data["outputs"]
    except BundleError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:  # np.load's ways of saying "not an npz"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"{path}: unreadable golden file ({reason})") from None
    if inputs.dtype != np.uint8 or inputs.ndim != 4 or inputs.shape[-1] != 3 or len(outputs) != len(inputs):
        raise BundleError(f"{path}: golden inputs {inputs.dtype.name}{list(inputs.shape)} / outputs "
                          f"{outputs.dtype.name}{list(outputs.shape)} are not N x H x W x 3 uint8 with N outputs")
    return inputs, outputs


def _flag_from(spec: Mapping[str, Any], labels: Optional[Sequence[str]], source: PathLike) -> Optional[FlagRule]:
    flag = spec.get("flag")
    if not flag:
        return None
    try:
        rule = FlagRule(label=str(flag["label"]), threshold=float(flag["threshold"]))
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{source}: flag rule must have a label and a numeric threshold") from None
    if labels is not None and rule.label not in labels:
        raise BundleError(f"{source}: flag label {rule.label!r} is not one of the model's labels")
    shares = flag.get("class_frequencies")
    if shares is None:
        return rule
    problem = _frequencies_problem(shares, labels, rule.label)
    if problem:
        raise BundleError(f"{source}: flag class_frequencies {problem}")
    return FlagRule(rule.label, rule.threshold, tuple((str(k), float(v)) for k, v in shares.items()))


def _frequencies_problem(shares: Any, labels: Optional[Sequence[str]], label: str) -> Optional[str]:
    """Why a flag's class_frequencies cannot be used, or None: an object giving every class a finite share >= 0,
    the flagged class's above 0 (else nothing could ever be flagged)."""
    if not isinstance(shares, dict):
        return f"must be a JSON object of class: share, not {type(shares).__name__}"
    missing = [name for name in (labels or []) if name not in shares]
    if missing:
        return f"lack the class(es) {', '.join(missing[:3])}"
    for name, value in shares.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            return f"give {name!r} {value!r}, not a finite share >= 0"
    if not shares.get(label):
        return f"give the flagged class {label!r} no share"
    return None


def read_meta(path: PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: not found") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a skinedge model.json (missing \"format\": \"{BUNDLE_FORMAT}\")")
    for key, kinds in _META_TYPES.items():  # the sections load_model_source reads, with the types it assumes
        if key in meta and not isinstance(meta[key], kinds):
            raise BundleError(f"{path}: \"{key}\" must be a JSON {'object' if dict in kinds else 'list'}, "
                              f"not {type(meta[key]).__name__}")
    if not all(isinstance(label, str) for label in meta.get("labels") or []):
        raise BundleError(f"{path}: \"labels\" must be a list of class names (strings)")
    return meta


_META_TYPES = {"model": (dict,), "input": (dict,), "labels": (list,), "flag": (dict, type(None)),
               "golden": (dict, type(None))}


def load_model_source(
    model: PathLike, labels_path: Optional[PathLike] = None, allow_modified: bool = False
) -> ModelSource:
    """Resolve MODEL (a bundle folder or a .tflite) into its file, labels, spec and flag rule.

    Labels come from `labels_path` when given, else the bundle, else the model's embedded metadata. A bundle's
    model must match the sha256 in `model.json` unless `allow_modified`.
    """
    model = Path(model)
    meta: Optional[dict[str, Any]] = None
    if model.is_dir():
        model_path = model / MODEL_FILE
        if not model_path.is_file():
            raise BundleError(f"{model}: not a bundle (no {MODEL_FILE} inside)")
        if (model / META_FILE).is_file():
            meta = read_meta(model / META_FILE)
    elif model.is_file():
        model_path = model
    else:
        raise BundleError(f"{model}: no such model file or bundle folder")

    try:
        digest = sha256_file(model_path)
    except OSError as exc:
        raise BundleError(f"{model_path}: cannot read model ({exc.strerror or exc})") from None
    if meta is not None:
        expected = meta.get("model", {}).get("sha256")
        if expected and expected != digest and not allow_modified:
            raise BundleError(
                f"{model_path}: sha256 {digest[:12]}… does not match {META_FILE} ({str(expected)[:12]}…); "
                "the model was modified or corrupted (use --allow-modified to run it anyway)"
            )

    embedded_labels, spec = read_embedded(model_path)
    if meta is not None:
        spec = {**spec, **meta.get("input", {}), "flag": meta.get("flag", spec.get("flag"))}
    if labels_path is not None:
        labels: Optional[list[str]] = read_labels(labels_path)
    elif meta is not None and meta.get("labels"):
        labels = parse_labels("\n".join(meta["labels"]), str(model / META_FILE))
    elif model.is_dir() and (model / LABELS_FILE).is_file():
        labels = read_labels(model / LABELS_FILE)
    else:
        labels = embedded_labels
    golden_path = None
    if model.is_dir():
        golden_name = ((meta or {}).get("golden") or {}).get("file") or GOLDEN_FILE
        # a name from model.json: a plain file name inside the bundle, never a path out of it
        if not isinstance(golden_name, str) or golden_name in (".", "..") or Path(golden_name).name != golden_name:
            raise BundleError(f"{model / META_FILE}: golden file {golden_name!r} is not a file name in the bundle")
        try:
            if (model / golden_name).is_file():
                golden_path = model / golden_name
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
            raise BundleError(f"{model / META_FILE}: golden file {golden_name[:40]!r}... unusable ({exc})") from None
    return ModelSource(
        model_path=model_path, labels=labels, spec=spec, flag=_flag_from(spec, labels, model),
        meta=meta, sha256=digest, golden_path=golden_path,
    )


def write_bundle(
    out_dir: PathLike, tflite: bytes, labels: Sequence[str], spec: Mapping[str, Any], meta: Mapping[str, Any],
    golden: Optional[Golden] = None,
) -> Path:
    """Write a bundle atomically: everything goes to a temporary sibling folder renamed into place at the end,
    so an interrupted conversion never leaves a half-written bundle. An existing bundle is replaced.

    `golden` (inputs, raw outputs, recipe) is written as golden.npz and recorded with its sha256 in model.json."""
    out_dir = Path(out_dir)
    model_bytes = embed_metadata(tflite, labels, spec)
    golden_bytes = pack_golden(golden.inputs, golden.outputs) if golden is not None else None
    record = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        **dict(meta),
        "labels": list(labels),
        "input": {k: v for k, v in spec.items() if k != "flag"},
        "flag": spec.get("flag"),
        "model": {
            **dict(meta.get("model", {})),
            "file": MODEL_FILE,
            "sha256": _sha256(model_bytes).hexdigest(),
            "bytes": len(model_bytes),
        },
    }
    if golden_bytes is not None:
        record["golden"] = {
            **dict(golden.info), "file": GOLDEN_FILE, "sha256": _sha256(golden_bytes).hexdigest(),
            "bytes": len(golden_bytes),
        }
    with staged_dir(out_dir) as tmp:
        (tmp / MODEL_FILE).write_bytes(model_bytes)
        (tmp / LABELS_FILE).write_text(format_labels(labels), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if golden_bytes is not None:
            (tmp / GOLDEN_FILE).write_bytes(golden_bytes)
    log.info("wrote bundle %s (%d bytes model)", out_dir, len(model_bytes))
    return out_dir
