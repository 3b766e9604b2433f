"""`skinedge device ...`: commands for the device. Imports no TensorFlow.

    skinedge device classify models/ham10000 photos/ --json
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

import click

from .bundle import BundleError
from .classifier import ImageClassifier
from .constants import NOT_A_DIAGNOSIS, TTA_VIEWS
from .labels import LabelsError
from .preprocess import ImageError, is_image_path

log = logging.getLogger(__name__)

EXIT_OK, EXIT_SOME_FAILED, EXIT_MODEL_ERROR = 0, 1, 2


class ModelError(click.ClickException):
    """The model, bundle or labels cannot be used: exit code 2, like a usage error."""

    exit_code = EXIT_MODEL_ERROR


TTA_OPTION = click.option(
    "--tta", type=click.Choice(list(TTA_VIEWS)), default=None,
    help="Average the model over these mirrored or turned views of each image (test-time augmentation; N views "
         "cost N inferences) [default: the bundle's, else none].")


def open_classifier(model: str, labels: Optional[str], threads: int, top_k: int, **kwargs) -> ImageClassifier:
    try:
        return ImageClassifier(model, labels_path=labels, num_threads=threads, top_k=top_k, **kwargs)
    except (BundleError, LabelsError) as exc:
        raise ModelError(str(exc)) from None


def iter_inputs(paths: tuple[str, ...]) -> Iterator[tuple[Path, Optional[str]]]:
    """(path, problem) for files as given, and image files under folders (recursively, sorted, extensions
    case-insensitive); problem is None, or why a folder could not be read.

    A path that does not exist is yielded as is, and an unreadable folder with its problem, so each is reported as
    an error record rather than dropped."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            unreadable: list[OSError] = []
            for root, dirs, files in os.walk(path, onerror=unreadable.append):
                dirs.sort()
                for name in sorted(files):
                    if is_image_path(name):
                        yield Path(root) / name, None
                yield from _folder_errors(unreadable)
            yield from _folder_errors(unreadable)
        else:
            yield path, None


def _folder_errors(unreadable: list[OSError]) -> Iterator[tuple[Path, Optional[str]]]:
    while unreadable:
        exc = unreadable.pop(0)
        yield Path(exc.filename), f"{exc.filename}: cannot read folder ({exc.strerror})"


def _json_line(record: dict) -> str:
    """One JSON record: UTF-8 text, or ASCII escapes when a file name is not valid UTF-8 (lossless either way)."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record)
    return text


def _shown(text: object) -> str:
    """A path (or a message naming one) for the terminal: file-name bytes that are not UTF-8 are shown as U+FFFD
    instead of failing the batch."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@click.group()
def device() -> None:
    """Run models on the device (Raspberry Pi or any computer), offline, without TensorFlow.

    \b
    Example:
      skinedge device selftest models/ham10000             # does this device run the bundle as it should?
      skinedge device classify models/ham10000 lesion.jpg --json
    """


