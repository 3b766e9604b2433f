"""Label files: one class name per line, UTF-8, in the order of the model's outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the file and the problem."""


def parse_labels(text: str, source: str = "labels") -> list[str]:
    """Class names from the text of a labels file; blank lines are ignored, duplicates refused."""
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise LabelsError(f"{source}: no labels in the file")
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            raise LabelsError(f"{source}: label {label!r} appears more than once")
        seen.add(label)
    return labels


def read_labels(path: Union[str, os.PathLike]) -> list[str]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LabelsError(f"{path}: labels file not found") from None
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read labels file ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: labels file is not UTF-8 text") from None
    return parse_labels(text, str(path))


def format_labels(labels: Sequence[str]) -> str:
    for label in labels:
        if not label or label != label.strip() or "\n" in label or "\r" in label:
            raise LabelsError(f"label {label!r} cannot be written one per line")
    return "".join(f"{label}\n" for label in labels)


def check_label_count(labels: Sequence[str], num_outputs: int, source: str) -> None:
    if len(labels) != num_outputs:
        raise LabelsError(f"{source}: {len(labels)} labels for a model with {num_outputs} outputs")
