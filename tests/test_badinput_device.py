"""Issue #4 on the device: every bad input fails cleanly (one line naming the file, an exit status that says so, no
traceback) and every valid but awkward image is still classified correctly. Extends test_preprocess.py and
test_device_classify.py, which cover the basic cases (empty file, text named .jpg, truncated JPEG, dangling
symlink, missing file, the plain formats and modes through the loader).

Device environment only: no TensorFlow. The awkward images are solid fixture colours (conftest.TEST_COLOURS), so the
label the tiny fixture model gives them is known.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile, features

from conftest import TEST_COLOURS
from skinedge.cli import main
from skinedge.device.classifier import ImageClassifier
from skinedge.device.preprocess import ImageError, load_and_preprocess, load_image

# the module (skinedge.device exports a function of the same name)
preprocess_mod = importlib.import_module("skinedge.device.preprocess")
LABELS = ["akiec", "mel", "nv"]
OTHER = {"akiec": "nv", "mel": "akiec", "nv": "mel"}  # a colour that gives another label, for decoys


# -- helpers --------------------------------------------------------------------------------------------------


def run_cli(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(main, ["device", "classify", *[str(a) for a in args]])


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, rows: bytes | None = None, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG written by hand: any header (even one claiming 40000x40000) with the given filtered scanlines."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png16(colour, width: int = 12, height: int = 10, alpha: bool = False) -> bytes:
    """A 16-bit-per-channel RGB(A) PNG of one colour (Pillow cannot write these, cameras and scanners do)."""
    channels = [c * 257 for c in colour] + ([65535] if alpha else [])
    row = b"\0" + struct.pack(f">{width * len(channels)}H", *(channels * width))
    return raw_png(width, height, row * height, bit_depth=16, colour_type=6 if alpha else 2)


def compressed_bomb(side: int) -> bytes:
    """A real, valid greyscale PNG of side x side black pixels: tens of megapixels in about 100 kB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def colour_image(label: str, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, TEST_COLOURS[label])


# -- bad image files: the loader and the CLI ------------------------------------------------------------------

