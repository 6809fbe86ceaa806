"""Tile input: every supported flavour becomes RGB uint8; broken files raise the right error naming the file."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.errors import CorruptFileError, InvalidInputError, TooLargeError, UnsupportedFormatError
from engine.imageio import pixel_hash, read_image, read_image_with_info, resize_tile, to_png_bytes
from tests.conftest import rgb_tile, shared_path


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = rgb_tile(1, 40)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_lossless_rgb_roundtrip_is_exact(fmt):
    out = read_image(encode(Image.fromarray(RGB), fmt), name=f"t.{fmt.lower()}")
    assert out.dtype == np.uint8 and out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_decodes_close_to_source():
    smooth = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[:, None, None], (1, 40, 3))
    out = read_image(encode(Image.fromarray(smooth), "JPEG", quality=95), name="t.jpg")
    assert out.shape == (40, 40, 3) and np.abs(out.astype(int) - smooth).mean() < 3


def test_grey_becomes_three_equal_channels():
    grey = RGB[..., 0]
    out = read_image(encode(Image.fromarray(grey), "PNG"), name="g.png")
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # 8 px: the smallest tile read (issue 15)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red-ish, bottom transparent
    out = read_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), name="a.png")
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[7, 0]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_becomes_rgb(fmt):
    cmyk = Image.fromarray(RGB).convert("CMYK")
    out = read_image(encode(cmyk, fmt), name="c." + fmt.lower())
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    expected = np.asarray(cmyk.convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - expected).mean() < (1 if fmt == "TIFF" else 12)


def test_16bit_grey_png_is_scaled_by_type_range():
    grey16 = (RGB[..., 0].astype(np.uint16) * 257)
    out = read_image(encode(Image.fromarray(grey16), "PNG"), name="g16.png")
    np.testing.assert_array_equal(out[..., 0], RGB[..., 0])


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_tiff(channels):
    data = RGB if channels == 3 else np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])
    buf = io.BytesIO()
    tifffile.imwrite(buf, data.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(buf.getvalue(), name="rgb16.tif"), RGB)


def test_info_reports_format_and_size():
    _, info = read_image_with_info(encode(Image.fromarray(RGB), "PNG"), name="x.png")
    assert (info.name, info.format, info.width, info.height) == ("x.png", "PNG", 40, 40)


PNG = encode(Image.fromarray(RGB), "PNG")
JPEG = encode(Image.fromarray(RGB), "JPEG")


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b"", CorruptFileError, "'bad.png' is empty"),
        (PNG[: len(PNG) // 2], CorruptFileError, "'bad.png' is damaged or cut short"),
        (JPEG[:300], (CorruptFileError,), "'bad.png'"),
        (b"just some text, renamed", UnsupportedFormatError, "'bad.png' is not an image"),
        (encode(Image.fromarray(RGB), "GIF"), UnsupportedFormatError, "'bad.png' is a GIF image"),
        (encode(Image.fromarray(RGB), "BMP"), UnsupportedFormatError, "BMP"),
        (b"%PDF-1.4\n%broken", UnsupportedFormatError, "'bad.png'"),
    ],
    ids=["empty", "truncated-png", "truncated-jpeg", "text", "gif", "bmp", "pdf"],
)
def test_broken_files_raise_named_errors(raw, error, match):
    with pytest.raises(error, match=match):
        read_image(raw, name="bad.png")


def test_pixel_limit_is_checked_before_decoding():
    # A 20000x20000 PNG of zeros is ~1 MB on disk but 1.2 GB decoded: refused from the header.
    big = encode(Image.new("L", (20000, 20000)), "PNG")
    with pytest.raises(TooLargeError, match="20000×20000"):
        read_image(big, name="bomb.png", max_pixels=50_000_000)
    with pytest.raises(TooLargeError, match="over the limit of 100"):
        read_image(PNG, name="small.png", max_pixels=100)


def test_missing_path_names_the_file(tmp_path):
    with pytest.raises(CorruptFileError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")


def test_pixel_hash_ignores_container_but_not_pixels():
    assert pixel_hash(read_image(PNG)) == pixel_hash(read_image(encode(Image.fromarray(RGB), "TIFF")))
    other = RGB.copy()
    other[0, 0, 0] ^= 1
    assert pixel_hash(other) != pixel_hash(RGB)


def test_resize_tile_shape_and_identity():
    assert resize_tile(RGB, 40) is RGB
    assert resize_tile(RGB, 16).shape == (16, 16, 3)


def test_real_pcam_tiff_patch():
    folder = shared_path("pcam-kaggle-unlabelled-samples", "images")
    path = sorted(folder.glob("*.tif"))[0]
    rgb, info = read_image_with_info(path)
    assert rgb.shape == (96, 96, 3) and info.format == "TIFF"


@pytest.mark.parametrize("shape", [(4, 40, 3), (10, 200, 3)])
def test_arrays_meet_the_bounds_of_files(shape):
    """One set of tile bounds: an array handed in (Grad-CAM) is refused with the very message its PNG gets."""
    from engine.gradcam import check_tile
    from engine.imageio import check_tile_array

    arr = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    with pytest.raises(InvalidInputError) as from_file:
        read_image(to_png_bytes(arr), name="t.png")
    for check in (check_tile_array, check_tile):
        with pytest.raises(InvalidInputError) as from_array:
            check(arr, "t.png")
        assert from_array.value.message == from_file.value.message
