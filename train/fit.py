"""Training: float phases (head, then fine-tuning), then quantization-aware training; resumable.

    from skinedge.train.config import TrainConfig
    from skinedge.train.fit import train
    summary = train(TrainConfig(data="../shared/data/ham10000", out="runs/ham", epochs=10), resume=False)

RUN_DIR after a run:
    config.json  resolved config          split.csv   train/val/test split (by lesion)   labels.txt
    history/<phase>.csv  per-epoch logs   curves.png  training curves                state.json  phases done
    float.weights.h5 / float.keras        the best float model (by validation balanced accuracy)
    qat.weights.h5                         the best QAT model (rebuild with skinedge.convert.model.load_qat_model)
    metrics.json                           validation metrics of the float and QAT models
Each phase keeps a BackupAndRestore checkpoint, so a killed run continues with `--resume` from its last epoch.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from skinedge.convert.metrics import classification_metrics
from skinedge.convert.model import (
    build_model,
    calibrate_qat_ranges,
    load_float_model,
    load_qat_model,
    quantize_model,
    set_phase,
)
from skinedge.convert.rundir import (
    FLOAT_WEIGHTS, QAT_WEIGHTS, RunDir, RunDirError, cache_dir, groups_are_lesions, read_history,
)
from skinedge.convert.tfcompat import keras, tf
from skinedge.device.atomic import copy_file, replaced_file
from skinedge.device.labels import format_labels

from . import data as D
from .config import OVERSAMPLE, TrainConfig, phase_plan
from .distill import Distiller
from .ema import ModelEMA
from .monitor import MONITOR, TrainBalancedAccuracy, ValidationMetrics, validation_scores
from .pipeline import class_weights, make_dataset
from .plots import plot_history
from .swa import WeightAverage
from .warmstart import adopt_float, copy_backbone, float_run, left_out, open_run, open_source, pinned_groups
from .weights import resolve_weights

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run dir or configuration that cannot be used; the message says what to do."""


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file renamed into place: a full disk or a kill leaves the old file whole."""
    with replaced_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _in_run(run: Path, stored: Optional[str]) -> Optional[Path]:
    """A weights file recorded in state.json, as a path under `run`.

    Stored relative to the run dir; older runs stored the path as given on the command line (relative to the
    directory training was started from), so the file's place under the run dir is tried too."""
    if not stored:
        return None
    path = Path(stored)
    if path.is_absolute() and path.is_file():
        return path
    for candidate in (run / path, run / "checkpoints" / path.name):
        if candidate.is_file():
            return candidate
    return run / path


def _weights_readable(path: Path) -> bool:
    """Whether an .h5 weights file opens (a kill while it was being written can leave it truncated)."""
    try:
        import h5py

        with h5py.File(path, "r"):
            return True
    except Exception:  # noqa: BLE001 - h5py raises OSError and others for a damaged file
        return False


def lr_schedule(peak: float, total_steps: int, warmup_steps: int = 0) -> Any:
    """A phase's learning rate: up from 0 to `peak` linearly over `warmup_steps`, then cosine decay to 5 % of it by
    `total_steps`."""
    warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(1, total_steps), alpha=0.05)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total_steps - warmup_steps, alpha=0.05,
                                                  warmup_target=peak, warmup_steps=warmup_steps)


def phase_mixup(cfg: TrainConfig, phase: str) -> float:
    """The mixup of a phase: the head and fine-tuning blend images; settling and QAT train on the real images the
    model will see (QAT learns their quantization ranges)."""
    return cfg.mixup if phase in ("head", "finetune") else 0.0


