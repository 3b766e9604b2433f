"""`skinedge train` and `skinedge compare`: thin click commands over skinedge.train."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import click

from skinedge.cli import (
    EXIT_FAILED,
    HDF5_MAGIC,
    FiniteFloatRange,
    InputError,
    check_hdf5,
    check_out_dir,
    is_report_dir,
    one_line,
    os_error,
)
from skinedge.device.constants import TTA_VIEWS
from .config import AUGMENT_LEVELS, BALANCE_MODES

log = logging.getLogger(__name__)

MAX_IMG_SIZE = 1024  # far above what an edge model uses; larger sizes only exhaust memory
MAX_SEED = 2**32 - 1  # numpy, scikit-learn and Keras all take seeds in [0, 2**32)


def _is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _check_run_out(data: str, out: str, resume: bool) -> None:
    """Refuse an unusable --out before anything is imported or read (usage error, exit 2)."""
    run = Path(out)
    if resume:
        if not _is_run_dir(run):
            raise click.BadParameter(f"{run}: nothing to resume (no config.json); start a new run without --resume.",
                                     param_hint="'--out'")
    elif (run / "state.json").exists():
        raise click.BadParameter(f"{run} already holds a run; pass --resume to continue it or choose another "
                                 "folder.", param_hint="'--out'")
    check_out_dir(out, replaceable=_is_run_dir, what="run dir")
    data_dir, run_dir = Path(data).resolve(), run.resolve()
    if run_dir == data_dir or data_dir in run_dir.parents:
        raise click.BadParameter(f"{run} is inside the data folder {data}; its files would be read as data.",
                                 param_hint="'--out'")


def _check_float_from(ctx: click.Context) -> None:
    """Refuse float-phase options next to --float-from: the float run's settings apply, and a value that is
    silently ignored would mislead (usage error, exit 2)."""
    from .config import FLOAT_FROM_CHOICES

    allowed = {"data", "out", "float_from", "resume", *FLOAT_FROM_CHOICES}
    given = [p for p in ctx.command.params if p.name not in allowed
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        choices = ", ".join("--" + name.replace("_", "-") for name in FLOAT_FROM_CHOICES)
        raise click.UsageError(f"{', '.join(p.opts[0] for p in given)}: set by the run --float-from names (its "
                               f"split, input size and float settings apply); only {choices} can be chosen with it.")


def _label_map(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """THEIRS=OURS pairs as a dict (usage error, exit 2, for a pair without '=' or a class named twice)."""
    mapping: dict[str, str] = {}
    for value in values:
        folder, sep, label = (part.strip() for part in value.partition("="))
        if not sep or not folder or not label:
            raise click.BadParameter(f"{value!r}: expected THEIRS=OURS, e.g. 'melanoma=mel'", ctx, param)
        if mapping.get(folder, label) != label:
            raise click.BadParameter(f"{folder!r}: mapped to both {mapping[folder]} and {label}", ctx, param)
        mapping[folder] = label
    return mapping


class WeightsChoice(click.ParamType):
    """imagenet, none, or the path of an existing .h5 file."""

    name = "imagenet|none|PATH"

    def convert(self, value, param, ctx):
        if value in ("imagenet", "none"):
            return value
        if not Path(value).is_file():
            self.fail(f"{value}: not 'imagenet', 'none' or an existing weights file", param, ctx)
        try:
            with open(value, "rb") as fh:
                magic = fh.read(8)
        except OSError as exc:
            self.fail(f"{value}: cannot read ({exc.strerror})", param, ctx)
        if magic != HDF5_MAGIC:  # checked now, not after the images are decoded
            self.fail(f"{value}: not an HDF5 weights file", param, ctx)
        return value


class ImageSize(click.ParamType):
    """N (a square input) or HxW (height x width, like the model's input shape), each from 32 to MAX_IMG_SIZE."""

    name = "N|HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("×", "x").split("x")
        try:
            sizes = [int(p.strip()) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) not in (1, 2):
            self.fail(f"{value!r}: expected N or HxW, e.g. 192 or 192x256", param, ctx)
        if not all(32 <= n <= MAX_IMG_SIZE for n in sizes):
            self.fail(f"{value!r}: each side must be from 32 to {MAX_IMG_SIZE} px", param, ctx)
        return (sizes[0], sizes[-1])


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Run dir to create.")
@click.option("--arch", type=click.Choice(["mobilenetv2", "cnn"]), default="mobilenetv2", show_default=True)
@click.option("--alpha", type=click.Choice(["0.35", "0.5", "0.75", "1.0", "1.3", "1.4"]), default="1.0",
              show_default=True, help="MobileNetV2 width multiplier.")
@click.option("--weights", type=WeightsChoice(), default="imagenet", show_default=True,
              help="Backbone init: imagenet (download), none, or a no-top .h5 file.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Start from another finished run's backbone instead of --weights (HAM10000 before ISIC); the "
                   "lesions it trained or validated on stay in this run's training split.")
@click.option("--leave-out", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Leave out the lesions another run validates or tests on, so that run can --init-from this one.")
@click.option("--float-from", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Run QAT alone, on another finished run's best float model, with its split and settings (to try "
                   "--settle-epochs, --qat-epochs, --qat-distill or another --seed without training the float model "
                   "again).")
@click.option("--img-size", type=ImageSize(), default="128", show_default=True,
              help="Input size in px: N for N x N, or HxW (height x width): 192x256 keeps the whole of a 4:3 "
                   "image (HAM10000's 200x150) where N crops its centre square.")
@click.option("--head-epochs", type=click.IntRange(min=0), default=2, show_default=True,
              help="Epochs training the head on a frozen backbone (mobilenetv2).")
@click.option("--epochs", type=click.IntRange(min=0), default=10, show_default=True, help="Fine-tuning epochs.")
@click.option("--settle-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="After fine-tuning, N more epochs on unmixed images at a tenth of its learning rate (like "
                   "Ultralytics' close_mosaic), kept if they score higher on validation.")
@click.option("--qat-epochs", type=click.IntRange(min=0), default=3, show_default=True,
              help="Quantization-aware training epochs.")
@click.option("--qat-distill", type=FiniteFloatRange(0, 1), default=0.0, show_default=True,
              help="Share of each QAT target taken from the float model's answer for the same image, the rest from "
                   "the label (knowledge distillation: keeps the int8 model close to the float one; 0: off).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Head learning rate (fine-tuning lr/10, QAT lr/100).")
@click.option("--finetune-from", type=FiniteFloatRange(0, 1), default=0.6, show_default=True,
              help="Fine-tune the backbone above this fraction of its depth (0: all of it; mobilenetv2).")
@click.option("--balance", type=click.Choice(BALANCE_MODES), default="weights", show_default=True,
              help="Class imbalance: weight the loss, draw every class equally often (oversample), or in "
                   "proportion to the square root of its count (sqrt: milder, rare classes repeat less), or none.")
@click.option("--label-smoothing", type=FiniteFloatRange(0, 0.5), default=0.05, show_default=True)
@click.option("--limit", type=click.IntRange(min=10),
              help="Use only N images (stratified) for a quick run, and the same share of --extra-train's.")
@click.option("--lesion-ids", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="CSV of image_id,lesion_id (HAM10000_metadata.csv) that groups a folder-per-class DATA's images "
                   "by lesion, so no lesion straddles the splits.")
@click.option("--extra-train", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Another data set (a folder per class or a HAM10000 folder) whose images are added to training "
                   "only, never validation or test, e.g. the ISIC set's melanomas for HAM10000; lesions and images "
                   "that repeat DATA's are dropped.")
@click.option("--extra-label", "extra_labels", multiple=True, callback=_label_map, metavar="THEIRS=OURS",
              help="Which of DATA's classes a class (folder or dx code) of --extra-train is (repeatable); classes "
                   "named like one of DATA's need none, the others are left out.")
@click.option("--test-fraction", type=FiniteFloatRange(0, 0.5, max_open=True), default=0.15, show_default=True,
              help="Lesions held out as a test split (never trained or tuned on).")
@click.option("--val-fraction", type=FiniteFloatRange(0, 0.5, min_open=True, max_open=True), default=0.15,
              show_default=True, help="Lesions held out for validation.")
@click.option("--patience", type=click.IntRange(min=1), default=4, show_default=True, help="Early stopping.")
@click.option("--warmup-epochs", type=FiniteFloatRange(0, 1000), default=0.0, show_default=True,
              help="Fine-tuning: raise the learning rate from 0 over this many epochs (fractions allowed) before its "
                   "cosine decay; full-size first steps can knock a whole pretrained backbone back to chance.")
@click.option("--swa-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also average the weights of the last N fine-tuning epochs (SWA); the average is kept only if it "
                   "beats the best single epoch on validation.")
@click.option("--ema", type=FiniteFloatRange(0, 1, max_open=True), default=0.0, show_default=True, metavar="DECAY",
              help="Fine-tuning: validate, checkpoint and early-stop on a moving average of the weights, DECAY per "
                   "step (0.998 averages about the last 500 steps once warmed up; 0: off), as timm and Ultralytics do.")
@click.option("--mixup", type=FiniteFloatRange(0, 10), default=0.0, show_default=True,
              help="Blend training images and their labels in pairs, the share drawn from Beta(A, A) (mixup; 0.2-0.4 "
                   "regularises; 0: off). Float phases only: QAT trains on unmixed images.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Seeds weight init, sampling, augmentation, and the split unless --split-seed is given; with "
                   "--float-from it seeds QAT alone (the split stays that run's) [default: 42, or the --float-from "
                   "run's].")
@click.option("--split-seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Seeds the lesion split (and --limit's sample) alone [default: --seed]. Keep it and change "
                   "--seed to repeat training on the very same split.")
@click.option("--no-augment", is_flag=True, help="Disable augmentation.")
@click.option("--augment-level", type=click.Choice(AUGMENT_LEVELS), default="mild", show_default=True,
              help="How far augmentation goes: mild (small rotations, zoom and colour changes) or strong (any angle, "
                   "crops to 70 % of the side, stronger colour changes and a hue shift; for rare classes that "
                   "--balance oversample repeats many times an epoch).")
@click.option("--rot90", is_flag=True,
              help="Augmentation also rotates square images by multiples of 90 degrees (with the flips: all eight "
                   "orientations of a lesion, which has none of its own).")
@click.option("--deterministic", is_flag=True,
              help="Deterministic TensorFlow ops and input pipeline: the same command on the same machine gives "
                   "bit-identical weights (slower; without it CPU runs differ by a few points).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out (its stored config is used).")
@click.pass_context
def train(ctx: click.Context, data: str, out: str, arch: str, alpha: str, weights: str, init_from: Optional[str],
          leave_out: Optional[str], float_from: Optional[str], img_size: tuple[int, int], head_epochs: int, epochs: int,
          settle_epochs: int, qat_epochs: int, qat_distill: float, batch_size: int, lr: float, finetune_from: float,
          balance: str, label_smoothing: float, limit: Optional[int], lesion_ids: Optional[str],
          extra_train: Optional[str], extra_labels: dict[str, str], test_fraction: float,
          val_fraction: float, patience: int, warmup_epochs: float, swa_epochs: int, ema: float, mixup: float,
          seed: Optional[int], split_seed: Optional[int], no_augment: bool, augment_level: str, rot90: bool,
          deterministic: bool, resume: bool) -> None:
    """Train a classifier on DATA with quantization-aware training.

    DATA is a HAM10000 folder (HAM10000_metadata.csv + images/) or a folder per class. The split is by lesion:
    HAM10000's metadata names them; a folder per class takes them from --lesion-ids (the ISIC 9-class set reuses
    HAM10000 images, several of one lesion), or else treats each image as its own lesion. Phases: head (frozen
    backbone), fine-tuning, settling (--settle-epochs), then QAT.

    \b
    Examples:
      skinedge train ../shared/data/ham10000 --out runs/ham \\
          --weights ../shared/weights/mobilenet_v2_1.0_imagenet_no_top.h5 --img-size 160 --epochs 15
      skinedge train ../shared/data/isic9/Train --arch cnn --epochs 20 --out runs/isic-cnn \\
          --lesion-ids ../shared/data/ham10000/HAM10000_metadata.csv
      skinedge train ../shared/data/ham10000 --out runs/ham-for-isic9 --leave-out runs/isic9
      skinedge train ../shared/data/isic9/Train --out runs/isic9-from-ham --init-from runs/ham-for-isic9 \\
          --lesion-ids ../shared/data/ham10000/HAM10000_metadata.csv
      skinedge train ../shared/data/ham10000 --out runs/ham-distilled --float-from runs/ham --qat-distill 0.5
      skinedge train ../shared/data/ham10000 --out runs/ham-more-mel --extra-train ../shared/data/isic9/Train \\
          --extra-label melanoma=mel --extra-label nevus=nv
      skinedge train ../shared/data/ham10000 --out runs/ham-4x3 --img-size 192x256   # the whole 4:3 image
      skinedge train ../shared/data/ham10000 --out runs/ham-seed7 --seed 7 --split-seed 42   # runs/ham's split
      skinedge train ../shared/data/ham10000 --out runs/ham-again --deterministic   # bit-reproducible
      skinedge train ../shared/data/ham10000 --out runs/ham-ema --ema 0.998   # score a moving average
      skinedge train ../shared/data/ham10000 --out runs/ham-strong --balance oversample --augment-level strong
      skinedge train ../shared/data/ham10000 --out runs/ham --resume      # after an interruption
    """
    _check_run_out(data, out, resume)  # before TensorFlow is imported: a usage error is instant
    if float_from:
        _check_float_from(ctx)
    if extra_labels and not extra_train:
        raise click.BadParameter("names classes of --extra-train, which is not given.", param_hint="'--extra-label'")
    if warmup_epochs > epochs:
        raise click.BadParameter(f"{warmup_epochs:g} is more than the {epochs} fine-tuning epochs (--epochs).",
                                 param_hint="'--warmup-epochs'")
    if swa_epochs > epochs:
        raise click.BadParameter(f"{swa_epochs} is more than the {epochs} fine-tuning epochs (--epochs).",
                                 param_hint="'--swa-epochs'")
    if ema and swa_epochs:
        raise click.BadParameter("and --swa-epochs both average the fine-tuning weights: choose one.",
                                 param_hint="'--ema'")

    from skinedge.convert.rundir import RunDirError

    from .config import DEFAULT_SEED, TrainConfig
    from .data import DataError
    from .fit import RunError, train as run_training
    from .warmstart import WarmStartError
    from .weights import WeightsError

    cfg = TrainConfig(
        data=data, out=out, arch=arch, alpha=float(alpha), weights=weights, init_from=init_from, leave_out=leave_out,
        img_size=img_size[0], img_width=img_size[1] if img_size[1] != img_size[0] else None,
        head_epochs=head_epochs, epochs=epochs, settle_epochs=settle_epochs,
        qat_epochs=qat_epochs, batch_size=batch_size, lr=lr,
        finetune_from=finetune_from, balance=balance, label_smoothing=label_smoothing, limit=limit,
        lesion_ids=lesion_ids, extra_train=extra_train, extra_labels=extra_labels, test_fraction=test_fraction,
        val_fraction=val_fraction, patience=patience, warmup_epochs=warmup_epochs, swa_epochs=swa_epochs, ema=ema,
        mixup=mixup, split_seed=split_seed, augment=not no_augment, augment_level=augment_level, rot90=rot90,
        deterministic=deterministic,
        float_from=float_from,
        qat_distill=qat_distill,
        # no --seed beside --float-from: None, and the float run's seed applies
        seed=DEFAULT_SEED if seed is None and not float_from else seed,
    )
    try:
        summary = run_training(cfg, resume=resume)
    except (DataError, RunError, WeightsError, RunDirError, WarmStartError) as exc:
        raise InputError(one_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{os_error(exc, out)}; training stopped, the run keeps what it finished: "
                                   "free space or fix the folder, then continue with --resume") from None
    except Exception as exc:  # noqa: BLE001 - TensorFlow reports its own I/O failures as tf.errors.OpError
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(exc, tf.errors.OpError):
            raise
        raise click.ClickException(f"{out}: training stopped ({one_line(exc)}); the run keeps what it finished: "
                                   "fix the cause, then continue with --resume") from None
    val = summary["validation"]
    for name in ("float", "qat"):
        if name in val:
            m = val[name]
            click.echo(f"{name:6s} val accuracy {m['accuracy']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}"
                       f"  macro F1 {m['macro_f1']:.3f}")
    click.echo(f"run saved in {out}  ({summary['train_seconds']:.0f} s)")


@click.command()
@click.argument("data", required=False, type=click.Path(exists=True, path_type=str))
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Run dir: adds the float, QAT and PTQ-baseline models.")
@click.option("--bundle", type=click.Path(exists=True, path_type=str), help="Bundle folder (int8 TFLite).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Report dir.")
@click.option("--split", type=click.Choice(["test", "val", "all"]), default=None,
              help="With --run and DATA the run's data: which split to use (default test; all: train, val and test, "
                   "not --extra-train's images). Otherwise all images.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most N images (stratified).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="TFLite threads.")
@click.option("--tta", type=click.Choice(list(TTA_VIEWS)), default=None,
              help="Average every model over these views of each image (test-time augmentation) [default: the "
                   "bundle's, else none].")
def compare(data: Optional[str], run_dir: Optional[str], bundle: Optional[str], out: str, split: Optional[str],
            limit: Optional[int], threads: int, tta: Optional[str]) -> None:
    """Compare float, QAT, int8 TFLite and a post-training-quantized baseline on the same labelled images.

    Writes metrics.json, report.md and confusion-matrix PNGs to --out. With --bundle alone it evaluates what the
    bundle holds. DATA defaults to the run's data (its held-out test split).

    \b
    Examples:
      skinedge compare --run runs/ham --bundle models/ham --out reports/ham
      skinedge compare ../shared/data/isic9/Train --bundle models/isic9 --out reports/isic9
      skinedge compare --run runs/ham --split val --tta flips --out reports/ham_val_flips
    """
    if not run_dir and not bundle:
        raise click.UsageError("give --run, --bundle or both")
    check_out_dir(out, replaceable=is_report_dir, what="report")
    _check_compare_inputs(run_dir, bundle, threads)

    from .compare import CompareError, run_compare

    try:
        result = run_compare(data, run_dir, bundle, Path(out), split, limit, threads, tta)
    except CompareError as exc:
        raise InputError(one_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{os_error(exc, run_dir or bundle)}; no report was written "
                                   "(an earlier report at --out is unchanged)") from None
    except Exception as exc:  # noqa: BLE001 - the PTQ baseline's conversion can fail like `skinedge convert`
        export = sys.modules.get("skinedge.convert.export")
        if export is None or not isinstance(exc, export.ConvertError):
            raise
        raise click.ClickException(one_line(exc)) from None
    click.echo(result["table"])
    click.echo(f"report written to {out}")


def _check_compare_inputs(run_dir: Optional[str], bundle: Optional[str], threads: int) -> None:
    """Open the run dir and the bundle before any work (both cheap, no TensorFlow): exit 2 naming the file."""
    from skinedge.convert.rundir import FLOAT_WEIGHTS, QAT_WEIGHTS, RunDir, RunDirError
    from skinedge.device.bundle import BundleError
    from skinedge.device.classifier import ImageClassifier
    from skinedge.device.labels import LabelsError

    try:
        if run_dir:
            run = RunDir.open(run_dir, require=(FLOAT_WEIGHTS,))
            for name in (FLOAT_WEIGHTS, QAT_WEIGHTS):
                if (run.path / name).exists():
                    check_hdf5(run.path / name)
        if bundle:
            ImageClassifier(bundle, num_threads=threads)
    except (RunDirError, BundleError, LabelsError) as exc:
        raise InputError(one_line(exc)) from None


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--report", required=True, type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Report dir of `skinedge compare` for this bundle (its metrics.json).")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="The run dir, for training time and hardware (default: the one model.json names, if present).")
@click.option("--hardware", help="Describe the training hardware when the run did not record it.")
@click.option("--train-time", help="Describe the training time when the run's figure is partial (it counts the "
                                   "last process only, e.g. after --resume).")
def card(bundle: str, report: str, run_dir: Optional[str], hardware: Optional[str], train_time: Optional[str]) -> None:
    """Write BUNDLE/README.md, the model card: commands, data and split, test metrics, operating point, limits.

    \b
    Example:
      skinedge compare --run runs/ham --bundle models/ham10000 --out reports/ham
      skinedge card models/ham10000 --report reports/ham --run runs/ham
    """
    from .card import CardError, write_card

    try:
        out = write_card(bundle, report, run_dir, hardware, train_time)
    except CardError as exc:
        raise InputError(one_line(exc)) from None
    except OSError as exc:
        raise click.ClickException(os_error(exc, bundle)) from None
    click.echo(f"model card written to {out}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--sort", type=click.Choice(["float", "qat"]), help="Best first by this validation balanced accuracy.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run (with its whole config) per line.")
def runs(paths: tuple[str, ...], sort: Optional[str], as_json: bool) -> None:
    """List training runs side by side: status, split, the settings they differ in, validation scores.

    PATHS are run dirs, or folders of run dirs. Runs with the same split letter were split identically, so only
    they compare image for image. Needs no TensorFlow; a run still training shows the epoch it has reached.

    \b
    Example (three seeds of one recipe on one split):
      skinedge train DATA --out runs/s1 --seed 1 --split-seed 42   # ... s2, s3 likewise
      skinedge runs runs/ --sort float
    """
    from .runs import RunsError, expand, markdown, sort_rows, summarize

    rows, errors = [], []
    for path in expand(paths):
        try:
            rows.append(summarize(path))
        except RunsError as exc:
            errors.append(one_line(exc))
        except OSError as exc:
            errors.append(os_error(exc, path))
    if not rows:  # nothing to list: the (last) reason is the command's one error line, exit 2
        for error in errors[:-1]:
            click.echo(f"error: {error}", err=True)
        raise InputError(errors[-1] if errors else "no run dir to list")
    rows = sort_rows(rows, sort) if sort else rows
    click.echo("\n".join(json.dumps(r, sort_keys=True) for r in rows) if as_json else markdown(rows), nl=as_json)
    for error in errors:  # the runs that could be read are listed; each that could not gets its line, exit 1
        click.echo(f"error: {error}", err=True)
    if errors:
        sys.exit(EXIT_FAILED)
