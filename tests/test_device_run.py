"""`skinedge device run`: frame sources, the JSONL log, retries, signals and the CLI, on the tiny real bundle.

The Pi camera is the stand-in in tests/fakes/picamera2 (checked like the real API); OpenCV is a small fake module, so
neither picamera2 nor cv2 is needed here. Signal and kill -9 tests run `python -m skinedge` in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skinedge.cli import main
from skinedge.device.classifier import ImageClassifier
from skinedge.device.constants import NOT_A_DIAGNOSIS
from skinedge.device.run import (
    FrameLog, LineReader, RunConfig, StopFlag, crop_box, crop_frame, retry, run_loop, save_capture,
)
from skinedge.device.sources import FolderSource, SourceError, parse_source

from conftest import TEST_COLOURS

FAKES = Path(__file__).resolve().parent / "fakes"
FRAME_KEYS = {"time", "frame", "source", "input", "model_sha256", "label", "score", "top", "flag", "flag_score",
              "latency_ms", "image"}
ERROR_KEYS = {"time", "frame", "source", "path", "error"}
LATENCY_KEYS = {"capture_ms", "preprocess_ms", "invoke_ms", "postprocess_ms", "total_ms"}


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


@pytest.fixture
def picam(monkeypatch):
    """The Picamera2 stand-in, importable as `picamera2`; yields its class (knobs: cameras, busy, stall_after...)."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    import picamera2

    picamera2.Picamera2.reset()
    yield picamera2.Picamera2
    sys.modules.pop("picamera2", None)


@pytest.fixture
def photos(make_image, colour_frames, tmp_path) -> Path:
    """A folder with one image of each test colour, named so sorted order is akiec, mel, nv."""
    for i, label in enumerate(TEST_COLOURS):
        make_image(f"photos/{i}_{label}.png", colour_frames[label])
    return tmp_path / "photos"


@pytest.fixture(scope="module")
def clf(bundle_dir) -> ImageClassifier:
    return ImageClassifier(bundle_dir, top_k=3)


def run_cli(*args, input=None):
    return CliRunner().invoke(main, ["device", "run", *[str(a) for a in args]], input=input)


def read_log(log_dir: Path) -> list[dict]:
    """Every record of every log file; each line must be complete JSON ending in a newline."""
    records = []
    for path in sorted(Path(log_dir).glob("*.jsonl")):
        text = path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), f"{path}: last line is incomplete"
        records += [json.loads(line) for line in text.splitlines()]
    return records


def check_frame_record(record: dict, source: str, sha256: str) -> None:
    assert set(record) == FRAME_KEYS
    assert record["source"] == source and record["model_sha256"] == sha256
    when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - when) < timedelta(minutes=5)
    assert set(record["latency_ms"]) == LATENCY_KEYS
    parts = sum(v for k, v in record["latency_ms"].items() if k != "total_ms")
    assert record["latency_ms"]["total_ms"] == pytest.approx(parts, abs=0.01)
    assert record["top"][0] == {"label": record["label"], "score": record["score"]}
    assert record["flag"] is (record["label"] == "mel")  # the tiny bundle's flag rule: P(mel) >= 0.3


# -- units ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, parsed", [
    ("picamera2", ("picamera2", "")), ("picamera2:1", ("picamera2", "1")), ("opencv", ("opencv", "")),
    ("opencv:2", ("opencv", "2")), ("folder:a/b", ("folder", "a/b")), ("video:c:d.mp4", ("video", "c:d.mp4")),
])
def test_parse_source(spec, parsed):
    assert parse_source(spec) == parsed


@pytest.mark.parametrize("spec", ["webcam", "folder:", "video:", "picamera2:x", ""])
def test_parse_source_refuses(spec):
    with pytest.raises(ValueError):
        parse_source(spec)


@settings(deadline=None)  # the machine may be busy: a slow example is not a failure
@given(st.integers(1, 4000), st.integers(1, 4000), st.floats(0.01, 1.0))
def test_crop_box_is_a_centred_square(width, height, fraction):
    left, top, right, bottom = crop_box(width, height, fraction)
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    assert right - left == bottom - top == max(1, round(min(width, height) * fraction))
    assert abs((left + right) - width) <= 1 and abs((top + bottom) - height) <= 1


def test_crop_frame():
    image = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    assert crop_frame(image, None) is image
    region = crop_frame(image, 0.5)
    assert region.shape == (24, 24, 3)
    np.testing.assert_array_equal(region, image[12:36, 20:44])


