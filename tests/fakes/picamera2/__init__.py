"""A stand-in for Picamera2 (github.com/raspberrypi/picamera2), for tests on machines without a Pi camera.

It has the part of the real API that skinedge uses, with the real signatures and defaults, and it checks arguments
and call order the way the real class does, so a misuse fails the test instead of passing silently: configuring
while started, capturing before start or after close, unknown or unconfigured stream names, bad formats, odd
sizes, unknown configuration keys, a lores stream that is not YUV, overlays that are not 4-channel. Frames are a
solid colour (`Picamera2.scene`, RGB) laid out in the requested format: "RGB888" is [B, G, R] per pixel and
"BGR888" is [R, G, B], as on the real camera (Picamera2 uses the DRM naming).

Put tests/fakes on sys.path to import it as `picamera2`. Knobs (class attributes, reset by `Picamera2.reset()`):
    cameras      the attached cameras, as global_camera_info() reports them; [] = none found
    busy         another process holds the camera: opening fails like the real one
    scene        the RGB colour every frame shows
    stall_after  frames delivered before captures stop completing (a time-out); None = never
    preview_error  raised by start(show_preview=True), as when the Qt preview cannot be made (no PyQt5)
    instances    every Picamera2 made, so a test can check that each was closed
"""

from __future__ import annotations

import concurrent.futures
import enum
from typing import Any, Callable, Optional

import numpy as np

RGB_FORMATS = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}
YUV_FORMATS = {"YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY", "YVYU", "VYUY"}
STREAMS = ("main", "lores", "raw")


class Preview(enum.Enum):
    NULL = 0
    DRM = 1
    QT = 2
    QTGL = 3


class Job:
    """Like picamera2.job.Job: get_result(timeout) raises concurrent.futures.TimeoutError when it does not complete.

    A stalled job raises at once rather than after `timeout` seconds: it stands for the time-out having elapsed."""

    def __init__(self, fn: Optional[Callable[[], Any]]) -> None:
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self.stalled = fn is None
        if fn is not None:
            try:
                self._future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the caller, as the real event loop does
                self._future.set_exception(exc)

    def get_result(self, timeout: Optional[float] = None) -> Any:
        if self.stalled:
            if timeout is None:
                raise AssertionError("waiting without a timeout on a stalled camera would block for ever")
            raise concurrent.futures.TimeoutError()
        return self._future.result(timeout=timeout)