@device.command()
@click.argument("model", type=click.Path(path_type=str))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--labels", type=click.Path(path_type=str), help="Labels file (one per line) for a bare .tflite.")
@click.option("-k", "--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Categories to show.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Interpreter threads.")
@click.option("--mean", type=float, help="Float-input models: subtract this from pixels (default from metadata).")
@click.option("--std", type=click.FloatRange(min=0, min_open=True), help="Float-input models: divide by this.")
@click.option("--allow-modified", is_flag=True, help="Run a bundle whose model does not match its sha256.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, one per line.")
@TTA_OPTION
def classify(
    model: str, paths: tuple[str, ...], labels: Optional[str], top_k: int, threads: int,
    mean: Optional[float], std: Optional[float], allow_modified: bool, as_json: bool, tta: Optional[str],
) -> None:
    """Classify image files (or folders of them) with MODEL, a bundle folder or a .tflite file.

    Exit status: 0 when every input was classified, 1 when some could not be, 2 for a usage or model error.

    \b
    Examples:
      skinedge device classify models/ham10000 lesion.jpg
      skinedge device classify models/ham10000 photos/ --json > results.jsonl
      skinedge device classify mobilenet.tflite cat.jpg --labels labels.txt --top-k 5
      skinedge device classify models/ham10000 lesion.jpg --tta none
    """
    clf = open_classifier(model, labels, threads, top_k, mean=mean, std=std, allow_modified=allow_modified,
                          tta=tta)
    failures = total = 0
    if not as_json:
        click.echo(f"# {NOT_A_DIAGNOSIS}", err=True)
    for path, problem in iter_inputs(paths):
        total += 1
        try:
            if problem:
                raise ImageError(problem)
            top = clf.classify_path(path)
        except ImageError as exc:
            failures += 1
            if as_json:
                click.echo(json.dumps({"path": str(path), "error": str(exc)}))
            else:
                click.echo(f"error: {_shown(exc)}", err=True)
            continue
        flag = clf.flagged(clf.last_probabilities)
        latency = sum(clf.last_timing.values())
        if as_json:
            record = {
                "path": str(path), "label": top[0].label, "score": round(top[0].score, 6),
                "top": [{"label": c.label, "score": round(c.score, 6)} for c in top],
                "latency_ms": round(latency, 3),
            }
            if flag is not None:  # the P(melanoma) the rule compared, beside its verdict
                record["flag"], record["flag_score"] = flag, round(clf.flag_score(clf.last_probabilities), 6)
            click.echo(_json_line(record))
        else:
            others = ", ".join(f"{c.label} {c.score:.2f}" for c in top[1:])
            mark = "  [FLAG: refer for examination]" if flag else ""
            click.echo(f"{_shown(path)}: {top[0].label} {top[0].score:.2f}{mark}"
                       + (f"  ({others})" if others else ""))
    if total == 0:
        raise click.UsageError("no image files found in the given paths")
    if failures:
        log.warning("%d of %d inputs could not be classified", failures, total)
        sys.exit(EXIT_SOME_FAILED)


@device.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--labels", type=click.Path(path_type=str), help="Labels file (one per line) for a bare .tflite.")
@click.option("--mean", type=float, help="Float-input models: subtract this from pixels (default from metadata).")
@click.option("--std", type=click.FloatRange(min=0, min_open=True), help="Float-input models: divide by this.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with every check.")
def selftest(model: str, labels: Optional[str], mean: Optional[float], std: Optional[float], as_json: bool) -> None:
    """Check that this device runs MODEL (a bundle folder or a .tflite) as it was converted.

    Checks the runtime, that the model loads, its sha256 against model.json, its input and output specs against
    the bundle, and that the golden outputs in golden.npz are reproduced bit-exactly (same runtime family, one
    thread). Prints PASS, FAIL or SKIP for each. Exit status: 0 all passed, 1 a check failed, 2 the model (or a
    runtime) cannot be opened at all.

    \b
    Examples:
      skinedge device selftest models/ham10000
      skinedge device selftest mobilenet.tflite --labels labels.txt --json
    """
    from .selftest import exit_code, selftest as run_selftest

    checks = run_selftest(model, labels, mean=mean, std=std)
    code = exit_code(checks)
    if as_json:
        click.echo(json.dumps({"model": model, "status": "PASS" if code == 0 else "FAIL", "exit_code": code,
                               "checks": [c.as_dict() for c in checks]}, ensure_ascii=False))
    else:
        for c in checks:
            click.echo(f"{c.status}  {c.name:<15} {c.detail}")
        counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
        click.echo(f"selftest {'passed' if code == 0 else 'FAILED'}: {counts['PASS']} passed, "
                   f"{counts['FAIL']} failed, {counts['SKIP']} skipped")
    sys.exit(code)


