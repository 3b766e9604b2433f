"""Data sets: find the samples, split them by lesion, decode them once through the device's preprocessing.

    samples, classes, layout = list_samples("../shared/data/ham10000")
    splits = split_samples(samples, val_fraction=0.15, test_fraction=0.15, seed=42)
    x, y, kept = load_images(splits["train"], classes, (128, 128), cache_dir=Path("runs/x/cache"))

Splits, the decode cache and `Sample` belong to the run-dir contract in skinedge.convert.rundir (conversion reads
them too); they are imported here so the training code has one data module to use.
Two layouts are detected automatically: HAM10000 (`HAM10000_metadata.csv` + `images/`, labels from `dx`, grouped by
`lesion_id`) and a folder per class (`DATA/<class>/*.jpg`, each image its own group unless a lesion-id table, such
as HAM10000_metadata.csv for the ISIC set, names its lesion; byte-identical copies share one group, so a copy never
sits on the other side of a split; copies filed under two classes are kept, with a warning, because the data set's
own labels disagree). Pixels come from
`skinedge.device.preprocess.load_and_preprocess`, the function the device uses, so training sees device pixels.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
import os
import warnings
from pathlib import Path
from typing import Collection, Iterator, Mapping, Sequence

import numpy as np

from skinedge.convert.rundir import (  # noqa: F401 - re-exported: the one data module training uses
    EXTRA_SPLIT,
    SPLIT_FILE,
    Sample,
    class_counts,
    load_images,
    load_split,
    save_split,
    training_samples,
)
from skinedge.device.labels import LabelsError, format_labels
from skinedge.device.preprocess import is_image_path

log = logging.getLogger(__name__)

HAM_METADATA = "HAM10000_metadata.csv"
HAM_COLUMNS = ("lesion_id", "image_id", "dx")
LESION_COLUMNS = ("image_id", "lesion_id")  # a lesion-id table for a folder-per-class set (--lesion-ids)


class DataError(ValueError):
    """A data folder that cannot be trained on; the message names the folder and the problem."""


def detect_layout(root: Path) -> str:
    if (root / HAM_METADATA).is_file():
        return "ham10000"
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    try:
        has_folders = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    except OSError as exc:
        raise DataError(f"{root}: cannot read the data folder ({exc.strerror})") from None
    if has_folders:
        return "folders"
    raise DataError(f"{root}: neither a HAM10000 folder ({HAM_METADATA} + images/) nor a folder per class")


def check_label(label: str, source: str) -> str:
    """A class name that can be written to labels.txt and split.csv and read back unchanged, or DataError."""
    try:
        format_labels([label])
        label.encode("utf-8")
    except (LabelsError, UnicodeEncodeError):
        raise DataError(f"{source}: class name {label!r} cannot be used (blank, surrounding spaces, a line break "
                        "or bytes that are not UTF-8)") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise DataError(f"{source}: class name {label!r} contains control characters")
    return label


def _csv_rows(path: Path, columns: Sequence[str], hint: str = "") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a UTF-8 CSV that has `columns`; any read problem is a DataError naming the file."""
    try:
        # utf-8-sig: a spreadsheet's byte-order mark must not hide the first column's name
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent:
                raise DataError(f"{path}: missing column(s) {', '.join(absent)}{hint}")
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _ham_samples(root: Path) -> list[Sample]:
    meta = root / HAM_METADATA
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images}: folder not found (the HAM10000 layout is {HAM_METADATA} + images/)")
    samples, missing, named = [], 0, 0
    for line, row in _csv_rows(meta, HAM_COLUMNS):
        # a short row has None for the columns it lacks
        image_id, dx, lesion = ((row.get(c) or "").strip() for c in ("image_id", "dx", "lesion_id"))
        if not image_id or not dx or "/" in image_id or "\\" in image_id or image_id.startswith("."):
            raise DataError(f"{meta}: line {line}: bad image_id {image_id!r} or dx {dx!r}")
        check_label(dx, f"{meta}: line {line}")
        named += 1
        path = images / f"{image_id}.jpg"
        if not path.is_file():
            missing += 1
            continue
        samples.append(Sample(str(path), dx, lesion or image_id))
    if named and missing == named:
        raise DataError(f"{meta}: none of the {named} images it names exist in {images}")
    if missing:
        log.warning("%s: %d images named in the metadata are missing from %s; skipped (%d of %d remain)",
                    meta, missing, images, named - missing, named)
    return samples


