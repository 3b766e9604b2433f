"""Image loading and preprocessing: the single contract shared by training, calibration and the device.

    from skinedge.device.preprocess import load_and_preprocess, preprocess
    pixels = load_and_preprocess("lesion.jpg", (224, 224))   # uint8 array (224, 224, 3), RGB
    pixels = preprocess(camera_frame, (224, 224))            # the same for an RGB uint8 frame

The model receives raw RGB uint8 pixels; any scaling to the network's range lives inside the model (for an int8
bundle, in its input quantization). The geometry is
a centre crop to the model's aspect ratio followed by a bilinear (antialiased) resize, done in one Pillow call so
only the cropped region is resampled. JPEG files are decoded at a reduced scale (`Image.draft`) when that still
leaves at least the target resolution: training reads its images through this same function, so the device sees
exactly the pixels the model was trained on.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, TTA_VIEWS

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (height, width)
_EXIF_ORIENTATION = 0x0112
PathLike = Union[str, os.PathLike]


# each view as an operation on the last three axes (height, width, channels) of one image or a batch
_VIEW_OPS = {
    "identity": lambda a: a,
    "flip_lr": lambda a: a[..., :, ::-1, :],
    "flip_ud": lambda a: a[..., ::-1, :, :],
    "rot180": lambda a: a[..., ::-1, ::-1, :],
    "transpose": lambda a: np.swapaxes(a, -3, -2),
    "rot90": lambda a: np.swapaxes(a, -3, -2)[..., ::-1, :, :],
    "rot270": lambda a: np.swapaxes(a, -3, -2)[..., :, ::-1, :],
    "transverse": lambda a: np.swapaxes(a, -3, -2)[..., ::-1, ::-1, :],
}


def tta_problem(mode: object, size: Size) -> str | None:
    """Why `mode` cannot be used as test-time augmentation for a model of input `size`, or None."""
    if not isinstance(mode, str) or mode not in TTA_VIEWS:  # model.json can hold any JSON value (a list: unhashable)
        return f"test-time augmentation {mode!r} is not one of {', '.join(TTA_VIEWS)}"
    if size[0] != size[1] and any(op in ("transpose", "rot90", "rot270", "transverse") for op in TTA_VIEWS[mode]):
        return f"test-time augmentation {mode!r} turns images by 90 degrees: needs a square input, not {size}"
    return None


def tta_views(pixels: np.ndarray, mode: str) -> list[np.ndarray]:
    """The views of preprocessed pixels (one image H x W x 3, or a batch N x H x W x 3) that test-time augmentation
    `mode` averages over, each contiguous (an interpreter's set_tensor wants that). "none" is [pixels]."""
    return [np.ascontiguousarray(_VIEW_OPS[op](pixels)) for op in TTA_VIEWS[mode]]


class ImageError(ValueError):
    """An image that cannot be read; the message names the file and the problem."""


def is_image_path(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def center_crop_box(width: int, height: int, size: Size) -> tuple[int, int, int, int]:
    """The largest centred box of the target aspect ratio, as (left, upper, right, lower)."""
    out_h, out_w = size
    target = out_w / out_h
    if width / height > target:  # too wide: trim the sides
        crop_w, crop_h = max(1, round(height * target)), height
    else:  # too tall: trim top and bottom
        crop_w, crop_h = width, max(1, round(width / target))
    left, upper = (width - crop_w) // 2, (height - crop_h) // 2
    return left, upper, left + crop_w, upper + crop_h


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16-bit and 32-bit greyscale are scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(arr).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


# Formats the loader opens (Pillow's names; JPEG includes the multi-picture JPEGs some cameras write): the files
# IMAGE_EXTENSIONS names. Everything else is refused before a decoder runs, so a file named .jpg that holds, say, EPS
# (which Pillow hands to Ghostscript) or an obscure format with a fragile decoder is never parsed.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM")


def _open_formats() -> tuple[str, ...]:
    """IMAGE_FORMATS this Pillow can open (a build without WebP has no WEBP opener, and naming it would fail)."""
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _reason(exc: BaseException) -> str:
    """An exception as a short single line (Pillow and the OS sometimes give multi-line or empty messages)."""
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return text or type(exc).__name__


def _upright(im: Image.Image, path: Path) -> Image.Image:
    """The image turned by its EXIF orientation; a broken EXIF block is ignored (the pixels are still good)."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception as exc:  # noqa: BLE001 - EXIF parsing of untrusted files raises many types
        log.warning("%s: EXIF orientation unreadable (%s); using the image as stored", path, _reason(exc))
        return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION) or 1)
    except Exception:  # noqa: BLE001 - as in _upright: a broken EXIF block means "as stored"
        return 1


def load_image(path: PathLike, draft_size: Size | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file as an upright RGB Pillow image, or raise ImageError naming the file.

    Honours the EXIF orientation, takes the first frame of animations, and refuses images over `max_pixels`
    before decoding them. `draft_size` (height, width) lets JPEGs decode at a reduced scale no smaller than it.
    Whatever the bytes of the file, the only exception it raises is ImageError, with a one-line message.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(f"{path}: is a directory, not an image")
        if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
            raise ImageError(f"{path}: not a regular file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_open_formats()) as im:
                if im.width * im.height > max_pixels:
                    raise ImageError(f"{path}: image is {im.width}x{im.height}, over the {max_pixels} pixel limit")
                if im.width < 1 or im.height < 1:
                    raise ImageError(f"{path}: image has no pixels ({im.width}x{im.height})")
                # an animation is open at its first frame: counting frames (n_frames) would parse the whole file
                if draft_size is not None and im.format == "JPEG":
                    # the crop is taken from the upright image: EXIF orientations 5-8 swap width and height
                    turned = _orientation(im) in (5, 6, 7, 8)
                    width, height = (im.height, im.width) if turned else (im.width, im.height)
                    box = center_crop_box(width, height, draft_size)
                    # ask for the size at which the cropped region would still cover the target
                    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
                    want = (
                        max(1, -(-draft_size[1] * width // crop_w)),
                        max(1, -(-draft_size[0] * height // crop_h)),
                    )
                    im.draft("RGB", want[::-1] if turned else want)  # draft takes the stored orientation
                im.load()
                return _to_rgb(_upright(im, path))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found" + (" (dangling symlink)" if path.is_symlink() else "")) from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        problem = "empty file" if size == 0 else "not a recognised image format"
        raise ImageError(f"{path}: {problem}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({_reason(exc)})") from None
    except OSError as exc:
        if exc.errno is not None:  # the system could not read the file (I/O error, symlink loop, name too long...)
            raise ImageError(f"{path}: cannot read the file ({exc.strerror or _reason(exc)})") from None
        # Pillow reports truncated or corrupt data as OSError with a terse message
        raise ImageError(f"{path}: corrupt or truncated image ({_reason(exc)})") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({_reason(exc)})") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise TypeError, KeyError, IndexError... on bad data
        raise ImageError(f"{path}: corrupt image ({type(exc).__name__}: {_reason(exc)})") from None


def preprocess(image: Union[Image.Image, np.ndarray], size: Size) -> np.ndarray:
    """Centre-crop to the target aspect ratio and resize: RGB uint8 array of shape (height, width, 3).

    `image` is a Pillow image or an RGB(A/X) uint8 array (H, W, 3 or 4) such as a camera frame.
    Only the centre crop is handed to Pillow (an array is cropped before it is copied), and the crop is resized on
    its own: while it is at least twice the target it is first reduced by the integer factor (`Image.reduce`, a box
    filter: Pillow's `reducing_gap=1.0`), then resampled bilinearly (antialiased) to the exact size. A 640x480 frame
    for a 160x160 model is one 3x3 box reduction and no resampling at all. Deterministic, uint8 all the way.
    """
    out_h, out_w = size
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")
        height, width, channels = image.shape
        left, upper, right, lower = center_crop_box(width, height, size)
        if (right - left, lower - upper) == (out_w, out_h):
            return np.array(image[upper:lower, left:right, :3])
        rawmode = "RGB" if channels == 3 else "RGBX"  # the 4th byte (alpha or padding) is skipped by the decoder
        if image.flags.c_contiguous:  # hand Pillow the crop's rows in place: no copy of the frame
            row = width * channels
            data = image.reshape(-1)[upper * row + left * channels:(lower - 1) * row + right * channels]
            image = Image.frombytes("RGB", (right - left, lower - upper), data, "raw", rawmode, row, 1)
        else:
            crop = np.ascontiguousarray(image[upper:lower, left:right])
            image = Image.frombytes("RGB", (right - left, lower - upper), crop, "raw", rawmode)
    else:
        if image.mode != "RGB":
            image = _to_rgb(image)
        box = center_crop_box(image.width, image.height, size)
        if box != (0, 0, image.width, image.height):
            image = image.crop(box)
    if image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), Image.Resampling.BILINEAR, reducing_gap=1.0)
    return np.asarray(image, dtype=np.uint8)


def load_and_preprocess(path: PathLike, size: Size) -> np.ndarray:
    """Read an image file and preprocess it for a model of input `size` (height, width)."""
    return preprocess(load_image(path, draft_size=size), size)
