"""Compare the float Keras, QAT Keras, int8 TFLite and post-training-quantized int8 models on the same images.

    from skinedge.train.compare import run_compare
    result = run_compare(None, "runs/ham", "models/ham", Path("reports/ham"))   # the run's held-out test split

Writes REPORT_DIR/metrics.json, report.html (self-contained: plots and thumbnails embedded), report.md and the PNGs
(skinedge.train.report). A bundle with test-time augmentation (model.json input.tta) is scored as the device runs
it, and so is every other variant, averaged over the same views: like is compared with like. The report dir is
assembled in a temporary folder and renamed into place, so an interrupted comparison never leaves a half-written
report.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from skinedge.convert.metrics import bootstrap_balanced_accuracy, classification_metrics
from skinedge.convert.rundir import (
    FLOAT_WEIGHTS, QAT_WEIGHTS, RunDir, RunDirError, groups_are_lesions, read_histories,
)
from skinedge.device.atomic import staged_dir
from skinedge.device.bundle import BundleError
from skinedge.device.classifier import ImageClassifier
from skinedge.device.constants import TTA_VIEWS
from skinedge.device.preprocess import tta_problem

from . import data as D
from . import report as R

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 30  # single-image calls timed per variant (median reported)


class CompareError(ValueError):
    """Inputs that cannot be compared; the message names the file and the problem."""


@dataclass
class Variant:
    name: str  # float, qat, int8, ptq_int8
    description: str
    probs: np.ndarray  # N x classes
    size_bytes: int
    latency_ms: float  # median single-image inference time on this machine


def _progress(name: str, total: int) -> tqdm:
    """A progress bar over images on stderr (silent when stderr is not a terminal)."""
    return tqdm(total=total, desc=f"{name:9s}", unit="img", disable=None, dynamic_ncols=True)


def _keras_variant(name: str, description: str, model, x: np.ndarray, size_bytes: int, tta: str = "none"
                   ) -> Variant:
    from skinedge.convert.export import keras_probs

    with _progress(name, len(x)) as bar:
        probs = keras_probs(model, x, tta=tta, on_batch=bar.update)
    times = []
    for img in x[:LATENCY_SAMPLES]:
        t0 = time.perf_counter()
        model(img[None].astype(np.float32), training=False)
        times.append((time.perf_counter() - t0) * 1e3)
    return Variant(name, description, probs, size_bytes, float(np.median(times)) if times else 0.0)


def _tflite_variant(name: str, description: str, clf: ImageClassifier, x: np.ndarray) -> Variant:
    probs, times = [], []
    with _progress(name, len(x)) as bar:
        for img in x:
            t0 = time.perf_counter()
            probs.append(clf.probabilities(img))  # averaged over the classifier's test-time augmentation
            times.append((time.perf_counter() - t0) * 1e3)
            bar.update()
    size = clf.source.model_path.stat().st_size
    stacked = np.stack(probs) if probs else np.zeros((0, clf.num_classes))
    return Variant(name, description, stacked, size, float(np.median(times)) if times else 0.0)


def _select(data: Optional[str], run: Optional[RunDir], split: Optional[str], limit: Optional[int],
            seed: int) -> tuple[list[D.Sample], str, str]:
    """The labelled images to evaluate, a description of where they came from, and what their groups are: "lesion"
    where lesion ids group them, else "image" (an image and its byte-identical copies)."""
    same_data = run is not None and (data is None or Path(data).resolve() == Path(run.config["data"]).resolve())
    if same_data:
        name = split or ("test" if run.splits.get("test") else "val")
        splits = run.splits
        samples = list(splits["train"] + splits["val"] + splits["test"]) if name == "all" else splits[name]
        if not samples:
            raise CompareError(f"{run.path}: the run's {name} split is empty")
        if name == "all":  # training images score higher than unseen ones: say so where the figures are read
            extra = " (not its --extra-train images)" if splits.get(D.EXTRA_SPLIT) else ""
            where = (f"{run.config['data']}, the run's train, val and test splits{extra} ({len(samples)} images, "
                     "training images included: optimistic figures)")
        else:
            where = (f"{run.config['data']}, the run's {name} split ({len(samples)} images, lesion-disjoint from "
                     "training)")
        by_lesion = groups_are_lesions(run.config)
    else:
        if data is None:
            raise CompareError("give DATA (labelled images) when comparing a bundle without its run")
        try:
            samples, _, layout = D.list_samples(data)
        except D.DataError as exc:
            raise CompareError(str(exc)) from None
        where = f"{data} ({layout} layout, all {len(samples)} images)"
        by_lesion = layout == "ham10000"
    if limit:
        samples = D.limit_samples(samples, limit, seed)
        where += f", limited to {len(samples)}"
    return samples, where, "lesion" if by_lesion else "image"


def _table(variants: Sequence[Variant], metrics: dict[str, dict[str, Any]]) -> str:
    return R.markdown_table({v.name: metrics[v.name] for v in variants})


def run_compare(data: Optional[str], run_dir: Optional[str], bundle: Optional[str], out: Path,
                split: Optional[str] = None, limit: Optional[int] = None, threads: int = 2,
                tta: Optional[str] = None) -> dict[str, Any]:
    """Evaluate every available variant on the same images; write the report; return metrics and table.

    `tta` overrides the bundle's test-time augmentation (default: the bundle's, or none without a bundle)."""
    try:
        run = RunDir.open(run_dir, require=(FLOAT_WEIGHTS,)) if run_dir else None
    except RunDirError as exc:
        raise CompareError(str(exc)) from None
    clf = None
    if bundle:
        try:
            clf = ImageClassifier(bundle, num_threads=threads, tta=tta)
        except BundleError as exc:
            raise CompareError(str(exc)) from None
    if run:
        classes, size = run.classes, run.img_size
        if clf is not None and clf.labels != classes:
            raise CompareError(f"{bundle}: its labels {clf.labels} differ from the run's {classes}")
    else:
        classes, size = clf.labels, clf.input_size
    tta = clf.tta if clf is not None else (tta or "none")
    problem = tta_problem(tta, size)
    if problem:
        raise CompareError(f"{run_dir or bundle}: {problem}")
    samples, where, unit = _select(data, run, split, limit, run.config.get("seed", 0) if run else 0)
    if tta != "none":
        where += f"; every model averaged over {len(TTA_VIEWS[tta])} views of each image (test-time augmentation {tta})"
    source = data or run.config["data"]
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise CompareError(f"{source}: label(s) {', '.join(unknown)} are not among the model's classes")
    x, y, kept = D.load_images(samples, classes, size)
    if len(y) == 0:
        raise CompareError(f"{source}: none of the images could be read")
    log.info("evaluating on %d images at %dx%d", len(y), *size)

    variants: list[Variant] = []
    if run:
        from skinedge.convert.export import tflite_classifier, to_int8_tflite
        from skinedge.convert.model import input_normalization, load_float_model, load_qat_model

        arch, alpha = run.config["arch"], run.config["alpha"]
        float_model = load_float_model(arch, len(classes), size, alpha, str(run.path / FLOAT_WEIGHTS))
        variants.append(_keras_variant("float", "Keras float32", float_model, x, 4 * float_model.count_params(),
                                       tta))
        if (run.path / QAT_WEIGHTS).is_file():
            qat = load_qat_model(arch, len(classes), size, alpha, str(run.path / QAT_WEIGHTS))
            variants.append(_keras_variant("qat", "Keras QAT (fake-quantized)", qat, x, 4 * qat.count_params(),
                                           tta))
        with tempfile.TemporaryDirectory() as tmp:
            log.info("post-training quantization of the float model (the PTQ baseline)")
            ptq_model = to_int8_tflite(float_model, run.calibration(200))
            ptq = tflite_classifier(ptq_model, Path(tmp), classes, "ptq.tflite", threads,
                                    norm=input_normalization(float_model), tta=tta)
            variants.append(_tflite_variant("ptq_int8", "int8 TFLite by post-training quantization of the float "
                                            "model (baseline)", ptq, x))
    if clf is not None:
        variants.append(_tflite_variant("int8", f"int8 TFLite bundle {bundle}", clf, x))

    flag = clf.flag_rule if clf is not None else None
    reference = variants[0].probs.argmax(1) if variants and variants[0].name == "float" else None
    metrics: dict[str, Any] = {}
    for v in variants:
        m = classification_metrics(y, v.probs, classes, flag=flag, reference_pred=reference)
        ece = R.reliability(y, v.probs)[3]
        metrics[v.name] = {"description": v.description, "size_bytes": v.size_bytes,
                           "latency_ms": round(v.latency_ms, 3), **m, "ece": round(ece, 6)}
    names = [v.name for v in variants]
    pairs = [(n, "float") for n in names if n != "float" and "float" in names]
    if {"int8", "ptq_int8"} <= set(names):
        pairs.append(("int8", "ptq_int8"))  # does QAT earn its place over post-training quantization?
    boot = bootstrap_balanced_accuracy(y, {v.name: v.probs.argmax(1) for v in variants}, [s.group for s in kept],
                                       pairs, unit=unit)
    for name, interval in boot["balanced_accuracy"].items():
        metrics[name]["balanced_accuracy_ci"] = interval
    table = _table(variants, metrics)
    histories: dict[str, dict[str, list[float]]] = {}
    if run:
        counts = {name: D.class_counts(run.splits[name]) for name in ("train", D.EXTRA_SPLIT, "val", "test")
                  if run.splits.get(name)}
        histories = {phase: h for phase, h in read_histories(run.path).items() if h}  # curves need at least a row
    else:
        counts = {"evaluated": {c: int(np.sum(y == i)) for i, c in enumerate(classes)}}
    inputs = R.ReportInputs(where=where, classes=classes, y=y, probs={v.name: v.probs for v in variants},
                            metrics=metrics, dataset=str(source), images=x, paths=[s.path for s in kept],
                            flag=flag, histories=histories,
                            class_counts=counts)

    if out.exists():
        # only ever replace an earlier report (never a run dir or data given as --out by mistake)
        from skinedge.cli import is_report_dir

        if not (out.is_dir() and is_report_dir(out)):
            raise CompareError(f"{out}: exists and is not a skinedge report; choose another --out")
    with staged_dir(out) as tmp_dir:
        R.write_report(tmp_dir, inputs)
        record = {"images": where, "data": str(source), "n": int(len(y)), "classes": list(classes),
                  "tta": tta, "flag_threshold": flag.threshold if flag else None,
                  "flag_rule": flag.describe() if flag else None, "summary": R.summary(metrics), "variants": metrics,
                  "bootstrap": {k: v for k, v in boot.items() if k != "balanced_accuracy"}}
        (tmp_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {"table": table, "metrics": metrics, "where": where}