def read_lesion_ids(path: os.PathLike | str) -> dict[str, str]:
    """image_id -> lesion_id from a CSV with those two columns (HAM10000_metadata.csv is one)."""
    path = Path(path)
    out: dict[str, str] = {}
    for _, row in _csv_rows(path, LESION_COLUMNS, f" (a lesion-id table needs {' and '.join(LESION_COLUMNS)}, "
                                                  "as HAM10000_metadata.csv has)"):
        image_id, lesion = ((row.get(c) or "").strip() for c in LESION_COLUMNS)
        if image_id and lesion:
            out[image_id] = lesion
    if not out:
        raise DataError(f"{path}: no rows with both an image_id and a lesion_id")
    return out


def group_by_lesion(samples: Sequence[Sample], lesion_ids: dict[str, str], source: str = "") -> list[Sample]:
    """Samples whose file stem is a known image_id take its lesion id as their group; the others keep theirs."""
    stems = [Path(s.path).stem for s in samples]
    out = [Sample(s.path, s.label, lesion_ids.get(stem, s.group)) for s, stem in zip(samples, stems)]
    matched = sum(stem in lesion_ids for stem in stems)
    if not matched:
        log.warning("%s: no image file name matches an image_id; the images stay grouped one by one", source)
    else:
        sizes = Counter(s.group for s in out)
        log.info("%s: %d of %d images grouped by lesion id (%d images share a lesion with another)", source,
                 matched, len(samples), sum(n for n in sizes.values() if n > 1))
    return out


def _folder_samples(root: Path, lesion_ids: dict[str, str] | None = None, report_copies: bool = True) -> list[Sample]:
    samples: list[Sample] = []
    unreadable: list[str] = []

    def note(exc: OSError) -> None:  # os.walk would otherwise skip unreadable folders silently
        unreadable.append(f"{exc.filename} ({exc.strerror})")

    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files, ignored = [], 0
        for folder, dirs, names in os.walk(class_dir, onerror=note):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if is_image_path(name) and not name.startswith("."):  # ._x.jpg: macOS metadata, not an image
                    files.append(Path(folder) / name)
                else:
                    ignored += 1
        files.sort()  # the order of the samples seeds the split: keep it independent of the walk
        if ignored:
            log.warning("%s: %d non-image or hidden files ignored", class_dir, ignored)
        if not files:
            log.warning("%s: no images; not used as a class", class_dir)
            continue
        label = check_label(class_dir.name, str(class_dir))
        samples += [Sample(str(p), label, p.stem) for p in files]
    for entry in unreadable:
        log.warning("cannot read %s; the images in it are left out", entry)
    if lesion_ids is not None:
        samples = group_by_lesion(samples, lesion_ids, str(root))
    return group_copies(samples, root, report=report_copies)


def _digest(path: str) -> str | None:
    try:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None  # reported when the image is decoded


def group_copies(samples: Sequence[Sample], root: os.PathLike | str = "", report: bool = True) -> list[Sample]:
    """Byte-identical images share one group (with every image of their groups), so no split separates them.

    Only files whose size another file shares are hashed: a folder of distinct images costs one stat each. Copies
    under two different labels (the ISIC 9-class set files 127 images twice, e.g. as melanoma and as seborrheic
    keratosis) are kept and logged: which label is right is the data set's question, not ours. `report=False`
    leaves the logging to the caller (`extra_samples`, which drops such copies rather than split them).
    """
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        try:
            by_size.setdefault(os.stat(s.path).st_size, []).append(i)
        except OSError:
            pass
    copies: dict[str, list[int]] = {}
    for idx in by_size.values():
        if len(idx) > 1:
            for i in idx:
                if (digest := _digest(samples[i].path)) is not None:
                    copies.setdefault(digest, []).append(i)
    # Union-find over groups: a copy joins its twin's whole group (a lesion of several images, say), not just the
    # twin, or the lesion's other images could still sit on the other side of a split.
    parent: dict[str, str] = {}

    def root_of(g: str) -> str:
        while parent.get(g, g) != g:
            g = parent[g]
        return g

    conflicting = []
    for idx in copies.values():
        if len(idx) < 2:
            continue
        roots = sorted({root_of(samples[i].group) for i in idx})
        for r in roots[1:]:
            parent[r] = roots[0]  # the smallest name wins: deterministic whatever the order of the copies
        if len({samples[i].label for i in idx}) > 1:
            conflicting.append(idx)
    out = [Sample(s.path, s.label, root_of(s.group)) for s in samples]
    n_copies = sum(len(v) for v in copies.values() if len(v) > 1)
    if n_copies and report:
        log.warning("%s: %d images are byte-identical copies of another (%d sets); each set is kept together in "
                    "one split", root, n_copies, sum(1 for v in copies.values() if len(v) > 1))
    if conflicting and report:
        pairs = Counter(" / ".join(sorted({samples[i].label for i in idx})) for idx in conflicting)
        log.warning("%s: %d images are each filed under two or more classes (%s); every copy keeps its label",
                    root, len(conflicting), ", ".join(f"{k}: {v}" for k, v in pairs.most_common()))
    return out


