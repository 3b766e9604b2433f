"""Image loading and preprocessing: the single contract shared by training, calibration and the device.

    from skinedge.device.preprocess import load_and_preprocess, preprocess
    pixels = load_and_preprocess("lesion.jpg", (224, 224))   # uint8 array (224, 224, 3), RGB
    pixels = preprocess(camera_frame, (224, 224))            # the same for an RGB uint8 frame

The model receives raw RGB uint8 pixels; any scaling to the network's range lives inside the model. The geometry is
a centre crop to the model's aspect ratio followed by a bilinear (antialiased) resize, done in one Pillow call so
only the cropped region is resampled. JPEG files are decoded at a reduced scale (`Image.draft`) when that still
leaves at least the target resolution: training reads its images through this same function, so the device sees
exactly the pixels the model was trained on.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (height, width)
_EXIF_ORIENTATION = 0x0112
PathLike = Union[str, os.PathLike]


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


def load_image(path: PathLike, draft_size: Size | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file as an upright RGB Pillow image, or raise ImageError naming the file.

    Honours the EXIF orientation, takes the first frame of animations, and refuses images over `max_pixels`
    before decoding them. `draft_size` (height, width) lets JPEGs decode at a reduced scale no smaller than it.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise ImageError(f"{path}: image is {im.width}x{im.height}, over the {max_pixels} pixel limit")
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                if draft_size is not None and im.format == "JPEG":
                    # the crop is taken from the upright image: EXIF orientations 5-8 swap width and height
                    turned = im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
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
                image = ImageOps.exif_transpose(im) or im
                return _to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found" + (" (dangling symlink)" if path.is_symlink() else "")) from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else 0
        problem = "empty file" if size == 0 else "not a recognised image format"
        raise ImageError(f"{path}: {problem}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError with a terse message
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None


def preprocess(image: Union[Image.Image, np.ndarray], size: Size) -> np.ndarray:
    """Centre-crop to the target aspect ratio and resize: RGB uint8 array of shape (height, width, 3).

    `image` is a Pillow image or an RGB uint8 array (H, W, 3) such as a camera frame.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image[..., :3]), "RGB")
    elif image.mode != "RGB":
        image = _to_rgb(image)
    out_h, out_w = size
    box = center_crop_box(image.width, image.height, size)
    if (box[2] - box[0], box[3] - box[1]) == (out_w, out_h):
        result = image.crop(box) if box != (0, 0, image.width, image.height) else image
    else:
        result = image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    return np.asarray(result, dtype=np.uint8)


def load_and_preprocess(path: PathLike, size: Size) -> np.ndarray:
    """Read an image file and preprocess it for a model of input `size` (height, width)."""
    return preprocess(load_image(path, draft_size=size), size)