# name -> (file name, how to make its bytes, what the message must say)
BAD_FILES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "empty": ("empty.jpg", lambda: b"", "empty file"),
    "text": ("notes.jpg", lambda: b"just some notes\n", "not a recognised image format"),
    "html": ("page.jpg", lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",
             "not a recognised image format"),
    "svg": ("vector.svg", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" '
                                  b'height="9"><rect width="9" height="9" fill="red"/></svg>',
            "not a recognised image format"),
    "svg_named_png": ("vector.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
                      "not a recognised image format"),
    "truncated_jpeg": ("cut.jpg", lambda: encoded(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")[:700],
                       "truncated"),
    "truncated_png": ("cut.png", lambda: encoded(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")[:900],
                      "truncated"),
    "corrupt_png_header": ("hdr.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDR" + b"\xff" * 40,
                           "not a recognised image format"),
    "corrupt_jpeg_header": ("hdr.jpg", lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\xff\x00" * 60, "corrupt"),
    "png_without_pixels": ("nopix.png", lambda: raw_png(10, 10, rows=b""), "truncated"),
    "bomb_header_40000": ("bomb.png", lambda: raw_png(40000, 40000), "decompression bomb"),
    "bomb_header_9000": ("big.png", lambda: raw_png(9000, 9000), "over the 64000000 pixel limit"),
}


@pytest.fixture
def bad_file(tmp_path) -> Callable[[str], Path]:
    def make(kind: str) -> Path:
        name, content, _ = BAD_FILES[kind]
        path = tmp_path / "bad" / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content())
        return path

    return make


def assert_one_line_image_error(path: Path, fragment: str, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_loader_refuses_bad_file_with_one_line(bad_file, kind):
    path = bad_file(kind)
    assert_one_line_image_error(path, BAD_FILES[kind][2])
    with pytest.raises(ImageError):  # the training path (draft decode + preprocess) says the same
        load_and_preprocess(path, (32, 32))


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_cli_reports_bad_file_as_error_record_and_goes_on(bundle_dir, bad_file, colour_files, kind):
    path = bad_file(kind)
    result = run_cli(bundle_dir, colour_files["akiec"], path, colour_files["nv"], "--json")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    got = records(result)
    assert [r.get("label") for r in got] == ["akiec", None, "nv"]
    assert set(got[1]) == {"path", "error"} and got[1]["path"] == str(path)
    assert got[1]["error"].startswith(f"{path}: ") and BAD_FILES[kind][2] in got[1]["error"]


def test_cli_human_output_one_error_line_per_bad_file(bundle_dir, bad_file, colour_files):
    paths = [bad_file(kind) for kind in sorted(BAD_FILES)]
    result = run_cli(bundle_dir, *paths, colour_files["mel"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(paths)
    for line, path in zip(errors, paths):
        assert line.startswith(f"error: {path}: ")
    assert "Traceback" not in result.output
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.strip()]
    assert result.stdout.splitlines()[-1].startswith(f"{colour_files['mel']}: mel ")


def test_real_compressed_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(compressed_bomb(8500))  # 72 Mpx of black, about 70 kB on disk
    assert path.stat().st_size < 200_000
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or original(self))
    message = assert_one_line_image_error(path, "over the 64000000 pixel limit")
    assert "8500x8500" in message
    assert decoded == []  # refused from the header: the pixels were never decompressed


def test_dangling_symlink_in_a_batch(bundle_dir, tmp_path, colour_files):
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "deleted.jpg")
    result = run_cli(bundle_dir, link, colour_files["nv"], "--json")
    assert result.exit_code == 1
    first, second = records(result)
    assert first == {"path": str(link), "error": f"{link}: file not found (dangling symlink)"}
    assert second["label"] == "nv"


def test_symlink_loop_is_a_read_error(tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert_one_line_image_error(loop, "cannot read the file")


def test_unreadable_file_permission_injected(bundle_dir, tmp_path, colour_files, monkeypatch):
    """Root reads everything, so the permission error is injected where Pillow opens the file."""
    locked = tmp_path / "locked.png"
    colour_image("mel").save(locked)
    real_open = Image.open

    def refusing_open(fp, *args, **kwargs):
        if Path(str(fp)) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(preprocess_mod.Image, "open", refusing_open)
    assert_one_line_image_error(locked, "permission denied")
    result = run_cli(bundle_dir, locked, colour_files["nv"], "--json")
    assert result.exit_code == 1
    assert records(result) == [{"path": str(locked), "error": f"{locked}: permission denied"},
                               {**records(result)[1], "label": "nv"}]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_real_permissions(tmp_path):
    locked = tmp_path / "locked.png"
    colour_image("mel").save(locked)
    locked.chmod(0)
    try:
        assert_one_line_image_error(locked, "permission denied")
    finally:
        locked.chmod(0o644)


def test_fifo_named_jpg_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(_error_of(fifo)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader before failing, so no thread is left hanging
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
        pytest.fail("load_image blocked reading a FIFO")
    assert outcome and outcome[0] == f"{fifo}: not a regular file"


def _error_of(path: Path) -> str:
    try:
        load_image(path)
    except ImageError as exc:
        return str(exc)
    return "no error"


def test_directory_given_as_an_image(bundle_dir, tmp_path, colour_files):
    folder_named_jpg = tmp_path / "album.jpg"
    folder_named_jpg.mkdir()  # given explicitly it is walked (empty); inside a folder walk it is a folder
    (tmp_path / "photos" / "x.jpg").mkdir(parents=True)
    colour_image("akiec").save(tmp_path / "photos" / "a.png")
    result = run_cli(bundle_dir, tmp_path / "photos", "--json")
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in records(result)] == ["akiec"]


def test_a_folder_with_bad_files_among_good_is_walked_to_the_end(bundle_dir, tmp_path, make_image, colour_frames):
    make_image("photos/1.png", colour_frames["akiec"])
    (tmp_path / "photos" / "2.jpg").write_bytes(b"")
    (tmp_path / "photos" / "3.png").write_text("<html></html>")
    make_image("photos/4.png", colour_frames["mel"])
    (tmp_path / "photos" / "5.gif").write_bytes(b"GIF89a\x10\x00")
    make_image("photos/6.png", colour_frames["nv"])
    result = run_cli(bundle_dir, tmp_path / "photos", "--json")
    assert result.exit_code == 1
    got = {Path(r["path"]).name: r.get("label", "ERROR") for r in records(result)}
    assert got == {"1.png": "akiec", "2.jpg": "ERROR", "3.png": "ERROR", "4.png": "mel", "5.gif": "ERROR",
                   "6.png": "nv"}


def test_non_utf8_file_name(bundle_dir, tmp_path):
    """A Linux file name that is not valid UTF-8 is still classified, and reported without a crash."""
    folder = tmp_path / "raw"
    folder.mkdir()
    name = b"l\xe9sion.png".decode("utf-8", "surrogateescape")
    colour_image("mel").save(folder / name, format="PNG")
    (folder / b"bad\xff.png".decode("utf-8", "surrogateescape")).write_bytes(b"junk")
    result = run_cli(bundle_dir, folder, "--json")
    assert result.exit_code == 1, result.output
    labels = sorted(r.get("label", "ERROR") for r in records(result))
    assert labels == ["ERROR", "mel"]


def test_unreadable_subfolder_is_reported_not_skipped(bundle_dir, tmp_path, make_image, colour_frames, monkeypatch):
    make_image("photos/a.png", colour_frames["akiec"])
    make_image("photos/private/b.png", colour_frames["mel"])
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "private":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = run_cli(bundle_dir, tmp_path / "photos", "--json")
    assert result.exit_code == 1
    assert any("private" in r["path"] and "error" in r for r in records(result))


# -- valid but awkward images: classified as their colour says ----------------------------------------------


def _awkward_images(label: str) -> dict[str, Callable[[Path], None]]:
    """file name -> writer, for images of `label`'s colour in every awkward shape and encoding."""
    colour = TEST_COLOURS[label]
    rgb = colour_image(label)
    # later frames in the two other colours (identical consecutive frames would be merged into one)
    decoys = [colour_image(OTHER[label]), colour_image(OTHER[OTHER[label]])]

    def save(image, **kwargs):
        return lambda path: image.save(path, **kwargs)

    def write(data: bytes):
        return lambda path: path.write_bytes(data)

    def animated(fmt_kwargs):
        return lambda path: rgb.save(path, save_all=True, append_images=decoys, duration=40, **fmt_kwargs)

    def exif_rotated(orientation):
        exif = Image.Exif()
        exif[0x0112] = orientation
        return save(colour_image(label, (60, 20)), exif=exif, quality=95)

    images = {
        "rgba.png": save(rgb.convert("RGBA")),
        "rgba_half_transparent.png": save(Image.merge("RGBA", (*rgb.split(), Image.new("L", rgb.size, 128)))),
        "palette.png": save(rgb.convert("P", palette=Image.Palette.ADAPTIVE)),
        "palette_transparency.gif": save(rgb.convert("P", palette=Image.Palette.ADAPTIVE), transparency=1),
        "cmyk.jpg": save(rgb.convert("CMYK"), quality=95),
        "cmyk.tif": save(rgb.convert("CMYK")),
        "rgb16.png": write(png16(colour)),
        "rgba16.png": write(png16(colour, alpha=True)),
        "1x1.png": save(Image.new("RGB", (1, 1), colour)),
        "1x1.jpg": save(Image.new("RGB", (1, 1), colour), quality=100),
        "wide_3000x2.png": save(Image.new("RGB", (3000, 2), colour)),
        "tall_2x3000.png": save(Image.new("RGB", (2, 3000), colour)),
        "wide_1000x40.jpg": save(Image.new("RGB", (1000, 40), colour), quality=95),
        "progressive.jpg": save(rgb, quality=95, progressive=True),
        "animated.gif": animated({}),
        "animated.png": animated({}),
        "multipage.tif": animated({}),
        "plain.tif": save(rgb, compression="tiff_lzw"),
        "plain.bmp": save(rgb),
        "plain.ppm": save(rgb),
        "UPPER.JPG": save(rgb, format="JPEG", quality=95),
        "UPPER.PNG": save(rgb, format="PNG"),
        "Mixed.TiFf": save(rgb, format="TIFF"),
        "läsion é.png": save(rgb),
        "病变 1.jpeg": save(rgb, quality=95),
    }
    images.update({f"exif_orientation_{o}.jpg": exif_rotated(o) for o in range(1, 9)})
    if label != "akiec":  # greyscale has no red: only the dark and the light colour keep their label
        grey = rgb.convert("L")
        images.update({"grey.png": save(grey), "grey.jpg": save(grey, quality=95), "grey_alpha.png": save(
            grey.convert("LA")), "grey16.png": write(raw_png(12, 10, (b"\0" + struct.pack(
                ">12H", *[int(np.mean(colour) * 257)] * 12)) * 10, bit_depth=16, colour_type=0)),
            "grey16.tif": save(Image.fromarray(np.full((10, 12), int(np.mean(colour) * 257), np.uint16)))})
    if features.check("webp"):
        images.update({"lossless.webp": save(rgb, lossless=True), "lossy.webp": save(rgb, quality=90),
                       "animated.webp": animated({"lossless": True})})
    return images


@pytest.fixture(scope="module")
def awkward_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("awkward")
    for label in LABELS:
        for name, write in _awkward_images(label).items():
            folder = root / label
            folder.mkdir(exist_ok=True)
            write(folder / name)
    return root


def test_awkward_images_are_all_classified_by_their_colour(bundle_dir, awkward_dir):
    result = run_cli(bundle_dir, awkward_dir, "--json")
    assert result.exit_code == 0, result.output
    got = records(result)
    expected = sum(len(_awkward_images(label)) for label in LABELS)
    assert len(got) == expected
    wrong = [(r["path"], r.get("label"), r.get("error")) for r in got
             if r.get("label") != Path(r["path"]).parent.name]
    assert wrong == []


def test_awkward_images_through_the_classifier_api(bundle_dir, awkward_dir):
    clf = ImageClassifier(bundle_dir)
    for label in LABELS:
        for path in sorted((awkward_dir / label).iterdir()):
            assert clf.classify_path(path)[0].label == label, path.name


def test_animation_takes_the_first_frame_not_a_later_one(awkward_dir):
    for name in ("animated.gif", "animated.png", "multipage.tif") + (("animated.webp",) if features.check("webp")
                                                                      else ()):
        path = awkward_dir / "nv" / name
        assert Image.open(path).n_frames == 3, name  # really animated: the decoys are there
        pixel = np.asarray(load_image(path))[5, 5]
        assert np.abs(pixel.astype(int) - TEST_COLOURS["nv"]).max() <= 3, name


def test_16bit_rgb_png_keeps_its_colour(awkward_dir):
    path = awkward_dir / "akiec" / "rgb16.png"
    assert Image.open(path).info.get("dpi") is None and path.read_bytes()[24] == 16  # bit depth in IHDR
    assert np.asarray(load_image(path))[0, 0].tolist() == list(TEST_COLOURS["akiec"])


# the displayed image for each EXIF orientation, from the stored one (EXIF 2.3, tag 0x0112)
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _blocks() -> np.ndarray:
    """A 2 x 3 grid of 16-pixel blocks in six distinct colours: every flip and turn of it is different."""
    colours = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (240, 240, 40), (200, 40, 200), (20, 20, 20)]
    grid = np.zeros((32, 48, 3), np.uint8)
    for i, colour in enumerate(colours):
        grid[16 * (i // 3):16 * (i // 3 + 1), 16 * (i % 3):16 * (i % 3 + 1)] = colour
    return grid


def _block_centres(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.array([[image[y + 8, x + 8] for x in range(0, w, 16)] for y in range(0, h, 16)], int)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_exif_orientation_is_honoured(tmp_path, orientation, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    stored = _blocks()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    kwargs = {"quality": 95} if fmt == "JPEG" else ({"lossless": True} if fmt == "WEBP" else {})
    Image.fromarray(stored).save(path, fmt, exif=exif, **kwargs)
    expected = _block_centres(np.ascontiguousarray(DISPLAY[orientation](stored)))
    draft_sizes = [None, (8, 8), (8, 16)] if fmt == "JPEG" else [None]
    for draft in draft_sizes:  # the JPEG draft path computes its crop on the upright image
        image = np.asarray(load_image(path, draft_size=draft))
        if draft is None:
            assert image.shape[:2] == (16 * expected.shape[0], 16 * expected.shape[1])
            assert np.abs(_block_centres(image) - expected).max() <= 24
        else:
            # reduced-scale decode: the layout (portrait or landscape) must be the displayed one
            assert (image.shape[0] > image.shape[1]) == (expected.shape[0] > expected.shape[1])


def test_broken_exif_block_still_gives_the_pixels(tmp_path):
    path = tmp_path / "badexif.jpg"
    colour_image("mel").save(path, quality=95, exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + b"\x01" * 20)
    image = load_image(path)
    assert image.size == (40, 30)
    assert np.abs(np.asarray(image)[15, 20].astype(int) - TEST_COLOURS["mel"]).max() <= 8


# -- models, labels and bundles ---------------------------------------------------------------------------


def assert_model_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def float_model(fixtures_dir) -> Path:
    return fixtures_dir / "float32.tflite"


def _edit_meta(bundle: Path, **changes) -> Path:
    path = bundle / "model.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))
    return path


_DELETE = object()


@pytest.mark.parametrize("content", [b"", b"TFL3", b"\0" * 64])
def test_empty_or_tiny_model_file(tmp_path, colour_files, content):
    model = tmp_path / "model.tflite"
    model.write_bytes(content)
    assert_model_error(run_cli(model, colour_files["nv"]), str(model), "not a TFLite model")


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_model_through_the_cli(tmp_path, float_model, colour_files, keep):
    model = tmp_path / "cut.tflite"
    data = float_model.read_bytes()
    model.write_bytes(data[: int(len(data) * keep)])
    assert_model_error(run_cli(model, colour_files["nv"]), str(model), "cannot load this model")


def test_model_given_as_a_folder_without_model(tmp_path, colour_files):
    (tmp_path / "m").mkdir()
    assert_model_error(run_cli(tmp_path / "m", colour_files["nv"]), str(tmp_path / "m"), "not a bundle")


def test_unreadable_model_file_permission_injected(tmp_path, float_model, colour_files, monkeypatch):
    model = tmp_path / "locked.tflite"
    shutil.copy(float_model, model)
    import builtins

    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(model):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    assert_model_error(run_cli(model, colour_files["nv"]), str(model), "Permission denied")


def test_unreadable_model_json_permission_injected(bundle_copy, colour_files, monkeypatch):
    meta = bundle_copy / "model.json"
    real = Path.read_text

    def refusing(self, *args, **kwargs):
        if self == meta:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refusing)
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), str(meta), "Permission denied")


def test_non_image_input_model_refused(fixtures_dir, colour_files, monkeypatch):
    """A single-input model whose input is not an image ([1, 10] floats): the real model is built in the
    workstation tests (test_train_badinput.py); here the interpreter's description of it is injected."""
    from skinedge.device import classifier as classifier_mod

    real = classifier_mod.load_interpreter

    def vector_input(path, **kwargs):
        rt = real(path, **kwargs)
        interpreter = rt.interpreter
        details = interpreter.get_input_details()
        details[0] = {**details[0], "shape": np.array([1, 10], np.int32)}

        class Wrapped:
            def __getattr__(self, name):
                return getattr(interpreter, name)

            def get_input_details(self):
                return details

        rt.interpreter = Wrapped()
        return rt

    monkeypatch.setattr(classifier_mod, "load_interpreter", vector_input)
    assert_model_error(run_cli(fixtures_dir / "float32.tflite", colour_files["nv"]),
                       "float32.tflite", "is not an RGB image")


def test_two_inputs_model_through_the_cli_names_the_file(fixtures_dir, colour_files):
    path = fixtures_dir / "two_inputs.tflite"
    assert_model_error(run_cli(path, colour_files["nv"]), str(path), "2 inputs")


@pytest.mark.parametrize("labels", ["a\nb\n", "a\nb\nc\nd\n"])
def test_bundle_labels_file_count_mismatch(bundle_copy, colour_files, labels):
    _edit_meta(bundle_copy, labels=_DELETE)  # labels.txt is then the bundle's labels
    (bundle_copy / "labels.txt").write_text(labels)
    _edit_meta(bundle_copy, flag=None)
    n = len(labels.split())
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), f"{n} labels for a model with 3 outputs")


