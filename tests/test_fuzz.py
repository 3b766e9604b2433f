"""Fuzzing the two parsers of untrusted files on the device: the image loader and the bundle/metadata reader.

The invariant: whatever the bytes, the loader returns an upright RGB image or raises ImageError, and the model
readers return a model or raise BundleError/LabelsError; never another exception (which would end a batch with a
traceback). A short run is part of the test suite; a long one is a documented command:

    SKINEDGE_FUZZ_EXAMPLES=20000 SKINEDGE_DEVICE_ONLY=1 python -m pytest tests/test_fuzz.py -q

Every crash found becomes an @example here (and a fix). Device environment: no TensorFlow.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from skinedge.device.bundle import BundleError, embed_metadata, load_model_source, read_embedded
from skinedge.device.classifier import ImageClassifier
from skinedge.device.labels import LabelsError
from skinedge.device.preprocess import ImageError, load_and_preprocess, load_image

EXAMPLES = int(os.environ.get("SKINEDGE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORKDIR = Path(tempfile.mkdtemp(prefix="skinedge-fuzz-"))  # one file rewritten per example (no per-test fixtures)
atexit.register(shutil.rmtree, WORKDIR, True)


# -- seeds: small valid files of every format the loader opens -------------------------------------------------


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    turned = Image.Exif()
    turned[0x0112] = 6
    frames = [base, base.rotate(90), base.convert("L").convert("RGB")]

    def animated(fmt: str, **kwargs) -> bytes:
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kwargs)
        return buf.getvalue()

    seeds = [
        _encode(base, "PNG"), _encode(base, "JPEG", quality=90), _encode(base, "JPEG", exif=turned),
        _encode(base, "JPEG", progressive=True), _encode(base.convert("CMYK"), "JPEG"), _encode(base, "GIF"),
        _encode(base, "BMP"), _encode(base, "TIFF"), _encode(base, "TIFF", compression="tiff_lzw"),
        _encode(base.convert("P"), "PNG", transparency=0), _encode(base, "PNG", exif=turned), _encode(base, "PPM"),
        _encode(base.convert("I;16"), "PNG"), animated("GIF"), animated("PNG"), animated("TIFF"),
    ]
    if features.check("webp"):
        seeds += [_encode(base, "WEBP", quality=80), animated("WEBP", lossless=True)]
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few byte flips, deletions, insertions, a truncation or an extreme 32-bit value."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "int32"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 32))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del data[i:]
        elif len(data) >= 4:
            j = min(i, len(data) - 4)
            data[j:j + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff",
                                                  b"\x80\0\0\0", b"\0\0\x01\0"]))
    return bytes(data)


# -- regressions found by fuzzing (see test_*_regression below for what each one did) -------------------------

# A 140-byte TIFF whose second directory has no width: counting frames (n_frames) raised TypeError.
TIFF_NO_WIDTH = bytes.fromhex(
    "49492a00080000000a0000010400010000002000000001010400010000001800000002010300030000008600000003010300010000"
    "000100000006010300010000000200000011010400010000008c0000001501030001000000030000001601040001000000180000001701"
    "040001000000000900001c010300010000000100000098090000080008000800"
)


def _two_frames(fmt: str) -> bytes:
    buf = io.BytesIO()
    first, second = Image.new("RGB", (8, 6), (200, 30, 30)), Image.new("RGB", (8, 6), (30, 200, 30))
    first.save(buf, fmt, save_all=True, append_images=[second])
    return buf.getvalue()


def gif_second_frame_cut() -> bytes:
    """An animated GIF cut right after its second frame's descriptor: counting frames raised IndexError."""
    data = _two_frames("GIF")
    pos, seen = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0), 0
    while True:
        if data[pos] == 0x21:  # extension: label, then sub-blocks
            pos += 2
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        else:
            assert data[pos] == 0x2C  # image descriptor
            flags = data[pos + 9]
            local = 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
            seen += 1
            if seen == 2:
                return data[:pos + 10 + local]
            pos += 10 + local + 1
            while data[pos]:
                pos += data[pos] + 1
            pos += 1


def tiff_second_page_unknown_compression() -> bytes:
    """A two-page TIFF whose second page names compression 10825: counting frames raised KeyError."""
    data = bytearray(_two_frames("TIFF"))
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        entry = second + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 259:
            struct.pack_into("<H", data, entry + 8, 10825)
    return bytes(data)


GIF_CUT, TIFF_BAD_PAGE = gif_second_frame_cut(), tiff_second_page_unknown_compression()


