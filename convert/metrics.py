"""Classification metrics (pure functions over labels and probabilities), computed with scikit-learn.

    m = classification_metrics(y_true, probs, classes)      # accuracy, balanced accuracy, macro F1, AUC, ...
    t = threshold_for_sensitivity(y_true == mel, probs[:, mel], 0.9)
    lo, hi = proportion_ci(122, 136)                          # 95 % Wilson interval of a sensitivity of 122/136
    ci = bootstrap_balanced_accuracy(y_true, {"int8": p8.argmax(1), "float": pf.argmax(1)}, lesion_ids,
                                     pairs=[("int8", "float")])  # intervals by resampling lesions
    m = classification_metrics(y_true, probs, classes, flag=FlagRule("mel", t))  # + the flag's sensitivity ...
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

from skinedge.device.bundle import FlagRule
from skinedge.device.constants import MELANOMA_LABELS


def melanoma_index(classes: Sequence[str]) -> Optional[int]:
    for i, name in enumerate(classes):
        if name.lower() in MELANOMA_LABELS:
            return i
    return None


def _clean(x: float) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def binary_rates(positive: np.ndarray, predicted: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    """(sensitivity, specificity) of a binary decision; None where a side has no examples."""
    positive, predicted = positive.astype(bool), predicted.astype(bool)
    sens = predicted[positive].mean() if positive.any() else None
    spec = (~predicted[~positive]).mean() if (~positive).any() else None
    return _clean(sens), _clean(spec)


def proportion_ci(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (a sensitivity or specificity): how far the rate measured on `trials`
    images may lie from the rate on new images. Wilson, because it stays inside [0, 1] and holds near 0 and 1."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_balanced_accuracy(
    y_true: np.ndarray, preds: Mapping[str, np.ndarray], groups: Sequence[str],
    pairs: Sequence[tuple[str, str]] = (), resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
    unit: str = "lesion",
) -> dict[str, Any]:
    """Confidence intervals of each model's balanced accuracy and of differences between models (`pairs`: (a, b)
    for a minus b), from `resamples` bootstrap draws of the groups (lesions) with replacement. A lesion's images
    are not independent evidence, so they are drawn together; every model is scored on the same draws, so the
    differences are paired. Percentile intervals; a class absent from a draw is left out of its mean. `unit` names
    what a group is ("lesion", or "image" where no lesion ids group them), for the record."""
    y = np.asarray(y_true)
    if len(y) == 0:
        return {"resamples": 0, "confidence": confidence, "unit": unit,
                "balanced_accuracy": {name: [None, None] for name in preds},
                "differences": {f"{a} - {b}": [None, None] for a, b in pairs}}
    _, group_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n_groups, n_classes = int(group_of.max()) + 1, int(y.max()) + 1
    rng = np.random.default_rng(seed)
    scores = {name: np.empty(resamples) for name in preds}
    correct = {name: (np.asarray(p) == y).astype(np.float64) for name, p in preds.items()}
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group_of].astype(np.float64)
        support = np.bincount(y, weights=weights, minlength=n_classes)
        present = support > 0
        for name, hits in correct.items():
            recall = np.bincount(y, weights=weights * hits, minlength=n_classes)[present] / support[present]
            scores[name][b] = recall.mean()
    tail = 100 * (1 - confidence) / 2

    def interval(values: np.ndarray) -> list[Optional[float]]:
        return [_clean(np.percentile(values, tail)), _clean(np.percentile(values, 100 - tail))]

    return {"resamples": resamples, "confidence": confidence, "unit": unit,
            "balanced_accuracy": {name: interval(v) for name, v in scores.items()},
            "differences": {f"{a} - {b}": interval(scores[a] - scores[b]) for a, b in pairs}}


def threshold_for_sensitivity(positive: np.ndarray, score: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity on (positive, score) reaches `sensitivity`."""
    pos = np.sort(score[positive.astype(bool)])
    if len(pos) == 0:
        return 0.5
    # allow at most floor((1 - sensitivity) * n) positives below the threshold
    k = int(math.floor((1 - sensitivity) * len(pos) + 1e-9))
    return float(pos[min(k, len(pos) - 1)])


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], flag: Optional[FlagRule] = None,
    reference_pred: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1, one-vs-rest ROC-AUC, melanoma
    sensitivity/specificity (at argmax, and of the bundle's `flag` rule when given, with the ROC-AUC of the score
    it thresholds) and top-1 agreement with `reference_pred` (e.g. the float model's predictions)."""
    y_true = np.asarray(y_true)
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    p, r, f, support = skm.precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    present = np.unique(y_true)
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": _clean(skm.accuracy_score(y_true, pred)),
        "balanced_accuracy": _clean(np.mean(r[present])) if len(present) else None,
        "macro_f1": _clean(np.mean(f[present])) if len(present) else None,
        "per_class": {
            c: {"precision": _clean(p[i]), "recall": _clean(r[i]), "f1": _clean(f[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    try:
        if len(present) == len(classes):
            # dequantized int8 outputs sum to 1 only within a few 1/256 steps; sklearn insists on exactly 1
            norm = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
            out["roc_auc_macro"] = _clean(skm.roc_auc_score(y_true, norm, multi_class="ovr", labels=labels))
        else:
            out["roc_auc_macro"] = None
    except ValueError:
        out["roc_auc_macro"] = None
    mel = melanoma_index(classes)
    if mel is not None:
        positive = y_true == mel
        out["melanoma"] = {"class": classes[mel]}
        out["melanoma"]["sensitivity"], out["melanoma"]["specificity"] = binary_rates(positive, pred == mel)
        if positive.any() and (~positive).any():
            out["melanoma"]["roc_auc"] = _clean(skm.roc_auc_score(positive, probs[:, mel]))
        if flag is not None and flag.label == classes[mel]:
            score = flag.scores(probs, classes)
            sens, spec = binary_rates(positive, score >= flag.threshold)
            out["melanoma"]["flag"] = {"threshold": _clean(flag.threshold), "sensitivity": sens, "specificity": spec}
            if flag.class_frequencies and positive.any() and (~positive).any():
                out["melanoma"]["flag"]["roc_auc"] = _clean(skm.roc_auc_score(positive, score))
    if reference_pred is not None:
        out["agreement"] = _clean(np.mean(pred == np.asarray(reference_pred)))
    return out