@pytest.mark.parametrize("content, fragment", [
    (b"", "no labels in the file"),
    (b"\n  \n\t\n", "no labels in the file"),
    ("névus\nmel\nbcc\n".encode("latin-1"), "not UTF-8"),
    (b"\xff\xfe\x00a\x00b", "not UTF-8"),
])
def test_bad_labels_file(float_model, tmp_path, colour_files, content, fragment):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(content)
    assert_model_error(run_cli(float_model, colour_files["nv"], "--labels", labels), str(labels), fragment)


def test_bad_labels_file_inside_a_bundle(bundle_copy, colour_files):
    _edit_meta(bundle_copy, labels=_DELETE)
    (bundle_copy / "labels.txt").write_bytes(b"\xe9t\xe9\n")
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), str(bundle_copy / "labels.txt"), "not UTF-8")


@pytest.mark.parametrize("changes, fragment", [
    ({"input": []}, '"input" must be a JSON object'),
    ({"model": "model.tflite"}, '"model" must be a JSON object'),
    ({"labels": "akiec mel nv"}, '"labels" must be a JSON list'),
    ({"labels": [1, 2, 3]}, '"labels" must be a list of class names'),
    ({"flag": "mel"}, '"flag" must be a JSON object'),
    ({"labels": ["akiec", "mel"]}, "2 labels for a model with 3 outputs"),
    ({"labels": ["akiec", "mel", "mel"]}, "appears more than once"),
    ({"flag": {"label": "melanoma", "threshold": 0.5}}, "not one of the model's labels"),
    ({"flag": {"label": "mel", "threshold": "high"}}, "numeric threshold"),
    ({"flag": {"label": "mel", "threshold": 0.3, "class_frequencies": [0.1, 0.2, 0.7]}}, "must be a JSON object"),
    ({"flag": {"label": "mel", "threshold": 0.3, "class_frequencies": {"mel": 0.2, "nv": 0.8}}},
     "lack the class(es) akiec"),
    ({"flag": {"label": "mel", "threshold": 0.3, "class_frequencies": {"akiec": "a", "mel": 0.2, "nv": 0.8}}},
     "give 'akiec' 'a', not a finite share >= 0"),
    ({"flag": {"label": "mel", "threshold": 0.3, "class_frequencies": {"akiec": -1, "mel": 0.2, "nv": 0.8}}},
     "not a finite share >= 0"),
    ({"flag": {"label": "mel", "threshold": 0.3, "class_frequencies": {"akiec": 0.5, "mel": 0, "nv": 0.5}}},
     "give the flagged class 'mel' no share"),
    ({"format": "something-else"}, "not a skinedge model.json"),
])
def test_model_json_malformed_sections(bundle_copy, colour_files, changes, fragment):
    _edit_meta(bundle_copy, **changes)
    line = assert_model_error(run_cli(bundle_copy, colour_files["nv"]), fragment)
    assert str(bundle_copy) in line


