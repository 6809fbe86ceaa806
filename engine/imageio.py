"""Reading tiles (JPEG, PNG, TIFF) into RGB ``uint8`` arrays.

One entry point, :func:`read_image`, accepts a path or raw bytes and always returns an
``(H, W, 3) uint8`` array, or raises a :mod:`engine.errors` error that names the file:

* 8- and 16-bit, grey, grey+alpha, RGB, RGBA, palette and CMYK images become RGB ``uint8``
  (16-bit data is scaled by its type range, alpha is composited on white — the colour of glass);
* a file that is not an image → :class:`~engine.errors.UnsupportedFormatError`;
* a truncated or damaged image → :class:`~engine.errors.CorruptFileError`;
* more pixels than ``max_pixels`` (decompression bombs) → :class:`~engine.errors.TooLargeError`,
  checked from the header *before* any pixel is decoded; so are PNG text/ICC chunks that decompress
  to more than ``MAX_TEXT_CHUNK`` bytes (``MAX_TEXT_MEMORY`` in all) and a header that declares far
  more pixels than the file's bytes can hold (a forged JPEG header: :class:`~engine.errors.CorruptFileError`);
* a multi-page TIFF → :class:`~engine.errors.UnsupportedFormatError` (a tile is one image);
* degenerate images are named, never scored: under ``MIN_SIDE_PX`` a side or more elongated than
  ``MAX_ASPECT`` (from the header, before decoding), float pixels that are NaN or infinite
  (:class:`~engine.errors.InvalidInputError`); :func:`check_scorable` refuses blank (uniform) tiles
  before a model scores them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from engine.config import get_settings
from engine.errors import CorruptFileError, InvalidInputError, TooLargeError, UnsupportedFormatError
from engine.render import png_bytes as to_png_bytes  # noqa: F401 - the PNG encoder lives in engine.render; this name is kept for callers

TILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FORMATS = {"JPEG", "PNG", "TIFF", "MPO"}  # MPO: JPEG written by some cameras, decodes as JPEG

# Pillow's own decompression-bomb guard is replaced by our configurable limit, which is checked from
# the header before any pixel is decoded (read_image_with_info).
Image.MAX_IMAGE_PIXELS = None

# Ancillary PNG chunks (tEXt/zTXt/iTXt, iCCP) are decompressed by Pillow while the header is read:
# one chunk may expand to at most MAX_TEXT_CHUNK bytes, all of them to MAX_TEXT_MEMORY.
MAX_TEXT_CHUNK = 1024 * 1024
MAX_TEXT_MEMORY = 8 * 1024 * 1024
PngImagePlugin.MAX_TEXT_CHUNK = MAX_TEXT_CHUNK
PngImagePlugin.MAX_TEXT_MEMORY = MAX_TEXT_MEMORY

MIN_SIDE_PX = 8  # smaller images are not tiles (a 1×1 px "tile" was scored as tissue)
MAX_ASPECT = 16.0  # longer side / shorter side; a 100,000×1 strip is not a tile
MAX_PIXELS_PER_BYTE = 4096  # no real JPEG/PNG/TIFF packs more pixels per byte (a uniform JPEG: ~100; PNG at most ~350)
BLANK_STD = 1.0  # a tile whose every channel varies less than this (grey levels, standard deviation) is blank


@dataclass(frozen=True)
class ImageInfo:
    """What was read: shown next to thumbnails on the Upload page."""

    name: str
    format: str
    width: int
    height: int
    mode: str
    bytes: int


def _source(data: bytes | str | Path) -> tuple[io.BytesIO | Path, str, int]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        return io.BytesIO(raw), "<bytes>", len(raw)
    path = Path(data)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptFileError(f"Cannot open '{path.name}': {exc.strerror or exc}.", "Check the path.", path=str(path)) from exc
    return path, path.name, size


def _to_rgb_uint8(img: Image.Image, name: str = "image") -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype.kind == "i" and arr.min(initial=0) < 0:
            arr = arr - arr.min()
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        check_finite(arr, name)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 if hi <= 1.0 and lo >= 0.0 else 255.0 / max(hi - lo, 1e-12)
        grey = np.clip(np.rint((np.nan_to_num(arr) - (0 if hi <= 1.0 and lo >= 0 else lo)) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _read_tiff_16bit(source, name: str) -> np.ndarray | None:
    """16-bit RGB(A) TIFFs, which Pillow cannot decode: read with tifffile."""
    import tifffile

    try:
        arr = tifffile.imread(source if isinstance(source, Path) else io.BytesIO(source.getvalue()))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file
        raise CorruptFileError(f"'{name}' is a TIFF that cannot be decoded ({exc}).", path=name) from exc
    if arr.dtype == np.uint16 or arr.dtype == np.int16:
        arr = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        return None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float64) / 255.0
        arr = np.rint(arr[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        return None
    return np.ascontiguousarray(arr)


def read_image_with_info(data: bytes | str | Path, *, name: str | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode an image; return ``(rgb_uint8, info)``. See the module docstring for the errors."""
    source, default_name, size = _source(data)
    name = name or default_name
    limit = max_pixels if max_pixels is not None else get_settings().max_pixels
    if size == 0:
        raise CorruptFileError(f"'{name}' is empty (0 bytes).", path=name)
    try:
        img = Image.open(source)
    except UnidentifiedImageError as exc:
        raise UnsupportedFormatError(f"'{name}' is not an image HistoDash can read.", path=name) from exc
    except ValueError as exc:  # Pillow: a PNG text/ICC chunk over MAX_TEXT_CHUNK / MAX_TEXT_MEMORY
        raise _chunk_bomb(name, exc) from exc
    except OSError as exc:
        raise CorruptFileError(f"'{name}' cannot be opened as an image ({exc}).", path=name) from exc
    with img:
        fmt = img.format or "?"
        if fmt not in FORMATS:
            raise UnsupportedFormatError(f"'{name}' is a {fmt} image; tiles must be JPEG, PNG or TIFF.", path=name)
        width, height = img.size
        try:  # counting a TIFF's pages walks its IFD chain, which a cut-short file breaks
            pages = getattr(img, "n_frames", 1) if fmt == "TIFF" else 1
        except (OSError, ValueError, TypeError, SyntaxError, EOFError) as exc:  # Pillow: TypeError "Missing dimensions"
            raise CorruptFileError(f"'{name}' is damaged or cut short ({exc}).", path=name) from exc
        check_header(name, fmt, width, height, size, limit, pages=pages)
        mode = img.mode
        try:
            if fmt == "TIFF" and mode in ("RGB", "RGBA") and img.tag_v2.get(258, (8,))[0] == 16:
                rgb = _read_tiff_16bit(source, name)
            else:
                rgb = None
            if rgb is None:
                img.load()
                rgb = _to_rgb_uint8(img, name)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            if _is_chunk_bomb(exc):
                raise _chunk_bomb(name, exc) from exc
            if fmt == "TIFF" and "cannot" in str(exc).lower() and "mode" in str(exc).lower():
                rgb = _read_tiff_16bit(source, name)
                if rgb is None:
                    raise UnsupportedFormatError(f"'{name}' is a TIFF of a kind HistoDash cannot convert ({mode}).", path=name) from exc
            else:
                raise CorruptFileError(f"'{name}' is damaged or cut short ({exc}).", path=name) from exc
    if rgb.shape[:2] != (height, width):
        raise CorruptFileError(f"'{name}' decoded to an unexpected shape {rgb.shape}.", path=name)
    return np.ascontiguousarray(rgb, dtype=np.uint8), ImageInfo(name, fmt if fmt != "MPO" else "JPEG", width, height, mode, size)


