"""The live loop of `skinedge device run`: read a frame, crop the guide region, classify, log, show, repeat.

    from skinedge.device.run import RunConfig, run_loop
    from skinedge.device.sources import open_source
    with open_source("folder:photos") as source:
        summary = run_loop(classifier, source, RunConfig(source="folder:photos", log_dir=Path("logs"), frames=10))

Every frame becomes one JSON line in LOG_DIR/<UTC date>.jsonl, written with a single write on an O_APPEND file and
fsync'd before the next frame, so a crash, a power cut or kill -9 loses at most the frame in flight and never leaves
half a line. SIGINT and SIGTERM only set a flag: the frame in progress is finished and logged, then the loop returns
and the caller's `with` blocks close the camera. Terminal output is the caller's (callbacks); this module logs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TextIO, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .classifier import ImageClassifier
from .sources import BadFrame, FrameSource, SourceError, SourceExhausted

log = logging.getLogger(__name__)
T = TypeVar("T")
TRIGGERS = ("continuous", "enter")


@dataclass
class RunConfig:
    source: str = ""  # the --source value, recorded in every log line so a log says where its frames came from
    log_dir: Path = Path("skinedge-logs")  # LOG_DIR: <UTC date>.jsonl files and captures/
    frames: Optional[int] = None  # stop after this many frames (classified or error records); None: no limit
    interval: float = 0.0  # at least this many seconds between frame starts; 0 runs as fast as the model allows
    trigger: str = "continuous"  # "continuous": classify every frame; "enter": a still each time Enter is pressed
    save: bool = False  # keep a JPEG of each classified image under LOG_DIR/captures/ (no EXIF, no GPS)
    crop: Optional[float] = None  # side of the centred square guide as a fraction of the short side; None: whole frame
    top_k: int = 3  # categories kept in the log and passed to the callback
    preview: bool = False  # draw the result overlay on the source's preview (there is a display)
    read_tries: int = 4  # attempts per read before the run ends with a source failure (back-off 0.1, 0.2, 0.4 s)
    backoff_s: float = 0.1  # the first back-off delay; it doubles after every failed attempt
    jpeg_quality: int = 92  # saved captures: high enough for a clinician to review, about 10x smaller than PNG


@dataclass
class FrameResult:
    """What the terminal and the overlay show for one classified frame."""

    frame: int
    label: str
    score: float
    flag: Optional[bool]  # the bundle's melanoma flag rule; None when the model has none
    top: list[tuple[str, float]]
    latency_ms: dict[str, float]
    fps: Optional[float]  # frames per second over recent frames (None for the first frame and the enter trigger)
    name: Optional[str] = None  # the input file, for folder and video sources
    image: Optional[str] = None  # the saved capture, relative to LOG_DIR


@dataclass
class RunSummary:
    frames: int = 0  # frames classified and logged
    errors: int = 0  # error records written (unreadable inputs, the read failure that ended the run)
    reason: str = ""  # why the run ended: "frames", "end of source", "SIGINT", "SIGTERM", "quit", "source failed"...
    failure: Optional[str] = None  # the read error when the source failed after every retry
    log_path: Optional[Path] = None  # the last log file written
    elapsed_s: float = 0.0


# -- the log ----------------------------------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FrameLog:
    """Append-only JSON lines, one file per UTC date: a new file starts with the first frame after midnight."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)  # results of patients: not world-readable
        self.path: Optional[Path] = None
        self._fd: Optional[int] = None

    def write(self, record: dict[str, Any], when: datetime) -> Path:
        path = self.log_dir / f"{when.astimezone(timezone.utc):%Y-%m-%d}.jsonl"
        if path != self.path:
            self.close()
            created = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
            self.path = path
            if created:  # the new directory entry must survive a power cut too
                _fsync_dir(self.log_dir)
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # O_APPEND + one write: the kernel places the whole line at the end even with several writers, and a
        # killed process cannot leave part of it. A regular file only takes less than asked when the disk is full,
        # where the next write raises; the loop makes that an error instead of a silently cut line.
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        return path

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FrameLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the file itself is still fsync'd
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_capture(image: np.ndarray, log_dir: Path, when: datetime, frame: int, quality: int = 92) -> str:
    """Save an RGB frame as LOG_DIR/captures/<date>/<time>-<frame>.jpg; returns the path relative to LOG_DIR.

    Encoded from the pixel array, so the file carries no EXIF, GPS or camera metadata; written under a temporary
    name and renamed, so a log line never points at half a JPEG."""
    when = when.astimezone(timezone.utc)
    rel = Path("captures") / f"{when:%Y-%m-%d}" / f"{when:%H%M%S%f}-{frame:06d}.jpg"
    path = Path(log_dir) / rel
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        Image.fromarray(image, "RGB").save(fh, "JPEG", quality=quality)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return rel.as_posix()