@pytest.mark.parametrize("text", ["", "{", "null", "[]", '"model"', "{'single': 'quotes'}", "\ufeff{}"])
def test_model_json_not_json_or_not_an_object(bundle_copy, colour_files, text):
    (bundle_copy / "model.json").write_text(text, encoding="utf-8")
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), str(bundle_copy / "model.json"))


def test_model_json_not_utf8(bundle_copy, colour_files):
    (bundle_copy / "model.json").write_bytes(b'{"format": "\xff"}')
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), str(bundle_copy / "model.json"), "malformed JSON")


@pytest.mark.parametrize("key, value", [("height", 64), ("width", 16), ("height", "32"), ("width", True)])
def test_model_json_input_size_does_not_match_the_model(bundle_copy, colour_files, key, value):
    meta = json.loads((bundle_copy / "model.json").read_text())
    _edit_meta(bundle_copy, input={**meta["input"], key: value})
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), str(bundle_copy / "model.json"),
                       f"input {key}", "does not match the model's input 32x32")


@pytest.mark.parametrize("key, value, fragment", [
    ("mean", "zero", "is not a number"),
    ("std", "NaN", "must be a finite number"),
    ("mean", "-Infinity", "must be a finite number"),
    ("std", 0, "must not be 0"),
])
def test_model_json_bad_normalisation(bundle_copy, colour_files, key, value, fragment):
    meta = json.loads((bundle_copy / "model.json").read_text())
    _edit_meta(bundle_copy, input={**meta["input"], key: value})
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), f"normalisation {key}", fragment)