def test_retry_backs_off_then_gives_up():
    delays, calls = [], []

    def failing():
        calls.append(1)
        raise SourceError("no frame")

    with pytest.raises(SourceError, match="no frame"):
        retry(failing, tries=4, backoff_s=0.1, sleep=delays.append)
    assert len(calls) == 4 and delays == pytest.approx([0.1, 0.2, 0.4])

    outcomes = iter([SourceError("a"), SourceError("b"), "frame"])

    def flaky():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    delays.clear()
    assert retry(flaky, tries=4, backoff_s=0.1, sleep=delays.append) == "frame"
    assert delays == pytest.approx([0.1, 0.2])


def test_retry_stops_retrying_when_stopped():
    stop = StopFlag()
    stop.set("SIGTERM")
    with pytest.raises(SourceError):
        retry(lambda: (_ for _ in ()).throw(SourceError("x")), tries=5, backoff_s=10, stop=stop)


def test_frame_log_lines_are_complete_and_roll_over_at_midnight(tmp_path):
    before = datetime(2024, 3, 9, 23, 59, 59, 900000, tzinfo=timezone.utc)
    after = before + timedelta(seconds=0.2)
    with FrameLog(tmp_path / "logs") as frame_log:
        for i in range(50):
            frame_log.write({"frame": i, "label": "mélanome ✓", "text": "x" * (i * 97)}, before)
        assert frame_log.write({"frame": 50}, after) == tmp_path / "logs" / "2024-03-10.jsonl"
    first = (tmp_path / "logs" / "2024-03-09.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["frame"] for line in first.splitlines()] == list(range(50))
    assert json.loads(first.splitlines()[0])["label"] == "mélanome ✓"
    assert [r["frame"] for r in read_log(tmp_path / "logs")] == list(range(51))


def test_frame_log_concurrent_writers_never_interleave(tmp_path):
    # two writers (as two processes would) appending to the same file: O_APPEND + one write keeps lines whole
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def writer(tag: str) -> None:
        with FrameLog(tmp_path) as frame_log:
            for i in range(100):
                frame_log.write({"writer": tag, "i": i, "pad": tag * 3000}, when)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_log(tmp_path)
    assert len(records) == 200
    for tag in "ab":
        assert [r["i"] for r in records if r["writer"] == tag] == list(range(100))


def test_saved_capture_has_no_exif(tmp_path):
    image = np.full((30, 40, 3), (10, 200, 30), np.uint8)
    rel = save_capture(image, tmp_path, datetime(2024, 5, 1, 8, 30, tzinfo=timezone.utc), 7)
    assert rel.startswith("captures/2024-05-01/") and rel.endswith("-000007.jpg")
    path = tmp_path / rel
    with Image.open(path) as saved:
        assert saved.format == "JPEG" and saved.size == (40, 30)
        assert len(saved.getexif()) == 0 and "exif" not in saved.info
    assert b"Exif" not in path.read_bytes()
    assert not list(tmp_path.rglob("*.part"))


def test_line_reader_on_a_pipe_answers_a_stop(tmp_path):
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "r") as stream:
        os.write(write_fd, b"\nq\n")
        reader, stop = LineReader(stream), StopFlag()
        assert reader.fd is not None
        assert reader.readline(stop) == "" and reader.readline(stop) == "q"
        timer = threading.Timer(0.3, stop.set, args=("SIGTERM",))
        timer.start()
        t0 = time.monotonic()
        assert reader.readline(stop, poll_s=0.05) is None  # nothing typed: returns once stopped, does not block
        assert time.monotonic() - t0 < 5
        os.close(write_fd)


def test_run_loop_with_a_clock_across_midnight(clf, photos, tmp_path):
    times = iter([datetime(2024, 3, 9, 23, 59, 59, 500000, tzinfo=timezone.utc),
                  datetime(2024, 3, 10, 0, 0, 0, 100000, tzinfo=timezone.utc),
                  datetime(2024, 3, 10, 0, 0, 0, 700000, tzinfo=timezone.utc),
                  datetime(2024, 3, 10, 0, 0, 1, tzinfo=timezone.utc)])  # the read that finds the end
    config = RunConfig(source="folder:photos", log_dir=tmp_path / "logs")
    results = []
    with FolderSource("folder:photos", photos) as source:
        summary = run_loop(clf, source, config, on_result=results.append, clock=lambda: next(times))
    assert (summary.frames, summary.errors, summary.reason) == (3, 0, "end of source")
    assert [r.label for r in results] == list(TEST_COLOURS)
    day1 = read_log_file(tmp_path / "logs" / "2024-03-09.jsonl")
    day2 = read_log_file(tmp_path / "logs" / "2024-03-10.jsonl")
    assert [r["frame"] for r in day1] == [1] and [r["frame"] for r in day2] == [2, 3]
    assert day1[0]["time"] == "2024-03-09T23:59:59.500Z"