def _is_chunk_bomb(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, ValueError) and ("too large" in text or "max_text" in text or "too much memory" in text)


def _chunk_bomb(name: str, exc: ValueError) -> TooLargeError | CorruptFileError:
    if not _is_chunk_bomb(exc):
        return CorruptFileError(f"'{name}' cannot be opened as an image ({exc}).", path=name)
    return TooLargeError(
        f"'{name}' has text or colour-profile (ICC) chunks that decompress to more than {MAX_TEXT_CHUNK // 1024:,} KB "
        f"each or {MAX_TEXT_MEMORY // (1024 * 1024)} MB in all, over the limit (a decompression bomb?).",
        "Re-save the image without metadata (e.g. export as a plain PNG or JPEG).", path=name)


def check_header(name: str, fmt: str, width: int, height: int, size: int, limit: int, *, pages: int = 1) -> None:
    """Bounds checked from the header, before any pixel is decoded (the module docstring lists them)."""
    pixels = width * height
    if pixels > limit:
        raise TooLargeError(
            f"'{name}' is {width}×{height} = {pixels:,} pixels, over the limit of {limit:,}.",
            "Whole slides belong on the Slide page; tiles must be smaller." if fmt == "TIFF" else None,
            path=name,
        )
    if width == 0 or height == 0:
        raise CorruptFileError(f"'{name}' has no pixels.", path=name)
    if pages > 1:
        raise UnsupportedFormatError(
            f"'{name}' is a TIFF with {pages} pages (images); a tile must be a single image, and HistoDash does not pick one for you.",
            "Save the page you want as its own file; a pyramid (whole slide) belongs on the Slide page.", path=name)
    if min(width, height) < MIN_SIDE_PX:
        raise InvalidInputError(f"'{name}' is {width}×{height} px, below the minimum of {MIN_SIDE_PX} px a side: not a tile, not scored.",
                                "Upload the tile itself (e.g. 224 or 512 px a side).", path=name)
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise InvalidInputError(
            f"'{name}' is {width}×{height} px, an aspect ratio over {MAX_ASPECT:g}:1: a strip, not a tile, not scored.",
            "Crop it to a square tile.", path=name)
    if pixels > 1_000_000 and pixels > MAX_PIXELS_PER_BYTE * size:
        raise CorruptFileError(
            f"'{name}' declares {width}×{height} pixels but holds only {size:,} bytes: its header is damaged or forged.",
            path=name)


