"""Data sets: find the samples, split them by lesion, decode them once through the device's preprocessing.

    samples, classes, layout = list_samples("../shared/data/ham10000")
    splits = split_samples(samples, val_fraction=0.15, test_fraction=0.15, seed=42)
    x, y, kept = load_images(splits["train"], classes, (128, 128), cache_dir=Path("runs/x/cache"))

Splits, the decode cache and `Sample` belong to the run-dir contract in skinedge.convert.rundir (conversion reads
them too); they are imported here so the training code has one data module to use.
Two layouts are detected automatically: HAM10000 (`HAM10000_metadata.csv` + `images/`, labels from `dx`, grouped by
`lesion_id`) and a folder per class (`DATA/<class>/*.jpg`, each image its own group). Pixels come from
`skinedge.device.preprocess.load_and_preprocess`, the function the device uses, so training sees device pixels.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from skinedge.convert.rundir import (  # noqa: F401 - re-exported: the one data module training uses
    SPLIT_FILE,
    Sample,
    class_counts,
    load_images,
    load_split,
    save_split,
)
from skinedge.device.preprocess import is_image_path

log = logging.getLogger(__name__)

HAM_METADATA = "HAM10000_metadata.csv"
HAM_COLUMNS = ("lesion_id", "image_id", "dx")


class DataError(ValueError):
    """A data folder that cannot be trained on; the message names the folder and the problem."""


def detect_layout(root: Path) -> str:
    if (root / HAM_METADATA).is_file():
        return "ham10000"
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return "folders"
    raise DataError(f"{root}: neither a HAM10000 folder ({HAM_METADATA} + images/) nor a folder per class")


def _ham_samples(root: Path) -> list[Sample]:
    meta = root / HAM_METADATA
    images = root / "images"
    samples, missing = [], 0
    try:
        with open(meta, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            absent = [c for c in HAM_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise DataError(f"{meta}: missing column(s) {', '.join(absent)}")
            for row in reader:
                image_id, dx, lesion = row["image_id"].strip(), row["dx"].strip(), row["lesion_id"].strip()
                if not image_id or not dx or "/" in image_id or "\\" in image_id or image_id.startswith("."):
                    raise DataError(f"{meta}: line {reader.line_num}: bad image_id {image_id!r} or dx {dx!r}")
                path = images / f"{image_id}.jpg"
                if not path.is_file():
                    missing += 1
                    continue
                samples.append(Sample(str(path), dx, lesion or image_id))
    except UnicodeDecodeError:
        raise DataError(f"{meta}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{meta}: malformed CSV ({exc})") from None
    if missing:
        log.warning("%s: %d images named in the metadata are missing from %s; skipped", meta, missing, images)
    return samples


def _folder_samples(root: Path) -> list[Sample]:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_path(p))
        skipped = sum(1 for p in class_dir.rglob("*") if p.is_file() and not is_image_path(p))
        if skipped:
            log.warning("%s: %d non-image files ignored", class_dir, skipped)
        samples += [Sample(str(p), class_dir.name, p.stem) for p in files]
    return samples


def list_samples(root: os.PathLike | str) -> tuple[list[Sample], list[str], str]:
    """All labelled images under `root`, the sorted class names and the layout name."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    layout = detect_layout(root)
    samples = _ham_samples(root) if layout == "ham10000" else _folder_samples(root)
    if not samples:
        raise DataError(f"{root}: no images found")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise DataError(f"{root}: found only one class ({classes[0]}); a classifier needs at least two")
    return samples, classes, layout


def limit_samples(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """A stratified subset of about `n` samples in which every class keeps at least two (when it has them)."""
    if n >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    chosen: list[Sample] = []
    for label in sorted(by_class):
        items = by_class[label]
        k = min(len(items), max(2, round(n * len(items) / len(samples))))
        chosen += [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False))]
    return chosen


def _group_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off about `fraction` of the groups, stratified by class, never splitting a group."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    labels = [s.label for s in samples]
    groups = [s.group for s in samples]
    # classes rarer than n_splits cannot be stratified; sklearn warns and does its best, which is what we want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        rest_idx, held_idx = next(folds.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in rest_idx], [samples[i] for i in held_idx]


def split_samples(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """train/val/test splits, stratified by class and grouped by lesion; seeded and deterministic."""
    rest, test = _group_split(samples, test_fraction, seed) if test_fraction > 0 else (list(samples), [])
    train, val = _group_split(rest, val_fraction / (1 - test_fraction), seed + 1)
    splits = {"train": train, "val": val, "test": test}
    for name in ("train", "val", "test"):
        groups = {s.group for s in splits[name]}
        for other in ("train", "val", "test"):
            if other > name:
                assert not groups & {s.group for s in splits[other]}, "a lesion on both sides of the split"
    missing = sorted({s.label for s in samples} - {s.label for s in train})
    if missing:
        raise DataError(f"class(es) {', '.join(missing)} have too few images to appear in the training split")
    return splits