def _split(cfg: TrainConfig) -> tuple[dict[str, list[D.Sample]], list[str], str]:
    """The run's samples split by lesion (train, val, test), its classes and the data layout."""
    samples, classes, layout = D.list_samples(cfg.data, lesion_ids=cfg.lesion_ids)
    # checked against every image of the data, left out or limited or not: an extra image must copy none of them
    extra = D.extra_samples(cfg.extra_train, cfg.extra_labels, classes, samples) if cfg.extra_train else []
    if layout == "folders" and not cfg.lesion_ids:
        # the split cannot see that two files show one lesion; say so rather than report "lesions" it never had
        log.warning("%s: a folder per class names no lesions, so every image is split on its own; if several images "
                    "show one lesion (the ISIC sets reuse HAM10000's), pass --lesion-ids", cfg.data)
    if cfg.leave_out:
        samples = left_out(samples, open_run(cfg.leave_out, "--leave-out"))
    if cfg.limit:
        share = cfg.limit / len(samples)
        samples = D.limit_samples(samples, cfg.limit, cfg.resolved_split_seed())
        if extra:  # a quick run stays quick with extra images: the same share of them
            extra = D.limit_samples(extra, max(1, round(share * len(extra))), cfg.resolved_split_seed())
    pinned = pinned_groups(samples, open_source(cfg)) if cfg.init_from else set()
    try:
        splits = D.split_samples(samples, cfg.val_fraction, cfg.test_fraction, cfg.resolved_split_seed(), pinned=pinned)
    except D.DataError as exc:
        raise D.DataError(f"{cfg.data}: {exc}") from None
    if extra:
        splits[D.EXTRA_SPLIT] = extra
    return splits, classes, layout


def _by_lesion(cfg: TrainConfig, split: str) -> bool:
    """Whether the groups of `split` are lesions (HAM10000, --lesion-ids) or images with their copies."""
    if split != D.EXTRA_SPLIT:
        return groups_are_lesions(cfg.to_dict())
    try:
        return bool(cfg.extra_train) and D.detect_layout(Path(cfg.extra_train)) == "ham10000"
    except D.DataError:
        return False


def _count(items: list[D.Sample], by_lesion: bool) -> str:
    return f"{len(items)} images, {len({s.group for s in items})} lesions" if by_lesion else f"{len(items)} images"


def prepare_run(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, Path, dict[str, list[D.Sample]], list[str]]:
    """Create or reopen RUN_DIR: the config, the split and the labels, fixed at the first start.

    The three are written in that order, each atomically, before any training; a run stopped before the last of
    them was written has trained nothing, so --resume simply prepares it again from the stored config."""
    run = Path(cfg.out)
    if resume:
        if not (run / "config.json").is_file():
            raise RunError(f"{run}: nothing to resume (no config.json); start a new run without --resume")
        try:
            stored_cfg = TrainConfig.load(run / "config.json")
        except (OSError, ValueError, TypeError) as exc:
            raise RunError(f"{run / 'config.json'}: unreadable ({exc})") from None
        stored_cfg.out = str(run)  # the run dir as named now (it may have been moved, or resumed from elsewhere)
        prepared = all((run / name).is_file() for name in (D.SPLIT_FILE, "labels.txt"))
        if not prepared and not (run / "state.json").exists():
            log.warning("%s: stopped before its split was saved; preparing it again", run)
            return prepare_run(stored_cfg, resume=False)
        try:
            stored = RunDir.open(run)
        except RunDirError as exc:
            raise RunError(f"{exc}; it cannot be resumed: start a new run in another --out") from None
        log.info("resuming %s", run)
        return stored_cfg, run, stored.splits, stored.classes
    if (run / "state.json").exists():
        raise RunError(f"{run}: already holds a run; pass --resume to continue it or choose another --out")
    if cfg.float_from:  # QAT alone, on another run's float model: its split, labels and settings
        cfg, source = float_run(cfg)
        splits, classes, layout = source.splits, source.classes, source.config.get("extra", {}).get("layout", "")
        cfg.validate()
    else:
        cfg.validate()
        cfg.split_seed = cfg.resolved_split_seed()  # stored resolved, like every other setting
        # the data first: unusable data must not leave an empty run dir behind
        splits, classes, layout = _split(cfg)
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"{run}: cannot write to the run dir ({exc.strerror})") from None
    # the command as a user would retype it: `skinedge` rather than the path of whichever script launched it
    argv = ["skinedge", *sys.argv[1:]] if Path(sys.argv[0]).name in ("skinedge", "__main__.py") else sys.argv
    cfg.extra = {**cfg.extra, "layout": layout, "command": shlex.join(argv)}
    cfg.save(run / "config.json")
    D.save_split(run / D.SPLIT_FILE, splits)
    _write_text(run / "labels.txt", format_labels(classes))
    for name, items in splits.items():
        log.info("%s: %s %s", name, _count(items, _by_lesion(cfg, name)), D.class_counts(items))
    return cfg, run, splits, classes


