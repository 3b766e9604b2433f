"""A training run dir as every later stage reads it: config, labels, split and the images decoded once.

    run = RunDir.open("runs/ham", require=("qat.weights.h5",))   # RunDirError names what is missing
    x_val, y_val, _ = run.images("val")
    calibration = run.calibration(200)

Training writes the run dir (skinedge.train.fit); conversion and comparison read it through this module, so
skinedge.convert needs nothing from skinedge.train. Pixels come from skinedge.device.preprocess, the function the
device uses.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from skinedge.device.atomic import replaced_file
from skinedge.device.labels import LabelsError, read_labels
from skinedge.device.preprocess import ImageError, load_and_preprocess

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
SPLIT_FILE = "split.csv"
EXTRA_SPLIT = "extra"  # split.csv rows of training-only images from another data set (train --extra-train)
FLOAT_WEIGHTS = "float.weights.h5"  # the best float model of a finished run
QAT_WEIGHTS = "qat.weights.h5"  # its QAT model, what convert turns into int8


class RunDirError(ValueError):
    """A run dir that cannot be read; the message names the run and what is missing."""


@dataclass(frozen=True)
class Sample:
    path: str  # image file
    label: str  # class name
    group: str  # lesion id (HAM10000) or the file's stem: samples of one group stay on one side of a split


# File names are bytes on Linux: one that is not valid UTF-8 reaches Python with surrogate escapes, and is written to
# (and read back from) split.csv byte for byte rather than failing the run.
_CSV_ERRORS = "surrogateescape"


def save_split(path: Path, splits: dict[str, list[Sample]]) -> None:
    with replaced_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=_CSV_ERRORS) as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "label", "group"])
        for name, items in splits.items():
            writer.writerows([name, s.path, s.label, s.group] for s in items)


def load_split(path: Path) -> dict[str, list[Sample]]:
    """The splits saved by save_split; RunDirError naming the file if it is not one."""
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    try:
        with open(path, newline="", encoding="utf-8", errors=_CSV_ERRORS) as fh:
            reader = csv.DictReader(fh)
            absent = [c for c in ("split", "path", "label", "group") if c not in (reader.fieldnames or [])]
            if absent:
                raise RunDirError(f"{path}: not a split file (missing column(s) {', '.join(absent)})")
            for row in reader:
                if not row["split"] or not row["path"] or not row["label"] or row["group"] is None:
                    raise RunDirError(f"{path}: line {reader.line_num} is incomplete")
                splits.setdefault(row["split"], []).append(Sample(row["path"], row["label"], row["group"]))
    except csv.Error as exc:
        raise RunDirError(f"{path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror})") from None
    return splits


def read_history(history_csv: Path) -> dict[str, list[float]]:
    """A phase's per-epoch log (history/<phase>.csv, Keras' CSVLogger) as columns, the epoch column left out; {} if
    there is none yet."""
    if not history_csv.is_file():
        return {}
    with open(history_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # `k and`: a stray comma makes a nameless column ("" or DictReader's None), which is not a metric
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in (rows[0] if rows else {}) if k and k != "epoch"}


def read_histories(run: Path) -> dict[str, dict[str, list[float]]]:
    """Every RUN_DIR/history/<phase>.csv as phase -> column -> values. For the card and the report, which can do
    without one: an unreadable file is left out with a warning naming it (training itself uses read_history)."""
    out: dict[str, dict[str, list[float]]] = {}
    for path in sorted((Path(run) / "history").glob("*.csv")):
        try:
            out[path.stem] = read_history(path)
        except (OSError, ValueError) as exc:  # ValueError covers a non-number cell and UnicodeDecodeError
            log.warning("%s: unreadable (%s); left out", path, exc)
    return out


def training_samples(splits: Mapping[str, Sequence[Sample]]) -> list[Sample]:
    """What the run trains on: its training split and any training-only extra images."""
    return [*splits["train"], *splits.get(EXTRA_SPLIT, [])]


def class_counts(samples: Sequence[Sample]) -> dict[str, int]:
    return dict(sorted(Counter(s.label for s in samples).items()))


def groups_are_lesions(config: Mapping[str, Any]) -> bool:
    """Whether a run's train, val and test groups are lesions (HAM10000's metadata, or --lesion-ids) rather than an
    image with its byte-identical copies."""
    return bool(config.get("lesion_ids")) or config.get("extra", {}).get("layout") == "ham10000"


def _decode(args: tuple[str, tuple[int, int]]) -> np.ndarray | str:
    path, size = args
    try:
        return load_and_preprocess(path, size)
    except ImageError as exc:
        return str(exc)


def load_images(
    samples: Sequence[Sample], classes: Sequence[str], size: tuple[int, int],
    cache_dir: Optional[Path] = None, workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    """Decode and preprocess every sample once: (uint8 N x H x W x 3, int labels, samples kept).

    Unreadable images are skipped with one warning each and a count; the result is cached as .npy keyed by the
    file list and size, so later epochs, phases and resumed runs never decode again.
    """
    index = {c: i for i, c in enumerate(classes)}
    key = hashlib.sha256(repr((size, [(s.path, s.label) for s in samples])).encode()).hexdigest()[:16]
    if cache_dir is not None:
        cache = Path(cache_dir) / f"images-{size[0]}x{size[1]}-{key}.npz"
        if cache.is_file():
            cached = _read_cache(cache, len(samples), size)
            if cached is not None:
                x, y, kept_idx = cached
                return x, y, [samples[i] for i in kept_idx]
    jobs = [(s.path, size) for s in samples]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_decode, jobs, chunksize=32))
    else:
        results = [_decode(j) for j in jobs]
    x = np.zeros((len(samples), size[0], size[1], 3), np.uint8)
    kept_idx = []
    for i, res in enumerate(results):
        if isinstance(res, str):
            log.warning("skipped %s", res)
            continue
        x[len(kept_idx)] = res
        kept_idx.append(i)
    if len(kept_idx) < len(samples):
        log.warning("%d of %d images could not be read and were skipped", len(samples) - len(kept_idx), len(samples))
    x = x[: len(kept_idx)]
    y = np.array([index[samples[i].label] for i in kept_idx], np.int32)
    if cache_dir is not None:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            with replaced_file(cache) as tmp:  # ".tmp-<name>.npz": numpy would append ".npz" to another suffix
                np.savez(tmp, x=x, y=y, kept=np.array(kept_idx, np.int64))
        except OSError as exc:  # the cache only saves time: a full disk shows up where it matters, at the outputs
            log.warning("%s: decoded images not cached (%s)", cache, exc.strerror or exc)
    return x, y, [samples[i] for i in kept_idx]


def _read_cache(cache: Path, n: int, size: tuple[int, int]) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The decoded images cached by load_images, or None (with a warning) when the file is damaged."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            x, y, kept = z["x"], z["y"], z["kept"]
        ok = (x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (*size, 3) and len(x) == len(y) == len(kept)
              and kept.dtype.kind == "i" and (len(kept) == 0 or (kept.min() >= 0 and kept.max() < n)))
        if ok:
            return x, y, kept
        problem = "unexpected contents"
    except Exception as exc:  # noqa: BLE001 - a damaged .npz raises zipfile, OSError, ValueError, KeyError...
        problem = f"{type(exc).__name__}: {exc}"
    log.warning("%s: cache unreadable (%s); decoding the images again", cache, problem)
    return None


def _config_problem(config: Any) -> Optional[str]:
    """What makes a run's config.json unusable by the later stages, or None."""
    if not isinstance(config, dict):
        return "not a JSON object"
    for key in ("img_size", "img_width"):
        size = config.get(key)
        if (key == "img_size" or size is not None) and (isinstance(size, bool) or not isinstance(size, int)
                                                         or size < 1):
            return f"{key} {size!r} is not a positive whole number"
    if config.get("arch") not in ("mobilenetv2", "cnn"):
        return f"unknown arch {config.get('arch')!r}"
    if isinstance(config.get("alpha"), bool) or not isinstance(config.get("alpha"), (int, float)):
        return f"alpha {config.get('alpha')!r} is not a number"
    return None