# -- helpers ----------------------------------------------------------------------------------------------------


def crop_box(width: int, height: int, fraction: Optional[float]) -> tuple[int, int, int, int]:
    """The centred square guide, `fraction` of the short side, as (left, top, right, bottom)."""
    if fraction is None:
        return 0, 0, width, height
    side = max(1, round(min(width, height) * fraction))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_frame(image: np.ndarray, fraction: Optional[float]) -> np.ndarray:
    """The guide region of a frame: the only pixels the classifier sees when --crop is given."""
    if fraction is None:
        return image
    left, top, right, bottom = crop_box(image.shape[1], image.shape[0], fraction)
    return image[top:bottom, left:right]


def retry(fn: Callable[[], T], tries: int, backoff_s: float, stop: Optional["StopFlag"] = None,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn until it does not raise SourceError: `tries` attempts, waiting backoff_s, 2*backoff_s, ... between."""
    delay = backoff_s
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except SourceError as exc:
            if attempt == tries or (stop is not None and stop.is_set()):
                raise
            log.warning("%s; retry %d of %d in %.1f s", exc, attempt, tries - 1, delay)
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover - tries >= 1


class StopFlag:
    """Set by a signal handler (or the preview window); the loop checks it between frames."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None


@contextmanager
def stop_on_signals(stop: StopFlag, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM set `stop` instead of killing the process; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be installed there
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(name)
        log.info("%s: finishing the current frame, then stopping", name)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class LineReader:
    """Lines from stdin that never block past a stop signal (select on the fd, read what is there)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._buf = b""
        try:
            self.fd: Optional[int] = stream.fileno() if os.name == "posix" else None
        except (AttributeError, OSError, io.UnsupportedOperation):  # an in-memory stream (tests): plain readline
            self.fd = None

    def readline(self, stop: StopFlag, poll_s: float = 0.2) -> Optional[str]:
        """The next line without its newline, or None at end of input or when stopped."""
        if self.fd is None:
            line = self.stream.readline()
            return line.rstrip("\r\n") if line else None
        while not stop.is_set():
            if b"\n" in self._buf:
                line, _, self._buf = self._buf.partition(b"\n")
                return line.decode("utf-8", "replace").rstrip("\r")
            if select.select([self.fd], [], [], poll_s)[0]:
                chunk = os.read(self.fd, 1024)
                if not chunk:
                    line, self._buf = self._buf, b""
                    return line.decode("utf-8", "replace") if line else None
                self._buf += chunk
        return None


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()


def draw_overlay(size: tuple[int, int], crop: Optional[float], result: Optional[FrameResult]) -> np.ndarray:
    """An RGBA overlay (height, width, 4) of `size` (width, height): the crop guide and the last result."""
    width, height = size
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    colour = (255, 60, 60, 255) if result is not None and result.flag else (80, 255, 120, 255)
    if crop is not None:
        draw.rectangle(crop_box(width, height, crop), outline=colour, width=max(2, height // 160))
    font = _font(max(12, height // 20))
    if result is not None:
        text = f"{result.label} {result.score:.2f}" + ("  FLAG: refer" if result.flag else "")
        if result.fps is not None:
            text += f"  {result.fps:.1f} fps"
        draw.rectangle((0, 0, width, height // 12 + 8), fill=(0, 0, 0, 140))
        draw.text((8, 4), text, fill=colour, font=font)
    small = _font(max(10, height // 32))
    draw.text((8, height - height // 24 - 8), "not a diagnosis", fill=(255, 255, 255, 200), font=small)
    return np.asarray(layer)


def _sleep_until(deadline: float, stop: StopFlag) -> None:
    while not stop.is_set() and (left := deadline - time.perf_counter()) > 0:
        time.sleep(min(left, 0.1))  # short naps so a signal is answered quickly


# -- the loop ---------------------------------------------------------------------------------------------------


def run_loop(
    classifier: ImageClassifier,
    source: FrameSource,
    config: RunConfig,
    on_result: Optional[Callable[[FrameResult], None]] = None,
    on_prompt: Optional[Callable[[], None]] = None,
    stdin: Optional[TextIO] = None,
    stop: Optional[StopFlag] = None,
    clock: Callable[[], datetime] = utc_now,
) -> RunSummary:
    """Classify frames from an opened `source` until the frame limit, the end of the source, a signal, or a read
    failure that outlives its retries (summary.reason says which). The caller opens and closes the source."""
    stop = stop or StopFlag()
    summary, started = RunSummary(), time.perf_counter()
    lines = LineReader(stdin or sys.stdin) if config.trigger == "enter" else None
    sha256 = classifier.source.sha256
    frame_no, last_start, fps = 0, None, None
    with FrameLog(config.log_dir) as frame_log, stop_on_signals(stop):

        def error(when: datetime, path: Optional[str], message: str) -> None:
            summary.errors += 1
            record = {"time": iso_time(when), "frame": frame_no, "source": config.source, "path": path,
                      "error": message}
            summary.log_path = frame_log.write(record, when)

        if config.preview and source.preview_size:
            source.show(None, draw_overlay(source.preview_size, config.crop, None))  # the guide before frame 1
        while not stop.is_set():
            if config.frames is not None and frame_no >= config.frames:
                summary.reason = "frames"
                break
            if lines is not None:
                if on_prompt:
                    on_prompt()
                line = lines.readline(stop)
                if line is None or line.strip().lower() in ("q", "quit"):
                    stop.set("quit" if line is not None else "end of input")
                    break
            t0, when = time.perf_counter(), clock()
            frame_no += 1
            try:
                frame = retry(source.read, config.read_tries, config.backoff_s, stop)
                image = frame.image
                if config.trigger == "enter":
                    image = retry(source.capture_still, config.read_tries, config.backoff_s, stop)
            except SourceExhausted:
                frame_no -= 1
                summary.reason = "end of source"
                break
            except BadFrame as exc:
                log.warning("frame %d: %s", frame_no, exc)
                error(when, exc.path, str(exc))
                continue
            except SourceError as exc:
                error(when, None, str(exc))
                if not stop.is_set():  # a signal during the back-off is a stop, not a failure
                    summary.reason, summary.failure = "source failed", str(exc)
                break
            t1 = time.perf_counter()
            region = crop_frame(image, config.crop)
            t2 = time.perf_counter()
            top = classifier.classify(region, config.top_k)
            timing = classifier.last_timing
            flag = classifier.flagged(classifier.last_probabilities)
            flag_score = classifier.flag_score(classifier.last_probabilities)
            latency = {
                "capture_ms": (t1 - t0) * 1e3,
                "preprocess_ms": (t2 - t1) * 1e3 + timing["preprocess_ms"],
                "invoke_ms": timing["invoke_ms"],
                "postprocess_ms": timing["postprocess_ms"],
            }
            latency = {k: round(v, 3) for k, v in latency.items()}
            latency["total_ms"] = round(sum(latency.values()), 3)
            saved = save_capture(image, config.log_dir, when, frame_no, config.jpeg_quality) if config.save else None
            record = {
                "time": iso_time(when), "frame": frame_no, "source": config.source, "input": frame.name,
                "model_sha256": sha256, "label": top[0].label, "score": round(top[0].score, 6),
                "top": [{"label": c.label, "score": round(c.score, 6)} for c in top],
                "flag": flag, "flag_score": None if flag_score is None else round(flag_score, 6),
                "latency_ms": latency, "image": saved,
            }
            summary.log_path = frame_log.write(record, when)
            summary.frames += 1
            if config.trigger == "continuous" and last_start is not None and t0 > last_start:
                rate = 1.0 / (t0 - last_start)
                fps = rate if fps is None else 0.8 * fps + 0.2 * rate  # smoothed, so the display does not flicker
            last_start = t0
            result = FrameResult(frame_no, top[0].label, top[0].score, flag, [(c.label, c.score) for c in top],
                                 latency, fps, frame.name, saved)
            if on_result:
                on_result(result)
            if config.preview:
                height, width = frame.image.shape[:2]
                if not source.show(frame.image, draw_overlay((width, height), config.crop, result)):
                    stop.set("preview closed")
            _sleep_until(t0 + config.interval, stop)
    if not summary.reason:
        summary.reason = stop.reason or "stopped"
    summary.elapsed_s = time.perf_counter() - started
    log.debug("%d frames, %d errors, ended: %s", summary.frames, summary.errors, summary.reason)
    return summary