@device.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Interpreter threads.")
@click.option("--frames", default=100, show_default=True, type=click.IntRange(min=1), help="Timed frames.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="Untimed frames first.")
@click.option("--labels", type=click.Path(path_type=str), help="Labels file (one per line) for a bare .tflite.")
@click.option("--mean", type=float, help="Float-input models: subtract this from pixels (default from metadata).")
@click.option("--std", type=click.FloatRange(min=0, min_open=True), help="Float-input models: divide by this.")
@click.option("--allow-modified", is_flag=True, help="Run a bundle whose model does not match its sha256.")
@click.option("--no-cold-start", is_flag=True, help="Skip the cold-start measurement (a fresh process).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (latencies nested: invoke_ms.p50 ...).")
def bench(
    model: str, threads: int, frames: int, warmup: int, labels: Optional[str], mean: Optional[float],
    std: Optional[float], allow_modified: bool, no_cold_start: bool, as_json: bool,
) -> None:
    """Benchmark MODEL on 640x480 RGB frames: invoke, preprocess and end-to-end latency percentiles (ms), FPS,
    peak RSS and cold start (spawn of `device classify` to its first result).

    \b
    Examples:
      skinedge device bench models/ham10000
      skinedge device bench models/ham10000 --threads 4 --frames 500 --json
    """
    from .bench import bench as run_bench

    try:
        report = run_bench(model, threads=threads, frames=frames, warmup=warmup, labels_path=labels, mean=mean,
                           std=std, allow_modified=allow_modified, cold_start=not no_cold_start)
    except (BundleError, LabelsError) as exc:
        raise ModelError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['model']} ({report['model_bytes']} bytes), {report['runtime']} {report['runtime_version']}, "
               f"{threads} thread(s), {frames} frames of {report['frame_shape']}")
    for key in ("preprocess_ms", "invoke_ms", "end_to_end_ms"):
        p = report[key]
        click.echo(f"  {key:<14} p50 {p['p50']:8.3f}  p90 {p['p90']:8.3f}  p99 {p['p99']:8.3f}")
    cold = report["cold_start_ms"]
    click.echo(f"  fps {report['fps']}  peak rss {report['rss_mb']} MB  cold start "
               + (f"{cold:.0f} ms" if cold is not None else "n/a"))


EXIT_SOURCE_FAILED = 3


class SourceUnavailable(click.ClickException):
    """The camera, folder or video cannot be opened: exit code 2, with what to check."""

    exit_code = EXIT_MODEL_ERROR


class SourceFailed(click.ClickException):
    """The source stopped delivering frames and retries did not help: exit code 3 (the log is complete)."""

    exit_code = EXIT_SOURCE_FAILED