def _best_so_far(history_csv: Path) -> Optional[float]:
    return max(read_history(history_csv).get(MONITOR, []), default=None)


def _strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        log.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _run_phase(
    cfg: TrainConfig, run: Path, phase: str, epochs: int, lr: float, start_weights: Optional[str],
    weights_path: Optional[str], train_xy: tuple[np.ndarray, np.ndarray], val_xy: tuple[np.ndarray, np.ndarray],
    num_classes: int, resume: bool,
) -> tuple[Path, float, Optional[dict[str, Any]]]:
    """Train one phase; returns (best weights file, best validation balanced accuracy, what weight averaging gave
    or None)."""
    x, y = train_xy
    strategy = _strategy()
    with strategy.scope():
        if start_weights:
            model = load_float_model(cfg.arch, num_classes, cfg.input_size, cfg.alpha, start_weights)
        else:
            model = build_model(cfg.arch, num_classes, cfg.input_size, cfg.alpha, weights_path)
            if cfg.init_from:
                copy_backbone(model, open_source(cfg))
        if phase == "qat":
            model = quantize_model(model)
        set_phase(model, phase, cfg.arch, cfg.finetune_from)
        if phase == "qat" and not (resume and (run / "backup" / phase).exists()):
            rng = np.random.default_rng(cfg.seed)
            calibrate_qat_ranges(model, x[rng.choice(len(x), size=min(len(x), 512), replace=False)])
        if phase == "qat" and cfg.qat_distill and start_weights:
            teacher = load_float_model(cfg.arch, num_classes, cfg.input_size, cfg.alpha, start_weights)
            model = Distiller(model, teacher, cfg.qat_distill)
        steps = int(np.ceil(len(y) / cfg.batch_size))
        warmup = round(cfg.warmup_epochs * steps) if phase == "finetune" else 0
        model.compile(
            optimizer=keras.optimizers.Adam(lr_schedule(lr, epochs * steps, warmup)),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[TrainBalancedAccuracy(num_classes)],
        )
    weights = class_weights(y, num_classes) if cfg.balance == "weights" else None
    mixup = phase_mixup(cfg, phase)
    ds = make_dataset(x, y, num_classes, cfg.batch_size, training=True, seed=cfg.seed,
                      augment=cfg.augment_level if cfg.augment else None,
                      oversample=OVERSAMPLE.get(cfg.balance), label_smoothing=cfg.label_smoothing,
                      class_weight=weights, mixup=mixup, rot90=cfg.rot90)
    (run / "history").mkdir(exist_ok=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    history_csv = run / "history" / f"{phase}.csv"
    best_file = run / "checkpoints" / f"{phase}.weights.h5"
    best = _best_so_far(history_csv) if resume else None
    if not resume and history_csv.exists():
        history_csv.unlink()
    if resume and best_file.exists() and not _weights_readable(best_file):
        log.warning("%s: damaged (the run was stopped while writing it); the next epoch writes it again", best_file)
        best_file.unlink()
        best = None
    ema = None
    if phase == "finetune" and cfg.ema:
        ema_file = run / "checkpoints" / f"{phase}.ema.npz"
        if not resume:
            ema_file.unlink(missing_ok=True)
        ema = ModelEMA(cfg.ema, ema_file)
    # In this order at each epoch's end: score, keep the best, back up (the epoch's history row comes after its
    # backup, so a resumed phase never logs an epoch twice), then early stopping and the history.
    callbacks = [
        *([ema.scoring()] if ema else []),  # swaps the averaged weights in for the scores and the checkpoint
        ValidationMetrics(*val_xy, num_classes, cfg.batch_size),
        keras.callbacks.ModelCheckpoint(
            str(best_file), monitor=MONITOR, mode="max", save_best_only=True, save_weights_only=True,
            initial_value_threshold=best,
        ),
        *([ema] if ema else []),  # swaps the live weights back (and saves the average) before the backup
        keras.callbacks.BackupAndRestore(str(run / "backup" / phase)),
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
    ]
    swa = None
    if phase == "finetune" and cfg.swa_epochs:
        swa_file = run / "checkpoints" / f"{phase}.swa.npz"
        if not resume:
            swa_file.unlink(missing_ok=True)
        swa = WeightAverage(epochs - cfg.swa_epochs, swa_file)
        callbacks.append(swa)
    log.info("phase %s: %d epochs, lr %.2g, %d steps/epoch%s%s%s", phase, epochs, lr, steps,
             f", mixup {mixup}" if mixup else "", f", scoring a moving average of the weights (decay {cfg.ema:g})"
             if ema else "", f", distilling the float model ({model.weight:g} of each target)"
             if isinstance(model, Distiller) else "")
    # class weights come with each batch (make_dataset), blended with the images when they are mixed
    model.fit(ds, epochs=epochs, callbacks=callbacks, verbose=1 if sys.stderr.isatty() else 2)
    if not best_file.exists():  # every epoch was worse than the threshold carried over from before a resume
        if ema:
            ema.swap_in()
        model.save_weights(str(best_file))
    best = float(_best_so_far(history_csv) or 0.0)
    averaged = _use_average(swa, model, val_xy, cfg.batch_size, best, best_file) if swa else None
    return best_file, max(best, (averaged or {}).get(MONITOR, 0.0)), averaged


def _use_average(swa: WeightAverage, model: keras.Model, val_xy: tuple[np.ndarray, np.ndarray], batch_size: int,
                 best: float, best_file: Path) -> Optional[dict[str, Any]]:
    """Score the averaged weights on validation; they replace `best_file` only if they beat its `best` score."""
    if swa.count < 2:  # early stopping ended the phase before the averaging window: nothing to average
        log.info("weight averaging: %d epoch(s) averaged, nothing to compare", swa.count)
        return None
    swa.apply(model)
    probs = model.predict(val_xy[0], batch_size=batch_size, verbose=0)
    score = validation_scores(val_xy[1], probs)[MONITOR]
    kept = score > best
    log.info("weight average of %d epochs: %s %.4f against %.4f for the best single epoch: %s", swa.count, MONITOR,
             score, best, "kept" if kept else "not kept")
    if kept:
        with replaced_file(best_file) as tmp:  # keeps ".weights.h5": not the legacy ".h5" layout
            model.save_weights(str(tmp))
    return {"epochs": swa.count, "best_single_epoch": best, MONITOR: score, "kept": kept}


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) every phase, then evaluate the best float and QAT models on the validation split."""
    t0 = time.time()
    cfg, run, splits, classes = prepare_run(cfg, resume)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:  # process-wide and one-way: TensorFlow has no public switch back
        tf.config.experimental.enable_op_determinism()
    state_path = run / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {"phases": {}}
        if not isinstance(state, dict) or not isinstance(state.get("phases"), dict):
            raise ValueError("not a skinedge state file")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{state_path}: unreadable ({exc}); the run cannot be resumed") from None
    if cfg.float_from and not state["phases"]:
        adopt_float(run, Path(cfg.float_from), state)
    _write_json(state_path, state)
    size = cfg.input_size
    cache = cache_dir(cfg.to_dict(), run)
    x_tr, y_tr, _ = D.load_images(D.training_samples(splits), classes, size, cache, cfg.workers)
    x_va, y_va, _ = D.load_images(splits["val"], classes, size, cache, cfg.workers)
    if len(y_tr) == 0 or len(y_va) == 0:
        raise RunError(f"{cfg.data}: no readable images in the training or validation split")
    log.info("decoded %d training and %d validation images at %dx%d", len(y_tr), len(y_va), *size)
    unseen = [c for i, c in enumerate(classes) if not np.any(y_tr == i)]
    if unseen:
        log.warning("class(es) %s have no readable training images: the model cannot learn them", ", ".join(unseen))
    # --init-from and --float-from bring their own weights: the ImageNet ones are neither needed nor downloaded
    weights_path = (resolve_weights(cfg.weights, cfg.alpha)
                    if cfg.arch == "mobilenetv2" and not (cfg.init_from or cfg.float_from) else None)

    found = _in_run(run, state.get("float_best"))
    float_best: Optional[str] = str(found) if found else None
    for phase, epochs, lr in phase_plan(cfg):
        done = state["phases"].get(phase, {})
        if done.get("done"):
            log.info("phase %s already done (best %s %.4f)", phase, MONITOR, done["best"])
            continue
        start = float_best if phase != "head" else None
        best_file, best, averaged = _run_phase(cfg, run, phase, epochs, lr, start, weights_path, (x_tr, y_tr),
                                               (x_va, y_va), len(classes), resume)
        # paths relative to the run dir, so the run can be resumed from any directory or after a move
        state["phases"][phase] = {"done": True, "best": best, "weights": str(best_file.relative_to(run))}
        if averaged:
            state["phases"][phase]["swa"] = averaged
        if phase != "qat" and best >= max((state["phases"][p]["best"] for p in state["phases"] if p != "qat"),
                                          default=0.0):
            float_best = str(best_file)
            state["float_best"] = str(best_file.relative_to(run))
        shutil.rmtree(run / "backup" / phase, ignore_errors=True)
        _write_json(state_path, state)
    summary = finish(cfg, run, classes, (x_va, y_va), float_best, state)
    summary["train_seconds"] = round(time.time() - t0, 1)
    summary["hardware"] = hardware()
    _write_json(run / "summary.json", summary)
    return summary


def hardware() -> str:
    """What this run trained on, for the model card: CPU, cores, OS, Python, and the GPUs TensorFlow sees."""
    from skinedge.device.bench import machine

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # noqa: BLE001 - details are best effort; the count is what matters
            names.append(gpu.name)
    return f"{machine()}; " + (f"{len(gpus)} GPU ({', '.join(names)})" if gpus else "no GPU (CPU only)")


def finish(cfg: TrainConfig, run: Path, classes: list[str], val_xy: tuple[np.ndarray, np.ndarray],
           float_best: Optional[str], state: dict[str, Any]) -> dict[str, Any]:
    """Copy the best models to their final names, evaluate them on validation data, plot the curves."""
    x_va, y_va = val_xy
    metrics: dict[str, Any] = {}
    if float_best:
        copy_file(Path(float_best), run / FLOAT_WEIGHTS)
        model = load_float_model(cfg.arch, len(classes), cfg.input_size, cfg.alpha, str(run / FLOAT_WEIGHTS))
        with replaced_file(run / "float.keras") as tmp:
            model.save(tmp)
        float_probs = model.predict(x_va, batch_size=cfg.batch_size, verbose=0)
        metrics["float"] = classification_metrics(y_va, float_probs, classes)
    if state["phases"].get("qat", {}).get("done"):
        copy_file(_in_run(run, state["phases"]["qat"]["weights"]), run / QAT_WEIGHTS)
        qat = load_qat_model(cfg.arch, len(classes), cfg.input_size, cfg.alpha, str(run / QAT_WEIGHTS))
        qat_probs = qat.predict(x_va, batch_size=cfg.batch_size, verbose=0)
        ref = float_probs.argmax(1) if float_best else None
        metrics["qat"] = classification_metrics(y_va, qat_probs, classes, reference_pred=ref)
    _write_json(run / "metrics.json", {"split": "val", **metrics})
    histories = {p: read_history(run / "history" / f"{p}.csv") for p, _, _ in phase_plan(cfg)}
    plot_history(histories, run / "curves.png")
    for name, m in metrics.items():
        log.info("validation %s: accuracy %.3f, balanced accuracy %.3f, macro F1 %.3f",
                 name, m["accuracy"], m["balanced_accuracy"], m["macro_f1"])
    return {"classes": classes, "validation": metrics, "phases": state["phases"]}
