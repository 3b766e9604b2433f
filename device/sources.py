"""Frame sources for `skinedge device run`: the Raspberry Pi camera, a USB webcam, a folder of images, a video file.

    from skinedge.device.sources import open_source
    with open_source("picamera2") as source:       # or "opencv:0", "folder:photos", "video:clip.mp4"
        frame = source.read()                       # Frame: RGB uint8 array (+ the file it came from)
        still = source.capture_still()              # full resolution on the Pi camera; the same frame otherwise

Every source is a context manager that opens its device once and always closes it. `read` raises `SourceError` for
a failed read worth retrying, `BadFrame` for one unreadable input (the run logs it and goes on) and
`SourceExhausted` at the end of a folder or video. picamera2 and cv2 are imported only inside the classes that need
them, so this module imports (and the folder source works) with neither installed.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from .preprocess import ImageError, is_image_path, load_image

log = logging.getLogger(__name__)

SOURCE_KINDS = ("picamera2", "opencv", "folder", "video")
PREVIEW_SIZE = (640, 480)  # (width, height) of the stream classified live: 4:3 like the Pi sensors, cheap to copy
OPENCV_HINT = "pip install opencv-python-headless (or: sudo apt install python3-opencv)"


class SourceError(RuntimeError):
    """A read failed (camera time-out, dropped USB frame): worth retrying with back-off."""


class SourceOpenError(RuntimeError):
    """The source cannot be opened; the message says what to check."""


class SourceExhausted(Exception):
    """No more frames: the end of a folder or video (without --loop)."""


class BadFrame(Exception):
    """One input cannot be read (a corrupt image in a folder): logged as an error record, the run goes on."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class Frame:
    image: np.ndarray  # RGB uint8, (height, width, 3), C-contiguous
    name: Optional[str] = None  # the file (and frame) it came from; None for a live camera


def _rgb(array: np.ndarray, bgr: bool) -> np.ndarray:
    """(H, W, 3 or 4) uint8 in B,G,R[,X] (bgr=True) or R,G,B[,X] order -> contiguous RGB."""
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise SourceError(f"unexpected frame shape {array.shape}")
    return np.ascontiguousarray(array[..., 2::-1] if bgr else array[..., :3])


