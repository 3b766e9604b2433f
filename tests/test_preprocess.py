"""skinedge.device.preprocess: crop geometry, the preprocessing contract, and reading every kind of image file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, features

from skinedge.device.preprocess import (
    ImageError,
    center_crop_box,
    is_image_path,
    load_and_preprocess,
    load_image,
    preprocess,
    tta_problem,
    tta_views,
)
from skinedge.device.constants import TTA_VIEWS

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(h: int, w: int, colour) -> np.ndarray:
    return np.full((h, w, 3), colour, np.uint8)


def close(pixel, colour, tol: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol))


# -- center_crop_box -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width, height, size, box",
    [
        (100, 100, (50, 50), (0, 0, 100, 100)),      # same aspect: everything
        (200, 100, (32, 32), (50, 0, 150, 100)),     # wide: trim the sides
        (100, 300, (32, 32), (0, 100, 100, 200)),    # tall: trim top and bottom
        (100, 100, (20, 40), (0, 25, 100, 75)),      # wide target (h=20, w=40) from a square
        (100, 100, (40, 20), (25, 0, 75, 100)),      # tall target from a square
        (101, 100, (10, 10), (0, 0, 100, 100)),      # odd trim: the extra column goes on the right
        (640, 480, (224, 224), (80, 0, 560, 480)),
        (1, 1000, (32, 32), (0, 499, 1, 500)),       # degenerate: never an empty box
    ],
)
def test_center_crop_box(width, height, size, box):
    assert center_crop_box(width, height, size) == box


@pytest.mark.parametrize("width, height", [(7, 3), (3, 7), (640, 480), (480, 640), (1000, 10), (333, 333)])
@pytest.mark.parametrize("size", [(32, 32), (224, 160), (160, 224), (1, 5)])
def test_center_crop_box_is_centred_inside_with_target_aspect(width, height, size):
    left, upper, right, lower = center_crop_box(width, height, size)
    assert 0 <= left < right <= width and 0 <= upper < lower <= height
    crop_w, crop_h = right - left, lower - upper
    # one side is kept whole, and the box is centred (to within a pixel)
    assert crop_w == width or crop_h == height
    assert abs(left - (width - right)) <= 1 and abs(upper - (height - lower)) <= 1
    # the aspect ratio matches the target to within rounding of one pixel
    target = size[1] / size[0]
    assert abs(crop_w - crop_h * target) <= max(1.0, target) or crop_w == 1 or crop_h == 1


# -- preprocess ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (32, 32), (10, 1000), (1000, 10), (1, 1), (33, 31)])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_preprocess_numpy_frames_shape_dtype(shape, size):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    out = preprocess(frame, size)
    assert out.shape == (*size, 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "LA", "I;16", "F", "1"])
@pytest.mark.parametrize("wh", [(64, 48), (48, 64), (32, 32), (200, 20)])
def test_preprocess_pil_images_of_any_mode_and_aspect(mode, wh):
    image = Image.new("RGB", wh, (120, 60, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", wh, 30000)
    out = preprocess(image, (32, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_preprocess_rgba_frame_drops_alpha():
    frame = np.zeros((20, 20, 4), np.uint8)
    frame[..., 0], frame[..., 3] = 200, 7
    out = preprocess(frame, (10, 10))
    assert out.shape == (10, 10, 3)
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 2), np.uint8)]
)
def test_preprocess_rejects_non_rgb_uint8_arrays(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(bad, (8, 8))


def test_preprocess_same_size_is_identity():
    frame = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(frame, (32, 32)), frame)


def test_preprocess_crop_only_takes_the_middle():
    frame = np.random.default_rng(2).integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(frame, (32, 32)), frame[:, 16:48])


def test_preprocess_wide_image_keeps_the_centre_not_the_sides():
    frame = solid(100, 300, GREEN)
    frame[:, 100:200] = RED
    out = preprocess(frame, (32, 32))
    # the filter may blend the outermost output columns with the pixels just outside the box; nothing more
    assert (out[:, 1:-1] == RED).all()
    assert out[..., 1].mean() < 40


def test_preprocess_tall_image_keeps_the_centre_not_top_and_bottom():
    frame = solid(300, 100, BLUE)
    frame[100:200] = RED
    out = preprocess(frame, (32, 32))
    assert (out[1:-1] == RED).all()


def test_preprocess_numpy_and_pil_agree():
    frame = np.random.default_rng(3).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(frame, (32, 32)), preprocess(Image.fromarray(frame), (32, 32)))


def test_preprocess_of_file_equals_load_and_preprocess_png(make_image):
    frame = np.random.default_rng(4).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    path = make_image("x.png", frame)
    expected = preprocess(load_image(path), (32, 32))
    assert np.array_equal(load_and_preprocess(path, (32, 32)), expected)
    assert np.array_equal(expected, preprocess(frame, (32, 32)))  # PNG is lossless


def test_load_and_preprocess_jpeg_uses_draft_but_stays_close(make_image):
    yy, xx = np.mgrid[0:600, 0:800]
    frame = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], axis=-1).astype(np.uint8)
    path = make_image("big.jpg", frame, quality=95)
    size = (32, 32)
    # the draft decode still covers the target resolution, and is smaller than the file
    drafted = load_image(path, draft_size=size)
    left, upper, right, lower = center_crop_box(drafted.width, drafted.height, size)
    assert right - left >= size[1] and lower - upper >= size[0]
    assert drafted.width < 800
    out = load_and_preprocess(path, size)
    assert np.array_equal(out, preprocess(load_image(path, draft_size=size), size))
    full = preprocess(load_image(path), size)
    assert np.abs(out.astype(int) - full.astype(int)).mean() < 3


def test_jpeg_draft_honours_exif_rotation_for_non_square_targets(make_image):
    # stored 1600x400 (wide) but displayed 400x1600 (tall); the model wants a wide 32x128 input.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = make_image("rotated_wide.jpg", solid(400, 1600, (90, 90, 90)), exif=exif, quality=90)
    size = (32, 128)
    image = load_image(path, draft_size=size)
    assert image.height > image.width  # upright
    left, upper, right, lower = center_crop_box(image.width, image.height, size)
    # the crop that will be resized must still cover the target, or the model gets an upsampled image
    assert right - left >= size[1] and lower - upper >= size[0]


# -- load_image: formats and modes ---------------------------------------------------------------------------


def test_load_greyscale(make_image):
    img = load_image(make_image("grey.png", np.full((10, 12), 77, np.uint8)))
    assert img.mode == "RGB" and img.size == (12, 10)
    assert np.asarray(img)[0, 0].tolist() == [77, 77, 77]


def test_load_rgba(make_image):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[...] = (10, 200, 30, 255)
    img = load_image(make_image("rgba.png", arr))
    assert img.mode == "RGB" and np.asarray(img)[3, 3].tolist() == [10, 200, 30]


def test_load_palette(make_image):
    pal = Image.new("P", (6, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (3, 0, 6, 4))
    img = load_image(make_image("pal.png", pal))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr[0, 0].tolist() == list(RED) and arr[0, 5].tolist() == list(BLUE)


def test_load_palette_with_transparency(make_image):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 255, 0] * 256)
    img = load_image(make_image("palt.png", pal, transparency=0))
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == list(GREEN)


@pytest.mark.parametrize("ext", [".tif", ".jpg"])
def test_load_cmyk(make_image, ext):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    img = load_image(make_image(f"cmyk{ext}", cmyk))
    assert img.mode == "RGB" and close(np.asarray(img)[8, 8], RED, tol=20)


def test_load_16bit_greyscale_is_scaled_not_clipped(make_image):
    arr = np.full((10, 10), 30000, np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 0, 65535, 1000
    path = make_image("g16.png", arr)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    out = np.asarray(load_image(path))
    assert out[5, 5].tolist() == [117, 117, 117]  # 30000 / 65535 * 255, not clipped to 255
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[0, 2, 0] == 4


def test_load_exif_rotated_jpeg(make_image):
    arr = solid(20, 40, RED)
    arr[:, 20:] = BLUE  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = make_image("rot.jpg", arr, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # width 20, height 40: upright
    out = np.asarray(img)
    assert close(out[5, 10], RED, 40) and close(out[35, 10], BLUE, 40)  # left became top


def test_load_animated_gif_takes_first_frame(make_image, tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    img = load_image(path)
    assert img.mode == "RGB" and np.asarray(img)[5, 5].tolist() == list(RED)


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".webp", ".bmp", ".ppm", ".png", ".jpeg"])
def test_load_other_formats(make_image, ext):
    if ext == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    kwargs = {"lossless": True} if ext == ".webp" else ({"quality": 95} if ext == ".jpeg" else {})
    path = make_image(f"img{ext}", solid(12, 16, (30, 140, 220)), **kwargs)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (16, 12)
    assert close(np.asarray(img)[6, 8], (30, 140, 220), tol=3)


def test_upper_case_extension(make_image):
    path = make_image("PHOTO.JPG", solid(10, 10, GREEN), format="JPEG")
    assert is_image_path(path) and is_image_path("x.TiFf") and not is_image_path("notes.txt")
    assert load_image(path).size == (10, 10)


@pytest.mark.parametrize("name", ["läsion_é.png", "病变 1.png", "naïve dir/ü.jpg"])
def test_non_ascii_filename(make_image, name):
    path = make_image(name, solid(9, 11, RED))
    assert load_and_preprocess(path, (8, 8)).shape == (8, 8, 3)


# -- load_image: bad files ------------------------------------------------------------------------------------


def assert_image_error(path, *fragments, **kwargs):
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert_image_error(path, "empty file")


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    assert_image_error(path, "not a recognised image format")


def test_truncated_jpeg(make_image):
    frame = np.random.default_rng(5).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = make_image("trunc.jpg", frame, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_image_error(path, "truncated")


def test_dangling_symlink(tmp_path):
    path = tmp_path / "link.jpg"
    os.symlink(tmp_path / "gone.jpg", path)
    assert_image_error(path, "not found", "dangling symlink")


def test_missing_file(tmp_path):
    assert_image_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path):
    path = tmp_path / "folder.jpg"
    path.mkdir()
    assert_image_error(path, "directory")


def test_too_many_pixels(make_image):
    path = make_image("big.png", solid(100, 100, RED))
    assert_image_error(path, "100x100", "5000", max_pixels=5000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)  # at the limit is fine


def test_load_and_preprocess_raises_image_error(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ImageError, match="bad.png"):
        load_and_preprocess(path, (8, 8))


# -- test-time augmentation views -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(TTA_VIEWS))
def test_tta_views_are_distinct_symmetries_of_the_image(mode):
    image = np.random.default_rng(0).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    views = tta_views(image, mode)
    assert len(views) == len(TTA_VIEWS[mode]) and np.array_equal(views[0], image)
    assert len({v.tobytes() for v in views}) == len(views)  # no view repeats another
    assert all(v.flags.c_contiguous and v.shape == image.shape and v.dtype == np.uint8 for v in views)
    # each view is one of the square's eight symmetries, as numpy writes them
    symmetries = [np.rot90(m, k) for m in (image, image[:, ::-1]) for k in range(4)]
    assert all(any(np.array_equal(v, s) for s in symmetries) for v in views)


def test_tta_views_of_a_batch_are_the_views_of_each_image():
    batch = np.random.default_rng(1).integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    for i, views in enumerate(zip(*[tta_views(img, "dihedral") for img in batch])):
        assert np.array_equal(np.stack(views), tta_views(batch, "dihedral")[i])


def test_tta_flips_keep_a_wide_image_wide_and_turning_it_is_refused():
    wide = np.zeros((4, 6, 3), np.uint8)
    assert {v.shape for v in tta_views(wide, "flips")} == {(4, 6, 3)}
    assert tta_problem("flips", (4, 6)) is None and tta_problem("none", (4, 6)) is None
    assert "square" in tta_problem("dihedral", (4, 6)) and tta_problem("dihedral", (6, 6)) is None
    assert "not one of none, hflip, flips, dihedral" in tta_problem("rot45", (6, 6))