def cache_dir(config: Mapping[str, Any], run: Path) -> Path:
    """Where a run's decoded images are cached: the configured cache_dir, else RUN_DIR/cache."""
    return Path(config["cache_dir"]) if config.get("cache_dir") else run / "cache"


@dataclass
class RunDir:
    path: Path
    config: dict[str, Any]  # config.json as written by training (skinedge.train.config.TrainConfig)
    classes: list[str]
    splits: dict[str, list[Sample]]

    @classmethod
    def open(cls, path: os.PathLike | str, require: Sequence[str] = ()) -> "RunDir":
        run = Path(path)
        for needed in (CONFIG_FILE, LABELS_FILE, SPLIT_FILE, *require):
            if not (run / needed).is_file():
                hint = " (did training finish its QAT phase?)" if needed == QAT_WEIGHTS else ""
                raise RunDirError(f"{run}: not a finished training run, {needed} is missing{hint}")
        try:
            config = json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))
            classes = read_labels(run / LABELS_FILE)
        except (json.JSONDecodeError, UnicodeDecodeError, LabelsError) as exc:
            raise RunDirError(f"{run}: unreadable run files ({exc})") from None
        except OSError as exc:
            raise RunDirError(f"{exc.filename or run}: cannot read ({exc.strerror})") from None
        problem = _config_problem(config)
        if problem:
            raise RunDirError(f"{run / CONFIG_FILE}: {problem}")
        splits = load_split(run / SPLIT_FILE)
        unknown = sorted({s.label for items in splits.values() for s in items} - set(classes))
        if unknown:
            raise RunDirError(f"{run / SPLIT_FILE}: label(s) {', '.join(unknown)} are not in {LABELS_FILE}")
        return cls(run, config, classes, splits)

    @property
    def img_size(self) -> tuple[int, int]:
        """The model input as (height, width); img_width is absent from square runs (and older configs)."""
        return (self.config["img_size"], self.config.get("img_width") or self.config["img_size"])

    def images(self, split: str) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
        """A split's images, decoded once and cached like in training."""
        return load_images(self.splits[split], self.classes, self.img_size, cache_dir(self.config, self.path),
                           self.config.get("workers", 0))

    def calibration(self, n: int) -> np.ndarray:
        """A seeded sample of at most `n` training images (for quantization calibration)."""
        x, _, _ = self.images("train")
        rng = np.random.default_rng(self.config.get("seed", 0))
        return x[rng.choice(len(x), size=min(n, len(x)), replace=False)]