class Picamera2:
    cameras: list[dict] = []
    busy = False
    scene: tuple[int, int, int] = (220, 40, 40)
    stall_after: Optional[int] = None
    preview_error: Optional[Exception] = None
    instances: list["Picamera2"] = []
    sensor_size = (1536, 864)  # small, so still captures stay quick in tests

    @classmethod
    def reset(cls) -> None:
        cls.cameras = [{"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a"}]
        cls.busy, cls.scene, cls.stall_after, cls.preview_error, cls.instances = False, (220, 40, 40), None, None, []

    @staticmethod
    def global_camera_info() -> list[dict]:
        return [dict(c) for c in Picamera2.cameras]

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None) -> None:
        if not Picamera2.cameras or camera_num >= len(Picamera2.cameras):
            # the real class logs "Camera(s) not found" / IndexError and re-raises this
            raise RuntimeError("Camera __init__ sequence did not complete.")
        if Picamera2.busy:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        self.camera_idx = camera_num
        self.is_open, self.started = True, False
        self.camera_config: Optional[dict] = None
        self.sensor_resolution = Picamera2.sensor_size
        self._preview: Optional[str] = None
        self.frames = 0  # captures served (stills included), for stall_after
        self.overlays: list[np.ndarray] = []
        self.stills: list[np.ndarray] = []
        Picamera2.instances.append(self)

    @property
    def camera_properties(self) -> dict:
        if not self.is_open:
            return {}
        return {"Model": Picamera2.cameras[self.camera_idx]["Model"], "PixelArraySize": self.sensor_resolution}

    # -- configuration -----------------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self.is_open:
            raise RuntimeError("Camera not opened")

    @staticmethod
    def _stream(defaults: dict, updates: Optional[dict]) -> Optional[dict]:
        if updates is None:
            return None
        for key in updates:
            if key not in ("format", "size"):
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are ('format', 'size')")
        stream = {**defaults, **updates}
        width, height = stream["size"]
        stream["size"] = (width - width % 2, height - height % 2)  # align_stream(optimal=False)
        return stream

    def _config(self, use_case: str, main: dict, lores: Optional[dict], main_default: dict, buffer_count: int,
                controls: dict, display: Optional[str], encode: Optional[str]) -> dict:
        self._require_open()
        main_stream = self._stream(main_default, main)
        config = {
            "use_case": use_case, "transform": "Transform()", "colour_space": "Sycc", "buffer_count": buffer_count,
            "queue": True, "main": main_stream, "controls": dict(controls),
            "lores": self._stream({"format": "YUV420", "size": main_stream["size"]}, lores),
            "raw": {"format": "SBGGR10_CSI2P", "size": main_stream["size"]},
        }
        for name in (display, encode):
            if name is not None and config.get(name) is None:
                raise RuntimeError(f"Display stream {name} was not defined")
        config["display"], config["encode"] = display, encode
        return config

    def create_preview_configuration(self, main: dict = {}, lores: Optional[dict] = None, raw: dict = {},  # noqa: B006
                                     transform: Any = None, colour_space: Any = None, buffer_count: int = 4,
                                     controls: dict = {}, display: str = "main", encode: str = "main",  # noqa: B006
                                     queue: bool = True) -> dict:
        return self._config("preview", main, lores, {"format": "XBGR8888", "size": (640, 480)}, buffer_count,
                            controls, display, encode)

    def create_still_configuration(self, main: dict = {}, lores: Optional[dict] = None, raw: dict = {},  # noqa: B006
                                   transform: Any = None, colour_space: Any = None, buffer_count: int = 1,
                                   controls: dict = {}, display: Optional[str] = None,  # noqa: B006
                                   encode: Optional[str] = None, queue: bool = True) -> dict:
        return self._config("still", main, lores, {"format": "BGR888", "size": self.sensor_resolution},
                            buffer_count, controls, display, encode)

    @staticmethod
    def _check_stream(stream: Any, name: str) -> None:
        if type(stream) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        fmt, size = stream.get("format"), stream.get("size")
        if name != "raw" and fmt not in RGB_FORMATS and fmt not in YUV_FORMATS:
            raise RuntimeError(f"Bad format {fmt} in stream {name}")
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def _check_config(self, config: Any) -> None:
        if not isinstance(config, dict):
            raise TypeError(f"a camera configuration is a dict, got {type(config).__name__}")
        for key in ("colour_space", "transform", "main", "lores", "raw"):
            if key not in config:
                raise RuntimeError(f"{key!r} key expected in camera configuration")
        self._check_stream(config["main"], "main")
        if config["lores"] is not None:
            self._check_stream(config["lores"], "lores")
            if config["lores"]["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
            if any(lo > hi for lo, hi in zip(config["lores"]["size"], config["main"]["size"])):
                raise RuntimeError("lores stream dimensions may not exceed main stream")

    def configure(self, camera_config: Any = "preview") -> None:
        self._require_open()
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self._check_config(camera_config)
        self.camera_config = dict(camera_config)

    def start(self, config: Any = None, show_preview: Any = False) -> None:
        self._require_open()
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if show_preview and Picamera2.preview_error is not None:
            raise Picamera2.preview_error
        if show_preview is not None and self._preview is None:
            self._preview = "null" if not show_preview else "visible"
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        if self._preview is not None:
            self._preview = None
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.camera_config = None

    def __enter__(self) -> "Picamera2":
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_traceback: Any) -> None:
        self.close()

    # -- capture -------------------------------------------------------------------------------------------------

    def _array(self, stream: dict) -> np.ndarray:
        (width, height), fmt = stream["size"], stream["format"]
        r, g, b = Picamera2.scene
        if fmt in YUV_FORMATS:
            return np.zeros((height * 3 // 2, width), np.uint8)
        pixel = {"RGB888": (b, g, r), "BGR888": (r, g, b), "XRGB8888": (b, g, r, 255), "XBGR8888": (r, g, b, 255)}
        return np.full((height, width, RGB_FORMATS[fmt]), pixel[fmt], np.uint8)

    def _job(self, config: dict, name: str, wait: Any, signal_function: Any) -> Any:
        self._require_open()
        if not self.started:
            raise RuntimeError("camera not started: the capture job would never complete")
        if name not in STREAMS or config.get(name) is None:
            raise KeyError(name)  # the real make_array looks the stream up by name
        stalled = Picamera2.stall_after is not None and self.frames >= Picamera2.stall_after
        if not stalled:
            self.frames += 1
        job = Job(None if stalled else (lambda: self._array(config[name])))
        if wait is None:
            wait = signal_function is None  # as Picamera2.dispatch_functions decides
        return job.get_result() if wait else job

    def capture_array(self, name: str = "main", wait: Any = None, signal_function: Any = None) -> Any:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        return self._job(self.camera_config, name, wait, signal_function)

    def switch_mode_and_capture_array(self, camera_config: dict, name: str = "main", wait: Any = None,
                                      signal_function: Any = None) -> Any:
        self._check_config(camera_config)  # the real one stops, configures, captures and switches back
        result = self._job(camera_config, name, wait, signal_function)
        if isinstance(result, np.ndarray):
            self.stills.append(result)
        elif not result.stalled:
            self.stills.append(result.get_result())
        return result

    def wait(self, job: Job, timeout: Optional[float] = None) -> Any:
        return job.get_result(timeout=timeout)

    def set_overlay(self, overlay: Optional[np.ndarray]) -> None:
        if overlay is not None and (overlay.ndim != 3 or overlay.shape[2] != 4):
            raise RuntimeError("Overlay must be a 4-channel image")
        if self._preview is None:
            raise AttributeError("'NoneType' object has no attribute 'set_overlay'")  # no preview started yet
        if overlay is not None and self._preview == "visible":
            self.overlays.append(overlay.copy())


Picamera2.reset()