def check_finite(arr: np.ndarray, name: str) -> None:
    """Float pixels must be numbers: NaN or infinite pixels are refused, naming how many."""
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise InvalidInputError(
            f"'{name}' has {bad:,} pixel value(s) that are not finite numbers (NaN or infinite): not scored.",
            "Export the image again as 8- or 16-bit, or replace the missing values.", path=name)


def check_scorable(rgb: np.ndarray, name: str) -> np.ndarray:
    """A tile a model may score, or :class:`InvalidInputError` naming why not (blank: one colour, no content).

    The size and aspect bounds are checked from the header by :func:`read_image_with_info`; arrays given
    directly (not read from a file) are checked here too.
    """
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE_PX or max(h, w) / max(min(h, w), 1) > MAX_ASPECT:
        check_header(name, "array", w, h, rgb.nbytes, rgb.size + 1)
    step = max(1, int(np.sqrt(h * w / 65536)))  # a 256 × 256 sample is plenty to tell one colour
    sample = rgb[::step, ::step].reshape(-1, rgb.shape[2]).astype(np.float32)
    if float(sample.std(axis=0).max()) < BLANK_STD and float(np.ptp(sample, axis=0).max()) <= 8:
        colour = tuple(int(round(v)) for v in sample.mean(axis=0))
        raise InvalidInputError(f"'{name}' is blank: every pixel is about RGB {colour}, there is nothing to score.",
                                "Upload tiles with tissue; blank glass or a filled area is not scored.", path=name)
    return rgb


def header_pixels(raw: bytes) -> int:
    """Width × height from an image's header, without decoding it (0 when the header cannot be read)."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            return int(width) * int(height)
    except Exception:  # noqa: BLE001 - the decoder names a broken file later
        return 0


def unique_name(name: str, taken) -> str:
    """``name``, or ``stem (2).suffix``, ``stem (3).suffix``… — the first not in ``taken`` (two uploads both named ``a.png``)."""
    if name not in taken:
        return name
    path = Path(name)
    k = 2
    while f"{path.stem} ({k}){path.suffix}" in taken:
        k += 1
    return f"{path.stem} ({k}){path.suffix}"


def read_image(data: bytes | str | Path, *, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode a tile into an ``(H, W, 3) uint8`` RGB array (see module docstring)."""
    return read_image_with_info(data, name=name, max_pixels=max_pixels)[0]


def pixel_hash(rgb: np.ndarray) -> str:
    """SHA-256 of the decoded pixels and their shape: the same tile gives the same key whatever its file name or encoding container."""
    h = hashlib.sha256()
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
    return h.hexdigest()


def is_tile_name(name: str) -> bool:
    return name.lower().endswith(TILE_SUFFIXES)


def resize_tile(rgb: np.ndarray, px: int) -> np.ndarray:
    """Resize a tile to ``px × px`` the one way training and inference both use (Pillow bilinear, antialiased)."""
    if rgb.shape[0] == px and rgb.shape[1] == px:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((px, px), Image.BILINEAR))
