"""Matplotlib figures (Agg backend, written to PNG): training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_history(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Loss and balanced accuracy over epochs, phases laid end to end, one figure."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for phase, hist in histories.items():
        n = len(hist.get("loss", []))
        if not n:
            continue
        epochs = np.arange(offset + 1, offset + n + 1)
        for ax, keys in zip(axes, (("loss", "val_loss"), ("balanced_accuracy", "val_balanced_accuracy"))):
            for key, style in zip(keys, ("--", "-")):
                if key in hist:
                    ax.plot(epochs, hist[key], style, marker="o", ms=3, label=f"{phase} {key}")
        offset += n
        for ax in axes:
            ax.axvline(offset + 0.5, color="grey", lw=0.5)
    axes[0].set_title("loss")
    axes[1].set_title("balanced accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts."""
    cm = np.asarray(matrix, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.5, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)