def _check_source(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    from .sources import parse_source

    if value is not None:
        try:
            parse_source(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@device.command("run")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--source", "source_spec", metavar="SOURCE", callback=_check_source,
              help="picamera2[:N] (the default where picamera2 is installed), opencv[:INDEX], folder:DIR, video:FILE.")
@click.option("--frames", type=click.IntRange(min=1), help="Stop after N frames [default: run until stopped].")
@click.option("--interval", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="At least this many seconds between frames.")
@click.option("--trigger", default="continuous", show_default=True, type=click.Choice(["continuous", "enter"]),
              help="Classify every frame, or a full-resolution still each time Enter is pressed (q + Enter stops).")
@click.option("--loop", is_flag=True, help="folder: and video: sources start again at the end.")
@click.option("--crop", type=click.FloatRange(0, 1, min_open=True),
              help="Classify only a centred square guide this fraction of the frame's short side (e.g. 0.6).")
@click.option("--log-dir", default="skinedge-logs", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where <UTC date>.jsonl logs and captures/ go.")
@click.option("--save/--no-save", default=None,
              help="Keep a JPEG (no EXIF) of each classified image in LOG_DIR/captures [default: with enter].")
@click.option("--preview/--no-preview", default=None,
              help="Show results over a preview [default: when there is a display].")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Interpreter threads.")
@click.option("-k", "--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Categories to log.")
@click.option("--labels", type=click.Path(path_type=str), help="Labels file (one per line) for a bare .tflite.")
@click.option("--mean", type=float, help="Float-input models: subtract this from pixels (default from metadata).")
@click.option("--std", type=click.FloatRange(min=0, min_open=True), help="Float-input models: divide by this.")
@click.option("--allow-modified", is_flag=True, help="Run a bundle whose model does not match its sha256.")
@click.option("--read-tries", default=4, show_default=True, type=click.IntRange(min=1),
              help="Attempts per frame (back-off 0.1, 0.2, 0.4 s...) before a failing camera ends the run.")
@TTA_OPTION
def run_command(
    model: str, source_spec: Optional[str], frames: Optional[int], interval: float, trigger: str, loop: bool,
    crop: Optional[float], log_dir: Path, save: Optional[bool], preview: Optional[bool], threads: int, top_k: int,
    labels: Optional[str], mean: Optional[float], std: Optional[float], allow_modified: bool, read_tries: int,
    tta: Optional[str],
) -> None:
    """Classify live frames with MODEL: the Pi camera, a USB camera, a folder of images or a video file.

    Each frame is printed (label, score, flag, FPS) and appended as one JSON line to LOG_DIR/<UTC date>.jsonl.
    Ctrl-C or SIGTERM finishes the current frame and exits 0. Exit status: 2 for a usage or model error or a
    source that cannot be opened, 3 when the source stops delivering frames (the log stays complete).

    \b
    Examples:
      skinedge device run models/ham10000 --source picamera2 --trigger enter --crop 0.6
      skinedge device run models/ham10000 --source opencv:0 --threads 4 --log-dir logs
      skinedge device run models/ham10000 --source folder:photos --frames 20 --no-preview
    """
    import importlib.util

    from .run import RunConfig, run_loop
    from .sources import SourceOpenError, open_source

    if source_spec is None:
        if importlib.util.find_spec("picamera2") is None:
            raise click.UsageError("--source is needed here (picamera2 is not installed): "
                                   "e.g. --source opencv:0 or --source folder:photos")
        source_spec = "picamera2"
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if preview and not has_display:
        log.warning("no display (DISPLAY is not set): running without a preview")
    try:
        log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)  # results and captures are patient data
        writable = os.access(log_dir, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise click.BadParameter(f"{log_dir}: cannot write there", param_hint="--log-dir")
    clf = open_classifier(model, labels, threads, top_k, mean=mean, std=std, allow_modified=allow_modified,
                          tta=tta)
    config = RunConfig(
        source=source_spec, log_dir=log_dir, frames=frames, interval=interval, trigger=trigger,
        save=(trigger == "enter") if save is None else save, crop=crop, top_k=top_k,
        preview=has_display if preview is None else (preview and has_display), read_tries=read_tries,
    )

    def on_result(r) -> None:
        mark = "  [FLAG: refer for examination]" if r.flag else ""
        speed = f"  {r.fps:.1f} fps" if r.fps is not None else f"  {r.latency_ms['total_ms']:.0f} ms"
        click.echo(f"#{r.frame} {r.label} {r.score:.2f}{mark}{speed}" + (f"  {r.name}" if r.name else ""))

    def on_prompt() -> None:
        click.echo("Press Enter to classify a still (q + Enter or Ctrl-C to stop)", err=True)

    click.echo(f"# {NOT_A_DIAGNOSIS}", err=True)
    try:
        with open_source(source_spec, loop=loop, preview=config.preview) as source:
            summary = run_loop(clf, source, config, on_result=on_result, on_prompt=on_prompt, stdin=sys.stdin)
    except SourceOpenError as exc:
        raise SourceUnavailable(str(exc)) from None
    except OSError as exc:  # the log or a capture could not be written (a full SD card): exit 1, earlier lines kept
        raise click.ClickException(f"{log_dir}: cannot write ({exc.strerror or exc}); the lines already there are "
                                   "complete") from None
    click.echo(f"# {summary.frames} frames, {summary.errors} errors in {summary.elapsed_s:.1f} s, "
               f"ended: {summary.reason}; log: {summary.log_path}", err=True)
    if summary.failure:
        raise SourceFailed(f"{source_spec}: {summary.failure} after {read_tries} tries; check the camera's cable and "
                           f"power supply (the log {summary.log_path} is complete)")
