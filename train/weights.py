"""ImageNet MobileNetV2 weights: a local file, or a download cached under ~/.cache/skinedge.

    path = resolve_weights("imagenet", alpha=1.0)     # downloads once when online
    path = resolve_weights("../shared/weights/mobilenet_v2_1.0_imagenet_no_top.h5", alpha=1.0)

The download URL is Keras' own release of the no-top weights; SKINEDGE_WEIGHTS_URL overrides the base (a mirror,
or a local server in the tests).
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ALPHAS = ("0.35", "0.5", "0.75", "1.0", "1.3", "1.4")


class WeightsError(ValueError):
    """Weights that cannot be found, fetched or read; the message says which and why."""


def weights_filename(alpha: float) -> str:
    key = f"{alpha:g}" if alpha != 1 else "1.0"
    if key not in ALPHAS:
        raise WeightsError(f"no ImageNet MobileNetV2 weights for alpha {alpha} (available: {', '.join(ALPHAS)})")
    # the no-top weights do not depend on the input size; 224 is the reference file
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{key}_224_no_top.h5"


def check_hdf5(path: Path) -> Path:
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != HDF5_MAGIC:
                raise WeightsError(f"{path}: not an HDF5 weights file")
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights ({exc.strerror})") from None
    return path


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` through a temporary file, so an interrupted download leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name, suffix=".part", dir=dest.parent)
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        check_hdf5(Path(tmp))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(f"cannot download {url} ({reason}); offline, pass --weights PATH") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def resolve_weights(weights: str, alpha: float, cache_dir: Optional[Path] = None) -> Optional[str]:
    """None for random init, else the path of a no-top .h5 file (downloading "imagenet" when not cached)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        name = weights_filename(alpha)
        cache_dir = cache_dir or Path(os.environ.get("SKINEDGE_CACHE", Path.home() / ".cache" / "skinedge"))
        dest = cache_dir / name
        if dest.is_file():
            return str(check_hdf5(dest))
        base = os.environ.get("SKINEDGE_WEIGHTS_URL", KERAS_BASE_URL)
        return str(download(base.rstrip("/") + "/" + name, dest))
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (use imagenet, none or a path to a no-top .h5)")
    return str(check_hdf5(path))