def test_model_json_sha256_matches_but_labels_from_another_model(bundle_copy, colour_files):
    """The model.json of a 4-class model next to a 3-class model: the label count gives it away."""
    _edit_meta(bundle_copy, labels=["akiec", "bcc", "mel", "nv"])
    assert_model_error(run_cli(bundle_copy, colour_files["nv"]), "4 labels for a model with 3 outputs")


def _zip_tail(**patch: int) -> bytes:
    """A small zip holding labels.txt, with one header field overwritten (offsets from the local header)."""
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.txt", "akiec\nmel\nnv\n")
    data = bytearray(buf.getvalue())
    central = data.rindex(b"PK\x01\x02")
    for field, value in patch.items():
        offset = {"version_needed": 6, "flags": 8, "method": 10}[field]
        struct.pack_into("<H", data, central + offset, value)  # the central directory is what zipfile trusts
        struct.pack_into("<H", data, offset - 2, value)  # and the local header agrees
    return bytes(data)


@pytest.mark.parametrize("tail, outcome", [
    (b"PK\x05\x06" + b"\0" * 16 + b"\xff\xff", 0),  # an end-of-archive record pointing nowhere: no metadata
    (_zip_tail(version_needed=99), 2),               # "zip file version 9.9": zipfile raises NotImplementedError
    (_zip_tail(method=99), 2),                       # unknown compression method
    (_zip_tail(flags=0x41), 2),                      # "strong encryption"
    (_zip_tail(flags=0x1), 2),                       # encrypted: zipfile raises RuntimeError
])
def test_bare_model_with_a_broken_metadata_zip(float_model, tmp_path, colour_files, tail, outcome):
    """Garbage where the metadata zip sits after the flatbuffer: ignored, or one line naming the model."""
    model = tmp_path / "m.tflite"
    model.write_bytes(float_model.read_bytes() + tail)
    result = run_cli(model, colour_files["nv"], "--mean", "0", "--std", "1", "--json")
    assert "Traceback" not in result.output
    if outcome == 0:
        assert result.exit_code == 0, result.output
    else:
        assert_model_error(result, str(model))