def list_samples(root: os.PathLike | str, lesion_ids: os.PathLike | str | None = None
                 ) -> tuple[list[Sample], list[str], str]:
    """All labelled images under `root`, the sorted class names and the layout name.

    `lesion_ids` (a CSV of image_id, lesion_id) groups a folder-per-class set's images by lesion: the ISIC 9-class
    set reuses HAM10000 images under their ISIC ids, several of one lesion, which file names alone cannot tell.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    layout = detect_layout(root)
    table = read_lesion_ids(lesion_ids) if lesion_ids is not None else None
    if table is not None and layout == "ham10000":
        log.warning("%s: ignored; %s gives the lesion ids of a HAM10000 folder", lesion_ids, HAM_METADATA)
    try:
        samples = _ham_samples(root) if layout == "ham10000" else _folder_samples(root, table)
    except OSError as exc:
        raise DataError(f"{exc.filename or root}: cannot read ({exc.strerror})") from None
    if not samples:
        raise DataError(f"{root}: no images found")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise DataError(f"{root}: found only one class ({classes[0]}); a classifier needs at least two")
    return samples, classes, layout


def extra_samples(root: os.PathLike | str, label_map: Mapping[str, str], classes: Sequence[str],
                  main: Sequence[Sample]) -> list[Sample]:
    """Training-only images from another data set, under this run's class names (`--extra-train`).

    `root` is a folder per class or a HAM10000 folder. Its classes (folder names or dx codes) map through
    `label_map` (class there -> class here); one already named like a class here needs no entry; the others are
    left out. A lesion (or image) of which any image repeats the main data's (the same file name, as ISIC ids are,
    or the same lesion id) is dropped whole: it could be a validation or test lesion."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (--extra-train)")
    layout = detect_layout(root)
    unknown = sorted(set(label_map.values()) - set(classes))
    if unknown:
        raise DataError(f"--extra-label: {', '.join(unknown)} not among the classes of the data ({', '.join(classes)})")
    try:
        samples = _ham_samples(root) if layout == "ham10000" else _folder_samples(root, report_copies=False)
    except OSError as exc:
        raise DataError(f"{exc.filename or root}: cannot read ({exc.strerror})") from None
    theirs = sorted({s.label for s in samples})
    absent = sorted(set(label_map) - set(theirs))
    if absent:
        raise DataError(f"{root}: has no class {', '.join(map(repr, absent))} (--extra-label); its classes: "
                        f"{', '.join(theirs)}")
    target = {c: label_map.get(c, c if c in classes else None) for c in theirs}
    repeated = seen_groups(samples, main)
    mapped = [Sample(s.path, target[s.label], s.group) for s in samples if target[s.label]]
    fresh = [s for s in mapped if s.group not in repeated]
    # copies filed under classes that map apart, or under one left out, are labels the set itself disputes (the
    # ISIC set files 75 melanomas again as seborrheic keratosis): they teach nothing but noise
    labels: dict[str, set[tuple[str, str]]] = {}
    for s in samples:
        labels.setdefault(s.group, set()).add(("class", target[s.label]) if target[s.label] else ("other", s.label))
    kept, seen = [], set()
    for s in fresh:
        # in a folder per class a group is an image and its byte-identical copies: one copy is enough
        if len(labels[s.group]) == 1 and (layout == "ham10000" or s.group not in seen):
            kept.append(s)
            seen.add(s.group)
    disputed = sum(1 for s in fresh if len(labels[s.group]) > 1)
    log.info("%s: %d training-only images %s; dropped: %d of lesions or images the data holds, %d whose copies are "
             "filed under another class, %d duplicate copies; classes left out: %s", root, len(kept),
             dict(Counter(s.label for s in kept)), len(mapped) - len(fresh), disputed,
             len(fresh) - disputed - len(kept), ", ".join(c for c in theirs if not target[c]) or "none")
    if not kept:
        raise DataError(f"{root}: no images to add (every mapped image repeats the data's, or no class maps)")
    return kept


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

    n_groups = len({s.group for s in samples})
    if n_groups < 2:
        return list(samples), []
    # never more folds than groups (sklearn refuses that): tiny data sets hold out one group at least
    n_splits = max(2, min(round(1 / fraction), n_groups))
    labels = [s.label for s in samples]
    groups = [s.group for s in samples]
    if max(Counter(labels).values()) < n_splits:
        # every class is smaller than the number of folds (a few images per class, --limit 10 on nine classes):
        # sklearn refuses to stratify, so hold out the requested share of groups at random (seeded) instead
        order = sorted(set(groups))
        np.random.default_rng(seed).shuffle(order)
        held = set(order[:max(1, round(fraction * n_groups))])
        return [s for s in samples if s.group not in held], [s for s in samples if s.group in held]
    # classes rarer than n_splits cannot be stratified; sklearn warns and does its best, which is what we want
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        rest_idx, held_idx = next(folds.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in rest_idx], [samples[i] for i in held_idx]