# -- the image loader ------------------------------------------------------------------------------------------


def check_loader(data: bytes, name: str = "fuzz.img") -> None:
    """The invariant: an RGB image of positive size (also through the draft decode and preprocessing), or
    ImageError naming the file on one line."""
    path = WORKDIR / name
    path.write_bytes(data)
    for draft in (None, (16, 16)):
        try:
            image = load_image(path, draft_size=draft)
        except ImageError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: ") and "\n" not in message, message
            continue
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
        assert np.asarray(image).shape == (image.height, image.width, 3)
        if draft is not None:
            try:
                pixels = load_and_preprocess(path, draft)
            except ImageError:
                continue
            assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


@FUZZ
@given(data=st.binary(max_size=2048))
@example(data=b"")
@example(data=b"\x89PNG\r\n\x1a\n")
@example(data=b"\xff\xd8\xff")
@example(data=b"GIF89a")
@example(data=b"II*\x00")
@example(data=TIFF_NO_WIDTH)
@example(data=GIF_CUT)
@example(data=TIFF_BAD_PAGE)
def test_loader_on_random_bytes(data):
    check_loader(data)


@FUZZ
@given(data=mutated(SEEDS))
@example(data=TIFF_NO_WIDTH)
@example(data=GIF_CUT)
@example(data=TIFF_BAD_PAGE)
def test_loader_on_mutated_images(data):
    check_loader(data)


@pytest.mark.parametrize("data, label", [(GIF_CUT, "gif"), (TIFF_BAD_PAGE, "tiff")])
def test_regression_broken_later_frame_first_frame_still_loads(data, label):
    """Found by fuzzing: Pillow raised IndexError (GIF) / KeyError (TIFF) counting the frames of a file whose
    second frame is broken, and that escaped as a traceback. The first frame is fine: it is what is classified."""
    with Image.open(io.BytesIO(data)) as im, pytest.raises((IndexError, KeyError)):
        im.n_frames  # noqa: B018 - the Pillow behaviour the loader must not trip over
    path = WORKDIR / f"regression.{label}"
    path.write_bytes(data)
    image = load_image(path)
    assert image.size == (8, 6) and np.asarray(image)[3, 4].tolist() == [200, 30, 30]


def test_regression_tiff_without_width_is_an_image_error():
    with Image.open(io.BytesIO(TIFF_NO_WIDTH)) as im, pytest.raises(TypeError):
        im.n_frames  # noqa: B018
    path = WORKDIR / "nowidth.tif"
    path.write_bytes(TIFF_NO_WIDTH)
    with pytest.raises(ImageError, match="nowidth.tif: corrupt or truncated"):
        load_image(path)


@pytest.mark.parametrize("exc", [TypeError("Missing dimensions"), KeyError(10825), IndexError("index out of range"),
                                 struct.error("unpack requires a buffer"), ZeroDivisionError("division by zero"),
                                 MemoryError()])
def test_any_decoder_exception_becomes_an_image_error(monkeypatch, exc):
    """Pillow's decoders raise whatever their parsing trips over; the loader reports all of it as ImageError."""
    path = WORKDIR / "ok.png"
    path.write_bytes(SEEDS[0])

    def broken_load(self):
        raise exc

    monkeypatch.setattr(Image.Image, "load", broken_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken_load)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


# -- the bundle and metadata readers --------------------------------------------------------------------------

FLOAT_MODEL = (FIXTURES / "float32.tflite").read_bytes()
LABELS = ["akiec", "mel", "nv"]
SPEC = {"height": 32, "width": 32, "mean": 0.0, "std": 1.0, "output": "probabilities",
        "flag": {"label": "mel", "threshold": 0.3}}


def _deflated_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("labels.txt", "akiec\nmel\nnv\n")
        zf.writestr("skinedge.json", json.dumps(SPEC))
    return buf.getvalue()


ZIP_SEEDS = [embed_metadata(b"", LABELS, SPEC), _deflated_zip()]


def _zip_variant(patch_central: int, value: int) -> bytes:
    """The stored metadata zip with one 16-bit field of its central directory entry overwritten."""
    data = bytearray(ZIP_SEEDS[0])
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, central + patch_central, value)
    return bytes(data)


def _bad_deflate() -> bytes:
    """The deflated metadata zip with its first compressed bytes replaced: an invalid deflate block."""
    data = ZIP_SEEDS[1]
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    start = 30 + name_len + extra_len
    return data[:start] + b"\xff\xff" + data[start + 2:]


