"""`skinedge convert`: a thin click command over skinedge.convert.export."""

from __future__ import annotations

from pathlib import Path

import click

from skinedge.cli import (
    FiniteFloatRange,
    InputError,
    check_hdf5,
    check_out_dir,
    is_bundle_dir,
    one_line,
    os_error,
)
from skinedge.device.constants import FLAG_PRIORS, TTA_VIEWS
from skinedge.device.preprocess import tta_problem


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Bundle folder.")
@click.option("--min-agreement", type=FiniteFloatRange(0, 1), default=0.98, show_default=True,
              help="Refuse the model below this top-1 agreement with the QAT Keras model.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=200, show_default=True,
              help="Training images used to calibrate the parts QAT left float.")
@click.option("--flag-sensitivity", type=FiniteFloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Melanoma flag threshold chosen for this sensitivity on validation images.")
@click.option("--flag-prior", type=click.Choice(FLAG_PRIORS), default="train", show_default=True,
              help="Class frequencies the flag reads P(melanoma) at: the training split's (for a model trained "
                   "class-balanced, whose raw outputs assume equal classes) or none (the raw output).")
@click.option("--tta", type=click.Choice(list(TTA_VIEWS)), default="none", show_default=True,
              help="Test-time augmentation stored in the bundle: the device averages the model over these mirrored "
                   "(flips: 4 views) or also turned (dihedral: 8, square inputs) views of each image, at that many "
                   "times the inference cost. The flag threshold and validation figures are the averaged model's.")
@click.option("--name", help="Bundle name (default: the folder name).")
def convert(run_dir: str, out: str, min_agreement: float, calibration_images: int, flag_sensitivity: float,
            flag_prior: str, tta: str, name: str | None) -> None:
    """Convert RUN_DIR's QAT model to a verified full-integer int8 TFLite bundle.

    The bundle folder holds model.tflite (labels and input spec embedded), labels.txt and model.json.

    \b
    Example:
      skinedge convert runs/ham --out models/ham --min-agreement 0.99
      skinedge convert runs/ham --out models/ham_tta --tta flips
    """
    from .rundir import QAT_WEIGHTS, RunDir, RunDirError

    # everything that can be known before TensorFlow is imported and the model converted: exit 2 at once
    try:
        run = RunDir.open(run_dir, require=(QAT_WEIGHTS,))
    except RunDirError as exc:
        raise InputError(one_line(exc)) from None
    check_hdf5(run.path / QAT_WEIGHTS)
    problem = tta_problem(tta, run.img_size)
    if problem:
        raise click.BadParameter(f"{problem}.", param_hint="'--tta'")
    if Path(out).resolve() == Path(run_dir).resolve():
        raise click.BadParameter("the bundle cannot replace the run dir it is made from.", param_hint="'--out'")
    check_out_dir(out, replaceable=is_bundle_dir, what="bundle")

    from .export import ConvertError, convert_run

    try:
        meta = convert_run(run_dir, out, min_agreement, calibration_images, flag_sensitivity, name,
                           flag_prior=flag_prior, tta=tta)
    except ConvertError as exc:
        raise click.ClickException(one_line(exc)) from None
    except OSError as exc:
        # write_bundle writes a temporary folder and renames it into place: nothing half-written is left
        # (an error without a file name comes from h5py reading the run's weights)
        raise click.ClickException(f"{os_error(exc, run_dir)}; no bundle was written "
                                   "(an earlier bundle at --out is unchanged)") from None
    v = meta["validation"]
    click.echo(f"int8 agreement with QAT Keras: {meta['verification']['top1_agreement_vs_qat_keras']:.4f} "
               f"on {meta['verification']['images']} validation images")
    views = f", averaged over {len(TTA_VIEWS[tta])} views ({tta})" if tta != "none" else ""
    click.echo(f"int8 validation accuracy {v['accuracy']:.3f}, balanced accuracy {v['balanced_accuracy']:.3f}{views}")
    f = (v.get("melanoma") or {}).get("flag")  # validation figures at the bundle's flag threshold, if it has one
    if f:
        at = " at the training class frequencies" if (meta.get("flag") or {}).get("class_frequencies") else ""
        click.echo(f"melanoma flag: P{at} >= {f['threshold']:.4f} (val sensitivity {f['sensitivity']}, "
                   f"specificity {f['specificity']})")
    click.echo(f"bundle written to {out}")