def read_log_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the CLI with a folder --------------------------------------------------------------------------------------


def test_cli_folder_end_to_end(bundle_dir, clf, photos, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli(bundle_dir, "--source", f"folder:{photos}", "--log-dir", logs, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert NOT_A_DIAGNOSIS in result.stderr and NOT_A_DIAGNOSIS not in result.stdout
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == list(TEST_COLOURS)
    assert ("[FLAG: refer for examination]" in lines[1]) and all("FLAG" not in lines[i] for i in (0, 2))
    assert "fps" in lines[2]
    records = read_log(logs)
    assert [r["label"] for r in records] == list(TEST_COLOURS)
    assert [r["frame"] for r in records] == [1, 2, 3]
    for record, path in zip(records, sorted(photos.iterdir())):
        check_frame_record(record, f"folder:{photos}", clf.source.sha256)
        assert record["input"] == str(path) and record["image"] is None  # continuous: no captures by default
        assert len(record["top"]) == 2 and record["score"] > 0.9
    assert not (logs / "captures").exists()
    assert "3 frames, 0 errors" in result.stderr and "end of source" in result.stderr


def test_cli_frames_and_loop(bundle_dir, photos, tmp_path):
    result = run_cli(bundle_dir, "--source", f"folder:{photos}", "--log-dir", tmp_path / "logs", "--loop",
                     "--frames", "7")
    assert result.exit_code == 0, result.output
    labels = [r["label"] for r in read_log(tmp_path / "logs")]
    assert labels == (list(TEST_COLOURS) * 3)[:7]
    assert len(result.stdout.splitlines()) == 7 and "ended: frames" in result.stderr
    result = run_cli(bundle_dir, "--source", f"folder:{photos}", "--log-dir", tmp_path / "two", "--frames", "2")
    assert [r["frame"] for r in read_log(tmp_path / "two")] == [1, 2]


def test_cli_saves_exif_free_captures(bundle_dir, tmp_path, colour_frames):
    # the input carries EXIF with GPS; the saved capture is encoded from pixels and has none
    exif = Image.Exif()
    exif[0x010F] = "ACME dermatoscope"
    exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 12.0)})
    (tmp_path / "in").mkdir()
    Image.fromarray(colour_frames["nv"]).save(tmp_path / "in" / "lesion.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "in" / "lesion.jpg") as src:
        assert src.getexif().get_ifd(0x8825)  # the test input really has GPS data
    logs = tmp_path / "logs"
    result = run_cli(bundle_dir, "--source", f"folder:{tmp_path / 'in'}", "--log-dir", logs, "--save")
    assert result.exit_code == 0, result.output
    (record,) = read_log(logs)
    assert record["label"] == "nv" and record["image"].startswith("captures/")
    saved = logs / record["image"]
    with Image.open(saved) as image:
        assert image.format == "JPEG" and image.size == (64, 48)
        assert len(image.getexif()) == 0 and "exif" not in image.info
    assert b"Exif" not in saved.read_bytes() and b"ACME" not in saved.read_bytes()


def test_cli_bad_image_is_an_error_record_and_the_run_goes_on(bundle_dir, photos, tmp_path):
    bad = photos / "0a_broken.jpg"  # sorts between the akiec and mel images
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    logs = tmp_path / "logs"
    result = run_cli(bundle_dir, "--source", f"folder:{photos}", "--log-dir", logs)
    assert result.exit_code == 0, result.output
    records = read_log(logs)
    assert len(records) == 4
    error = records[1]
    assert set(error) == ERROR_KEYS and error["path"] == str(bad) and str(bad) in error["error"]
    assert error["frame"] == 2 and error["source"] == f"folder:{photos}"
    assert [r["label"] for r in records if "label" in r] == list(TEST_COLOURS)
    assert [r["frame"] for r in records] == [1, 2, 3, 4]
    assert "3 frames, 1 errors" in result.stderr


def test_cli_enter_trigger(bundle_dir, photos, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli(bundle_dir, "--source", f"folder:{photos}", "--log-dir", logs, "--trigger", "enter",
                     input="\n\n")
    assert result.exit_code == 0, result.output
    records = read_log(logs)
    assert [r["label"] for r in records] == ["akiec", "mel"]  # two presses, then the end of input
    assert all(r["image"] and (logs / r["image"]).is_file() for r in records)  # enter saves captures by default
    assert result.stderr.count("Press Enter") == 3 and "ended: end of input" in result.stderr
    assert " ms" in result.stdout.splitlines()[0]  # latency rather than fps for single stills

    result = run_cli(bundle_dir, "--source", f"folder:{photos}", "--log-dir", tmp_path / "q", "--trigger", "enter",
                     "--no-save", input="\nq\n\n")
    assert result.exit_code == 0 and "ended: quit" in result.stderr
    assert [r["image"] for r in read_log(tmp_path / "q")] == [None]


def test_cli_crop(bundle_dir, make_image, tmp_path):
    # a red (akiec) square in the middle of a pale (nv) frame: the whole frame reads nv, the guide region akiec
    frame = np.full((48, 64, 3), TEST_COLOURS["nv"], np.uint8)
    frame[12:36, 20:44] = TEST_COLOURS["akiec"]
    make_image("mixed/frame.png", frame)
    labels = {}
    for crop in (None, "0.5"):
        logs = tmp_path / f"logs-{crop}"
        args = ["--crop", crop] if crop else []
        result = run_cli(bundle_dir, "--source", f"folder:{tmp_path / 'mixed'}", "--log-dir", logs, *args)
        assert result.exit_code == 0, result.output
        labels[crop] = read_log(logs)[0]["label"]
    assert labels == {None: "nv", "0.5": "akiec"}


def test_cli_missing_or_empty_folder(bundle_dir, tmp_path):
    result = run_cli(bundle_dir, "--source", f"folder:{tmp_path / 'nope'}", "--log-dir", tmp_path / "logs")
    assert result.exit_code == 2 and "no such folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_cli(bundle_dir, "--source", f"folder:{tmp_path / 'empty'}", "--log-dir", tmp_path / "logs")
    assert result.exit_code == 2 and "no image files" in result.stderr


def test_cli_model_error(tmp_path, photos):
    result = run_cli(tmp_path / "no_model", "--source", f"folder:{photos}", "--log-dir", tmp_path / "logs")
    assert result.exit_code == 2 and "no such model" in result.stderr


@pytest.mark.parametrize("option", [
    ["--frames", "0"], ["--frames", "-3"], ["--interval", "-1"], ["--threads", "0"], ["--crop", "0"],
    ["--crop", "1.5"], ["--crop", "-0.2"], ["--source", "webcam"], ["--source", "folder:"], ["--top-k", "0"],
    ["--trigger", "pedal"], ["--read-tries", "0"],
])
def test_cli_refuses_nonsense(bundle_dir, photos, tmp_path, option):
    args = [bundle_dir, "--log-dir", tmp_path / "logs"]
    if option[0] != "--source":
        args += ["--source", f"folder:{photos}"]
    result = run_cli(*args, *option)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.stderr and option[0] in result.stderr
    assert not (tmp_path / "logs").exists() or not read_log(tmp_path / "logs")


def test_cli_needs_a_source_without_picamera2(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    result = run_cli(bundle_dir, "--log-dir", tmp_path / "logs")
    assert result.exit_code == 2 and "--source" in result.stderr


def test_cli_help_has_an_example():
    result = CliRunner().invoke(main, ["device", "run", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "skinedge device run models/" in result.stdout
    for option in ("--source", "--frames", "--interval", "--trigger", "--crop", "--log-dir", "--save", "--preview"):
        assert option in result.stdout


# -- the Pi camera (stand-in) ------------------------------------------------------------------------------------


def test_picamera2_is_the_default_source_and_frames_are_rgb(bundle_dir, picam, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli(bundle_dir, "--log-dir", logs, "--frames", "3")  # no --source: picamera2 is importable
    assert result.exit_code == 0, result.output
    records = read_log(logs)
    # the scene is akiec's red; the camera delivers "RGB888" as B, G, R: an unconverted frame would read as mel
    assert [r["label"] for r in records] == ["akiec"] * 3
    assert all(r["source"] == "picamera2" and r["input"] is None and r["image"] is None for r in records)
    (cam,) = picam.instances
    assert not cam.is_open and cam.frames == 3 and cam.stills == []
    assert cam.overlays == []  # no display: no preview


def test_picamera2_enter_saves_full_resolution_stills(bundle_dir, picam, tmp_path):
    logs = tmp_path / "logs"  # the scene is akiec's red: read as B, G, R it would be blue, and classify as mel
    result = run_cli(bundle_dir, "--source", "picamera2:0", "--log-dir", logs, "--trigger", "enter", "--crop",
                     "0.6", input="\n\n")
    assert result.exit_code == 0, result.output
    records = read_log(logs)
    assert [r["label"] for r in records] == ["akiec", "akiec"] and all(r["flag"] is False for r in records)
    (cam,) = picam.instances
    assert len(cam.stills) == 2 and cam.stills[0].shape == (864, 1536, 3)
    assert cam.frames == 4  # each press: a preview frame (for the overlay) and the still that is classified
    for record in records:
        with Image.open(logs / record["image"]) as saved:
            assert saved.size == picam.sensor_size  # the full-resolution still, not the 640x480 preview frame
            red, _, blue = saved.getpixel((10, 10))
            assert red > 180 and blue < 80  # saved as RGB, not in the camera's B, G, R layout
    assert not cam.is_open


def test_picamera2_preview_overlay(bundle_dir, picam, tmp_path, monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    result = run_cli(bundle_dir, "--source", "picamera2", "--log-dir", tmp_path / "logs", "--frames", "2",
                     "--crop", "0.6")
    assert result.exit_code == 0, result.output
    (cam,) = picam.instances
    assert len(cam.overlays) == 3  # the guide before the first frame, then one per frame
    for overlay in cam.overlays:
        assert overlay.shape == (480, 640, 4) and overlay.dtype == np.uint8
        assert overlay[..., 3].any() and not overlay[..., 3].all()  # drawn, and transparent elsewhere
    assert not np.array_equal(cam.overlays[0], cam.overlays[-1])  # the result text was added

    monkeypatch.setenv("DISPLAY", ":0")
    result = run_cli(bundle_dir, "--source", "picamera2", "--log-dir", tmp_path / "logs", "--frames", "1",
                     "--no-preview")
    assert result.exit_code == 0 and picam.instances[-1].overlays == []


def test_picamera2_without_a_working_preview_runs_without_one(bundle_dir, picam, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DISPLAY", ":0")
    picam.preview_error = ImportError("No module named 'PyQt5'")
    result = run_cli(bundle_dir, "--source", "picamera2", "--log-dir", tmp_path / "logs", "--frames", "2")
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in read_log(tmp_path / "logs")] == ["akiec", "akiec"]
    assert picam.instances[0].overlays == [] and "no camera preview" in caplog.text


@pytest.mark.parametrize("fault", ["no camera", "busy"])
def test_picamera2_that_will_not_open(bundle_dir, picam, tmp_path, fault):
    if fault == "no camera":
        picam.cameras = []
    else:
        picam.busy = True
    result = run_cli(bundle_dir, "--source", "picamera2", "--log-dir", tmp_path / "logs")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    for hint in ("ribbon cable", "rpicam-hello --list-cameras", "enabled", "another skinedge"):
        assert hint in errors[0]
    assert read_log(tmp_path / "logs") == []


def test_picamera2_read_errors_are_retried_then_exit_3(bundle_dir, picam, tmp_path, caplog):
    picam.stall_after = 2  # two frames, then every capture times out
    logs = tmp_path / "logs"
    t0 = time.monotonic()
    result = run_cli(bundle_dir, "--source", "picamera2", "--log-dir", logs)
    assert time.monotonic() - t0 >= 0.7  # back-off 0.1 + 0.2 + 0.4 s between the four tries
    assert result.exit_code == 3, result.output
    assert "no frame within 2 s after 4 tries" in result.stderr
    assert [r.message.split("; ")[1] for r in caplog.records if "retry" in r.message] == [
        "retry 1 of 3 in 0.1 s", "retry 2 of 3 in 0.2 s", "retry 3 of 3 in 0.4 s"]
    records = read_log(logs)
    assert [r.get("label") for r in records] == ["akiec", "akiec", None]
    assert set(records[2]) == ERROR_KEYS and records[2]["path"] is None and records[2]["frame"] == 3
    assert not picam.instances[0].is_open  # closed on the way out


# -- OpenCV sources (a fake cv2 module) -------------------------------------------------------------------------


def fake_cv2(opened: bool = True, frames=None) -> types.ModuleType:
    """A cv2 with VideoCapture: `frames` (BGR arrays) then the end, or a red frame for ever when None."""
    cv2 = types.ModuleType("cv2")
    cv2.CAP_PROP_POS_FRAMES, cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_BUFFERSIZE = 1, 3, 4, 38
    cv2.captures = []

    class VideoCapture:
        def __init__(self, device):
            self.device, self.props, self.released = device, {}, False
            self.left = list(frames) if frames is not None else None
            cv2.captures.append(self)

        def isOpened(self):
            return opened

        def read(self):
            if self.left is None:
                return True, np.full((480, 640, 3), TEST_COLOURS["akiec"][::-1], np.uint8)
            return (True, self.left.pop(0)) if self.left else (False, None)

        def set(self, prop, value):
            self.props[prop] = value
            return True

        def release(self):
            self.released = True

    cv2.VideoCapture = VideoCapture
    return cv2


def test_opencv_camera(bundle_dir, tmp_path, monkeypatch):
    cv2 = fake_cv2()
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    result = run_cli(bundle_dir, "--source", "opencv:1", "--log-dir", tmp_path / "logs", "--frames", "2")
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in read_log(tmp_path / "logs")] == ["akiec", "akiec"]  # BGR from OpenCV -> RGB
    (cap,) = cv2.captures
    assert cap.device == 1 and cap.released and cap.props[cv2.CAP_PROP_BUFFERSIZE] == 1


def test_opencv_camera_that_will_not_open(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2(opened=False))
    result = run_cli(bundle_dir, "--source", "opencv:3", "--log-dir", tmp_path / "logs")
    assert result.exit_code == 2
    assert "cannot open USB camera 3" in result.stderr and "video group" in result.stderr


def test_opencv_not_installed(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    for spec in ("opencv:0", f"video:{tmp_path / 'clip.mp4'}"):
        (tmp_path / "clip.mp4").write_bytes(b"\0" * 10)
        result = run_cli(bundle_dir, "--source", spec, "--log-dir", tmp_path / "logs")
        assert result.exit_code == 2 and "opencv-python-headless" in result.stderr


def test_video_file(bundle_dir, tmp_path, monkeypatch):
    bgr = [np.full((48, 64, 3), TEST_COLOURS[label][::-1], np.uint8) for label in ("nv", "mel")]
    monkeypatch.setitem(sys.modules, "cv2", fake_cv2(frames=bgr))
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 10)
    result = run_cli(bundle_dir, "--source", f"video:{tmp_path / 'clip.mp4'}", "--log-dir", tmp_path / "logs")
    assert result.exit_code == 0, result.output
    records = read_log(tmp_path / "logs")
    assert [r["label"] for r in records] == ["nv", "mel"]
    assert records[1]["input"] == f"{tmp_path / 'clip.mp4'}#2"


# -- signals and kill -9 in a real process -----------------------------------------------------------------------


def start_run(bundle_dir: Path, photos: Path, logs: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    cmd = [sys.executable, "-m", "skinedge", "device", "run", str(bundle_dir), "--source", f"folder:{photos}",
           "--loop", "--interval", "0.01", "--save", "--log-dir", str(logs)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_lines(proc: subprocess.Popen, logs: Path, n: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        files = list(logs.glob("*.jsonl"))
        if files and sum(f.read_bytes().count(b"\n") for f in files) >= n:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run wrote too few log lines")


def check_complete_log(logs: Path) -> list[dict]:
    records = read_log(logs)  # every line parses and the last one ends with a newline
    assert records
    for record in records:
        assert set(record) == FRAME_KEYS
        assert (logs / record["image"]).is_file()  # a line never points at a capture that is not there
    assert [r["frame"] for r in records] == list(range(1, len(records) + 1))
    return records


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_frame_and_exits_0(bundle_dir, photos, tmp_path, sig):
    logs = tmp_path / "logs"
    proc = start_run(bundle_dir, photos, logs)
    wait_for_lines(proc, logs, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"ended: {signal.Signals(sig).name}" in err and "Traceback" not in err
    records = check_complete_log(logs)
    assert len(out.splitlines()) == len(records)  # every printed frame was logged, and the other way round
    assert not list(logs.rglob("*.part"))


def test_kill_9_leaves_only_complete_lines(bundle_dir, photos, tmp_path):
    logs = tmp_path / "logs"
    proc = start_run(bundle_dir, photos, logs)
    wait_for_lines(proc, logs, 20)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    records = check_complete_log(logs)
    assert len(records) >= 20
    assert {r["label"] for r in records} == set(TEST_COLOURS)