def seen_groups(samples: Sequence[Sample], seen: Sequence[Sample]) -> set[str]:
    """The groups of `samples` that share a lesion or an image with `seen` (what another run trained or validated
    on, or the data an --extra-train set is added to), matched by group name (HAM10000 lesion ids in both) or file
    name (ISIC ids name the same image in the ISIC sets and HAM10000). A model started from that run has seen these
    lesions: they must not test it."""
    groups = {s.group for s in seen}
    stems = {Path(s.path).stem for s in seen}
    return {s.group for s in samples if s.group in groups or Path(s.path).stem in stems}


def split_samples(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int,
    pinned: Collection[str] = (),
) -> dict[str, list[Sample]]:
    """train/val/test splits, stratified by class and grouped by lesion; seeded and deterministic.

    Every class keeps at least one group in training: a class too small to be spread over the three splits (a
    single image, say) is trained on and missing from validation or test, with a warning, rather than the other way
    round. Groups in `pinned` go to training (a model this run starts from has seen them): the split is the usual one
    when it already trains on all of them, else validation and test are drawn from the other groups, still
    `val_fraction` and `test_fraction` of all groups."""
    usual = _split(samples, val_fraction, test_fraction, seed)
    if not pinned or not pinned & {s.group for name in ("val", "test") for s in usual[name]}:
        return usual
    fixed = [s for s in samples if s.group in pinned]
    free = [s for s in samples if s.group not in pinned]
    n_all, n_free = len({s.group for s in samples}), len({s.group for s in free})
    if (val_fraction + test_fraction) * n_all >= 0.9 * n_free:
        raise DataError(f"only {n_free} of {n_all} lesions/groups are unseen by the model it starts from: too "
                        f"few to hold out {val_fraction:.0%} for validation and {test_fraction:.0%} for test")
    val_fraction, test_fraction = val_fraction * n_all / n_free, test_fraction * n_all / n_free
    pinned_split = _split(free, val_fraction, test_fraction, seed)
    return {**pinned_split, "train": fixed + pinned_split["train"]}


def _split(samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Sample]]:
    rest, test = _group_split(samples, test_fraction, seed) if test_fraction > 0 else (list(samples), [])
    train, val = _group_split(rest, val_fraction / (1 - test_fraction), seed + 1)
    splits = {"train": train, "val": val, "test": test}
    for label in sorted({s.label for s in samples} - {s.label for s in train}):
        # move this class's smallest group (by size, then name: deterministic) from val or test into training
        donors = [(len([s for s in items if s.group == g]), g, name)
                  for name in ("val", "test") for items in [splits[name]]
                  for g in sorted({s.group for s in items if s.label == label})]
        _, group, name = min(donors)
        splits["train"] += [s for s in splits[name] if s.group == group]
        splits[name] = [s for s in splits[name] if s.group != group]
    if not splits["val"]:
        raise DataError(f"too few images to hold out a validation split ({len(samples)} images in "
                        f"{len({s.group for s in samples})} lesions/groups)")
    for name in ("val", "test"):
        absent = sorted({s.label for s in samples} - {s.label for s in splits[name]})
        if absent and (name == "val" or test_fraction > 0):
            log.warning("class(es) %s have too few images to appear in the %s split", ", ".join(absent), name)
    for name in ("train", "val", "test"):
        groups = {s.group for s in splits[name]}
        for other in ("train", "val", "test"):
            if other > name:
                assert not groups & {s.group for s in splits[other]}, "a lesion on both sides of the split"
    return splits