class FrameSource:
    """The common protocol. Subclasses open their device in `open` and release it in `close`."""

    kind = ""
    preview_size: Optional[tuple[int, int]] = None  # (width, height) of the preview, when known before the first read

    def __init__(self, spec: str, preview: bool = False) -> None:
        self.spec = spec
        self.preview = preview
        self._last: Optional[np.ndarray] = None

    def open(self) -> None:  # pragma: no cover - every source overrides it
        raise NotImplementedError

    def read(self) -> Frame:  # pragma: no cover
        raise NotImplementedError

    def capture_still(self) -> np.ndarray:
        """The image to keep for the last frame: full resolution where the device has one, else the frame itself."""
        if self._last is None:
            raise SourceError("capture_still before any frame was read")
        return self._last

    def show(self, frame: Optional[np.ndarray], overlay: np.ndarray) -> bool:
        """Draw the RGBA overlay on the preview (when there is one). False when the user asked to stop (q, Esc)."""
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Picamera2Source(FrameSource):
    """The Raspberry Pi camera through Picamera2 (libcamera), opened once and closed by its own context manager."""

    kind = "picamera2"

    def __init__(self, spec: str, camera: int = 0, preview: bool = False, timeout: float = 2.0) -> None:
        super().__init__(spec, preview)
        self.camera_num = camera
        self.timeout = timeout  # seconds to wait for one frame before calling the read failed
        self.preview_size = PREVIEW_SIZE
        self._stack = ExitStack()
        self._cam: Any = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceOpenError(
                "picamera2 is not installed: sudo apt install python3-picamera2, and make the venv with "
                "python3 -m venv --system-site-packages so it can see it"
            ) from None
        n = self.camera_num
        try:
            # `with Picamera2() as picam2` is how the maintainers close the camera; ExitStack keeps that across calls
            self._cam = cam = self._stack.enter_context(Picamera2(n))
            # Live inference reads the *main* stream at 640x480 in "RGB888". Picamera2 names formats the DRM way:
            # "RGB888" is laid out [B, G, R] in memory (what OpenCV expects), so read() flips it to RGB. We do not
            # use "lores": on a Pi 4 and earlier it can only be YUV420, which would need converting on the CPU.
            self._preview_config = cam.create_preview_configuration(main={"size": PREVIEW_SIZE, "format": "RGB888"})
            # The still for saved captures: the full sensor resolution (the default size), same channel layout.
            self._still_config = cam.create_still_configuration(main={"format": "RGB888"})
            cam.configure(self._preview_config)
            self._start(cam)
        except Exception as exc:  # noqa: BLE001 - Picamera2 raises RuntimeError/IndexError/OSError for all of these
            self._stack.close()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SourceOpenError(
                f"cannot open the Raspberry Pi camera {n} ({first}): check the ribbon cable is seated (contacts "
                "the right way round), that `rpicam-hello --list-cameras` lists the camera, that the camera is "
                "enabled (camera_auto_detect=1 in /boot/firmware/config.txt), and that no other process "
                "(rpicam-*, another skinedge) is using it"
            ) from None
        log.info("camera %d: %s, sensor %s", n, cam.camera_properties.get("Model", "?"),
                 getattr(cam, "sensor_resolution", "?"))

    def _start(self, cam: Any) -> None:
        # show_preview=True lets Picamera2 pick QtGL (X/Wayland) or DRM; False runs its null preview event loop
        if self.preview:
            try:
                cam.start(show_preview=True)
                return
            except Exception as exc:  # noqa: BLE001 - e.g. python3-pyqt5 not installed: classify without a preview
                log.warning("no camera preview (%s: %s); running without one", type(exc).__name__, exc)
                self.preview = False
        cam.start(show_preview=False)

    def _capture(self, what: str, job_factory: Any, timeout: float) -> np.ndarray:
        try:
            # wait=False gives a Job and Picamera2.wait(job, timeout) bounds the wait (Picamera2 >= 0.3.17, as in the
            # Bookworm package): a blocking capture_array() would hang for ever on a stalled camera
            job = job_factory()
            array = self._cam.wait(job, timeout=timeout)
        except (TimeoutError, FuturesTimeout):  # the same class from Python 3.11 on
            raise SourceError(f"camera {self.camera_num}: no {what} within {timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - libcamera and Picamera2 report failures as RuntimeError & co
            raise SourceError(f"camera {self.camera_num}: {what} failed ({type(exc).__name__}: {exc})") from None
        return _rgb(np.asarray(array), bgr=True)

    def read(self) -> Frame:
        self._last = self._capture("frame", lambda: self._cam.capture_array("main", wait=False), self.timeout)
        return Frame(self._last)

    def capture_still(self) -> np.ndarray:
        def job() -> Any:
            # the full-resolution still mode for one frame, then back to the preview mode, in one Picamera2 job
            return self._cam.switch_mode_and_capture_array(self._still_config, "main", wait=False)

        return self._capture("still capture", job, self.timeout * 5)  # a mode switch takes several frames

    def show(self, frame: Optional[np.ndarray], overlay: np.ndarray) -> bool:
        if self.preview and self._cam is not None:
            self._cam.set_overlay(overlay)  # RGBA, scaled by Picamera2 to the preview window
        return True

    def close(self) -> None:
        self._stack.close()  # Picamera2.__exit__ -> close(): stops the camera and releases it
        self._cam = None


class _CvWindow:
    """A cv2.imshow preview for the sources without their own (USB camera, video, folder)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.cv2: Any = None

    def show(self, frame: np.ndarray, overlay: np.ndarray) -> bool:
        if self.cv2 is None:
            try:
                import cv2
            except ImportError:
                log.warning("no preview: OpenCV is not installed (%s)", OPENCV_HINT)
                self.cv2 = False
                return True
            self.cv2 = cv2
        if self.cv2 is False:
            return True
        base = Image.fromarray(frame).convert("RGBA")
        layer = Image.fromarray(overlay, "RGBA")
        if layer.size != base.size:
            layer = layer.resize(base.size)
        shown = np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
        self.cv2.imshow(self.title, np.ascontiguousarray(shown[..., ::-1]))
        key = self.cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)  # q or Esc closes the run

    def close(self) -> None:
        if self.cv2:
            self.cv2.destroyWindow(self.title)


def _import_cv2(spec: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise SourceOpenError(f"{spec}: needs OpenCV, which is not installed: {OPENCV_HINT}") from None
    return cv2


class OpenCVSource(FrameSource):
    """A USB webcam (or any V4L2 device) through cv2.VideoCapture."""

    kind = "opencv"

    def __init__(self, spec: str, device: Union[int, str] = 0, preview: bool = False) -> None:
        super().__init__(spec, preview)
        self.device = device
        self._cap: Any = None
        self._window = _CvWindow(f"skinedge: {spec}")

    def open(self) -> None:
        cv2 = _import_cv2(self.spec)
        self._cap = cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(
                f"cannot open USB camera {self.device!r} (opencv): check the index (v4l2-ctl --list-devices, "
                "ls /dev/video*), that your user may use it (the video group), and that no other process is using it"
            )
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, PREVIEW_SIZE[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, PREVIEW_SIZE[1])
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the newest frame, not a queue of stale ones (enter trigger)

    def read(self) -> Frame:
        ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceError(f"USB camera {self.device!r}: no frame")
        self._last = _rgb(image, bgr=True)  # OpenCV delivers B, G, R
        return Frame(self._last)

    def show(self, frame: Optional[np.ndarray], overlay: np.ndarray) -> bool:
        return self._window.show(frame, overlay) if self.preview and frame is not None else True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._window.close()


class VideoSource(OpenCVSource):
    """A video file through cv2.VideoCapture; `loop` starts it again at the end."""

    kind = "video"

    def __init__(self, spec: str, path: Path, loop: bool = False, preview: bool = False) -> None:
        super().__init__(spec, str(path), preview)
        self.path, self.loop = path, loop
        self._index = 0

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceOpenError(f"{self.spec}: no such video file")
        cv2 = _import_cv2(self.spec)
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceOpenError(f"{self.spec}: OpenCV cannot decode this video (codec or container not supported)")
        self._cv2 = cv2

    def read(self) -> Frame:
        ok, image = self._cap.read()
        if (not ok or image is None) and self.loop and self._index > 0:
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, image = self._cap.read()
        if not ok or image is None:
            raise SourceExhausted(self.spec)
        self._index += 1
        self._last = _rgb(image, bgr=True)
        return Frame(self._last, f"{self.path}#{self._index}")


class FolderSource(FrameSource):
    """Image files under a folder (recursively), in sorted order; `loop` starts again at the end."""

    kind = "folder"

    def __init__(self, spec: str, path: Path, loop: bool = False, preview: bool = False) -> None:
        super().__init__(spec, preview)
        self.path, self.loop = path, loop
        self._paths: list[Path] = []
        self._index = 0
        self._good_in_pass = 0
        self._window = _CvWindow(f"skinedge: {spec}")

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceOpenError(f"{self.spec}: no such folder")
        for root, dirs, files in os.walk(self.path):
            dirs.sort()
            self._paths += [Path(root) / name for name in sorted(files) if is_image_path(name)]
        if not self._paths:
            raise SourceOpenError(f"{self.spec}: no image files in the folder")

    def read(self) -> Frame:
        if self._index == len(self._paths):
            # a looping folder of only unreadable files would otherwise write error records for ever
            if not self.loop or self._good_in_pass == 0:
                raise SourceExhausted(self.spec)
            self._index = self._good_in_pass = 0
        path = self._paths[self._index]
        self._index += 1
        try:
            image = load_image(path)
        except ImageError as exc:
            raise BadFrame(str(path), str(exc)) from None
        self._good_in_pass += 1
        self._last = np.asarray(image, dtype=np.uint8)
        return Frame(self._last, str(path))

    def show(self, frame: Optional[np.ndarray], overlay: np.ndarray) -> bool:
        return self._window.show(frame, overlay) if self.preview and frame is not None else True

    def close(self) -> None:
        self._window.close()


def parse_source(spec: str) -> tuple[str, str]:
    """Split and check a --source value: ("picamera2", "0"), ("opencv", "1"), ("folder", DIR), ("video", FILE)."""
    kind, _, arg = spec.partition(":")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"{spec!r}: expected picamera2[:N], opencv[:INDEX], folder:DIR or video:FILE")
    if kind in ("folder", "video") and not arg:
        raise ValueError(f"{spec!r}: give the {'folder' if kind == 'folder' else 'file'}, e.g. {kind}:PATH")
    if kind == "picamera2" and arg and not arg.isdigit():
        raise ValueError(f"{spec!r}: the camera number must be 0, 1, ...")
    return kind, arg


def open_source(spec: str, *, loop: bool = False, preview: bool = False, timeout: float = 2.0) -> FrameSource:
    """A frame source for `spec` (not yet opened: use it in a `with` block). Raises ValueError for a bad spec."""
    kind, arg = parse_source(spec)
    if kind == "picamera2":
        return Picamera2Source(spec, camera=int(arg or 0), preview=preview, timeout=timeout)
    if kind == "opencv":
        device: Union[int, str] = int(arg) if arg.isdigit() else (arg or 0)  # an index or a /dev/videoN path
        return OpenCVSource(spec, device, preview=preview)
    if kind == "video":
        return VideoSource(spec, Path(arg), loop=loop, preview=preview)
    return FolderSource(spec, Path(arg), loop=loop, preview=preview)