# found by fuzzing read_embedded: zipfile raises NotImplementedError (version 9.9, method 99, strong encryption),
# RuntimeError (an encrypted entry) and zlib.error (corrupt deflate data), which escaped as tracebacks
ZIP_CRASHES = [_zip_variant(6, 99), _zip_variant(10, 99), _zip_variant(8, 0x41), _zip_variant(8, 0x1),
               _bad_deflate()]


def _bare_model(tail: bytes, name: str = "fuzz.tflite") -> Path:
    path = WORKDIR / name
    path.write_bytes(FLOAT_MODEL + tail)
    return path


def _allowed(call) -> None:
    try:
        call()
    except (BundleError, LabelsError) as exc:
        assert "\n" not in str(exc), str(exc)


@FUZZ
@given(tail=mutated(ZIP_SEEDS) | st.binary(max_size=512))
def test_classifier_on_models_with_a_mutated_metadata_zip(tail):
    """What `device classify` sees: a model whose appended metadata zip is damaged loads, or gives one line."""
    path = _bare_model(tail)
    _allowed(lambda: ImageClassifier(path, labels_path=FIXTURES / "labels3.txt"))
    _allowed(lambda: ImageClassifier(path))


for _tail in ZIP_CRASHES:
    test_classifier_on_models_with_a_mutated_metadata_zip = example(tail=_tail)(
        test_classifier_on_models_with_a_mutated_metadata_zip)


@FUZZ
@given(tail=mutated(ZIP_SEEDS) | st.binary(max_size=512))
def test_read_embedded_on_mutated_zips(tail):
    path = _bare_model(tail, "embedded.tflite")
    _allowed(lambda: read_embedded(path))


for _tail in ZIP_CRASHES:
    test_read_embedded_on_mutated_zips = example(tail=_tail)(test_read_embedded_on_mutated_zips)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["akiec", "mel", "nv", "skinedge-bundle", "a/../../x", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
SECTIONS = ["format", "labels", "input", "flag", "model", "golden", "format_version"]


@st.composite
def model_json_text(draw) -> str:
    """Text for model.json: random text, or the fixture's model.json with sections replaced by random JSON."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=200))
    meta = json.loads((FIXTURES / "tiny_bundle" / "model.json").read_text())
    for key in draw(st.lists(st.sampled_from(SECTIONS), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and key in meta and isinstance(meta[key], dict):
            meta[key] = {**meta[key], draw(st.sampled_from(["height", "width", "mean", "std", "label", "threshold",
                                                            "sha256", "file"])): draw(JSON_VALUES)}
        else:
            meta[key] = draw(JSON_VALUES)
    text = json.dumps(meta)
    return text[:draw(st.integers(0, len(text)))] if draw(st.integers(0, 9)) == 0 else text


BUNDLE = WORKDIR / "bundle"
shutil.copytree(FIXTURES / "tiny_bundle", BUNDLE)
# found by fuzzing: sections of the wrong JSON type crashed load_model_source (AttributeError, TypeError), a
# non-numeric mean crashed the classifier (ValueError from float()), and a golden file name too long for the file
# system crashed load_model_source (OSError: File name too long)
META_CRASHES = [json.dumps({**json.loads((FIXTURES / "tiny_bundle" / "model.json").read_text()), key: value})
                for key, value in [("model", []), ("input", []), ("labels", 7), ("labels", [1, 2, 3]),
                                   ("input", {"height": 32, "width": 32, "mean": "x"}), ("flag", "mel"),
                                   ("golden", {"file": "g" * 300})]]


@FUZZ
@given(text=model_json_text())
def test_classifier_on_random_model_json(text):
    (BUNDLE / "model.json").write_text(text, encoding="utf-8")
    _allowed(lambda: ImageClassifier(BUNDLE))
    _allowed(lambda: ImageClassifier(BUNDLE, allow_modified=True))


for _text in META_CRASHES:
    test_classifier_on_random_model_json = example(text=_text)(test_classifier_on_random_model_json)


@FUZZ
@given(text=model_json_text())
def test_load_model_source_on_random_model_json(text):
    (BUNDLE / "model.json").write_text(text, encoding="utf-8")
    _allowed(lambda: load_model_source(BUNDLE, allow_modified=True))


for _text in META_CRASHES:
    test_load_model_source_on_random_model_json = example(text=_text)(test_load_model_source_on_random_model_json)
