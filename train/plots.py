"""Matplotlib figures (Agg backend, written to PNG): training curves, confusion matrices and the comparison report's
ROC curves, per-class recall, reliability diagram and class distribution.

Every function takes already computed numbers and writes one PNG (atomically); none computes a metric that is
reported elsewhere. Text from folder names goes through `_text` so a `$` never switches matplotlib into mathtext.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from skinedge.device.atomic import replaced_file  # noqa: E402
from skinedge.device.bundle import FlagRule  # noqa: E402

# variant -> colour, the same in every figure of a report
VARIANT_COLOURS = {"float": "#1f77b4", "qat": "#2ca02c", "int8": "#d62728", "ptq_int8": "#ff7f0e"}
MELANOMA_COLOUR = "#c2185b"


def _text(s: str) -> str:
    return str(s).replace("$", r"\$")


def variant_colour(name: str, i: int = 0) -> str:
    return VARIANT_COLOURS.get(name, f"C{(i + 4) % 10}")


def _save(fig, path: Path) -> Path:
    try:
        with replaced_file(path) as tmp:  # ".tmp-<name>.png": matplotlib takes the format from the suffix
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
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
                    ax.plot(epochs, hist[key], style, marker="o", ms=3, label=_text(f"{phase} {key}"))
        offset += n
        for ax in axes:
            ax.axvline(offset + 0.5, color="grey", lw=0.5)
    axes[0].set_title("loss")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    size = max(4.5, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [_text(c) for c in classes]
    ax.set_xticks(range(len(classes)), names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(classes)), names, fontsize=9)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:  # empty cells stay blank, so the errors stand out
                ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_text(title))
    return _save(fig, path)


def plot_roc(y: np.ndarray, probs: Mapping[str, np.ndarray], classes: Sequence[str], path: Path,
             highlight: Optional[int] = None, flag: Optional[FlagRule] = None) -> Path:
    """One-vs-rest ROC curves, one panel per variant side by side, one legend below; class `highlight` (melanoma)
    drawn thick, as the curve of the score `flag` thresholds (P(melanoma), at its class frequencies if it has
    them) with the rule's operating point marked and given in the panel's title."""
    fig, axes = plt.subplots(1, len(probs), figsize=(5.2 * len(probs), 5.4), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (variant, p) in zip(axes[0], probs.items()):
        title = f"{variant}: one-vs-rest ROC"
        for i, c in enumerate(classes):
            positive = y == i
            if not positive.any() or positive.all():
                continue
            rule = flag if flag is not None and i == highlight and flag.label == c else None
            score = rule.scores(p, classes) if rule else p[:, i]
            fpr, tpr, _ = roc_curve(positive, score)
            if i == highlight:
                label = c if c.lower() == "melanoma" else f"{c} (melanoma)"
                if rule and rule.class_frequencies:
                    label += ", P at training class frequencies"
                handles[label] = ax.plot(fpr, tpr, color=MELANOMA_COLOUR, lw=3, zorder=3)[0]
                if rule:
                    flagged = score >= rule.threshold
                    x_op, y_op = flagged[~positive].mean(), flagged[positive].mean()
                    handles[f"flag threshold P \u2265 {rule.threshold:.3f}"] = ax.plot(
                        [x_op], [y_op], "o", ms=10, mfc="white", mec="black", mew=2, zorder=4)[0]
                    title += f"\nflag: sensitivity {y_op:.2f}, specificity {1 - x_op:.2f}"
            else:
                handles[c] = ax.plot(fpr, tpr, lw=1, alpha=0.6, color=f"C{i % 10}")[0]
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (1 - specificity)",
               ylabel="true positive rate (sensitivity)", title=_text(title))
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(list(handles.values()), [_text(k) for k in handles], loc="upper center", bbox_to_anchor=(0.5, 0.02),
               ncol=min(3, max(1, len(handles))), fontsize=9, frameon=False)
    return _save(fig, path)


def plot_recall_bars(recalls: Mapping[str, Sequence[Optional[float]]], classes: Sequence[str], path: Path,
                     support: Optional[Sequence[int]] = None) -> Path:
    """Per-class recall, one bar per variant in each class group; a missing value (no examples) is left empty."""
    n = len(recalls)
    width = 0.8 / max(n, 1)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(classes) + 2), 4.2))
    for k, (name, values) in enumerate(recalls.items()):
        vals = np.array([np.nan if v is None else v for v in values], dtype=float)
        bars = ax.bar(x - 0.4 + width * (k + 0.5), vals, width, label=_text(name), color=variant_colour(name, k))
        for bar, v in zip(bars, vals):
            if not np.isnan(v):
                ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom",
                        fontsize=6, rotation=90)
    names = [_text(c) + (f"\n(n={support[i]})" if support is not None else "") for i, c in enumerate(classes)]
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.15), ylabel="recall", title="per-class recall")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=n, loc="upper right")
    return _save(fig, path)


def plot_reliability(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """Reliability diagram: per variant (mean confidence, accuracy, count, ECE) per confidence bin, over the
    diagonal of perfect calibration; below it the number of images per bin."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfectly calibrated")
    edges = None
    for k, (name, (conf, acc, count, ece)) in enumerate(curves.items()):
        seen = count > 0
        colour = variant_colour(name, k)
        ax.plot(conf[seen], acc[seen], "o-", color=colour, ms=4, label=_text(f"{name} (ECE {ece:.3f})"))
        n_bins = len(count)
        edges = np.linspace(0, 1, n_bins + 1)
        hist.step(edges, np.append(count, count[-1] if n_bins else 0), where="post", color=colour, lw=1.2)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy in bin", title="reliability (top-1 confidence)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    hist.set(xlabel="confidence (top-1 probability)", ylabel="images")
    hist.grid(alpha=0.3)
    return _save(fig, path)


def plot_class_distribution(counts: Mapping[str, Mapping[str, int]], classes: Sequence[str], path: Path) -> Path:
    """Images per class (horizontal bars), one bar per split (train/val/test, or whatever `counts` holds)."""
    n = max(len(counts), 1)
    height = 0.8 / n
    y = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(classes) * max(1, n / 2) + 1)))
    for k, (split, per_class) in enumerate(counts.items()):
        vals = [per_class.get(c, 0) for c in classes]
        bars = ax.barh(y - 0.4 + height * (k + 0.5), vals, height, label=_text(f"{split} ({sum(vals)})"))
        for bar, v in zip(bars, vals):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v}", va="center", fontsize=7)
    ax.set_yticks(y, [_text(c) for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="images", title="class distribution")
    ax.margins(x=0.12)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