# -- writing a bundle: a failure at any step leaves the previous bundle as it was ------------------------------


@pytest.mark.parametrize("step", ["model.json", "fsync"])
def test_write_bundle_failure_mid_write_keeps_the_previous_bundle(bundle_dir, tmp_path, monkeypatch, step):
    from skinedge.device import bundle as bundle_mod

    out = tmp_path / "models" / "b"
    shutil.copytree(bundle_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    if step == "model.json":
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == "model.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        monkeypatch.setattr(bundle_mod.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(OSError):
        bundle_mod.write_bundle(out, (bundle_dir / "model.tflite").read_bytes(), LABELS, {"height": 32}, {})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["b"]


def test_write_bundle_failure_at_the_final_rename_keeps_the_previous_bundle(bundle_dir, tmp_path, monkeypatch):
    from skinedge.device import bundle as bundle_mod

    out = tmp_path / "models" / "b"
    shutil.copytree(bundle_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.rename

    def rename(self, target):
        # moving the new (temporary) bundle into place fails: a disk error, a concurrent writer...
        if Path(target) == out and self.name != f".{out.name}.old":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        bundle_mod.write_bundle(out, (bundle_dir / "model.tflite").read_bytes(), LABELS, {"height": 32}, {})
    assert out.is_dir() and {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [
    ["--threads", "-1"], ["--top-k", "-5"], ["--std", "-1"], ["--threads", "1.5"], ["--mean", "abc"],
])
def test_nonsense_options_are_usage_errors(bundle_dir, colour_files, option):
    result = run_cli(bundle_dir, colour_files["nv"], *option)
    assert result.exit_code == 2 and result.stdout == ""
    assert "Invalid value" in result.stderr and option[0] in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option", [["--std", "nan"], ["--std", "inf"], ["--mean", "nan"], ["--mean", "-inf"]])
def test_non_finite_normalisation_is_refused(fixtures_dir, colour_files, option):
    """NaN passes click's range check; it would make every score NaN. Refused with exit 2, one line."""
    result = run_cli(fixtures_dir / "float32.tflite", colour_files["nv"], "--labels", fixtures_dir / "labels3.txt",
                     *option)
    assert_model_error(result, "finite number")
