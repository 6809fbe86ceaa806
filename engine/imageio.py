"""Reading tiles (JPEG, PNG, TIFF) into RGB ``uint8`` arrays.

One entry point, :func:`read_image`, accepts a path or raw bytes and always returns an
``(H, W, 3) uint8`` array, or raises a :mod:`engine.errors` error that names the file:

* 8- and 16-bit, grey, grey+alpha, RGB, RGBA, palette and CMYK images become RGB ``uint8``
  (16-bit data is scaled by its type range, alpha is composited on white — the colour of glass);
* a file that is not an image → :class:`~engine.errors.UnsupportedFormatError`;
* a truncated or damaged image → :class:`~engine.errors.CorruptFileError`;
* more pixels than ``max_pixels`` (decompression bombs) → :class:`~engine.errors.TooLargeError`,
  checked from the header *before* any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.config import get_settings
from engine.errors import CorruptFileError, TooLargeError, UnsupportedFormatError
from engine.render import png_bytes as to_png_bytes  # noqa: F401 - the PNG encoder lives in engine.render; this name is kept for callers

TILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FORMATS = {"JPEG", "PNG", "TIFF", "MPO"}  # MPO: JPEG written by some cameras, decodes as JPEG

# Pillow's own decompression-bomb guard is replaced by our configurable limit, which is checked from
# the header before any pixel is decoded (read_image_with_info).
Image.MAX_IMAGE_PIXELS = None


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


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
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
    except OSError as exc:
        raise CorruptFileError(f"'{name}' cannot be opened as an image ({exc}).", path=name) from exc
    with img:
        fmt = img.format or "?"
        if fmt not in FORMATS:
            raise UnsupportedFormatError(f"'{name}' is a {fmt} image; tiles must be JPEG, PNG or TIFF.", path=name)
        width, height = img.size
        if width * height > limit:
            raise TooLargeError(
                f"'{name}' is {width}×{height} = {width * height:,} pixels, over the limit of {limit:,}.",
                "Whole slides belong on the Slide page; tiles must be smaller." if fmt == "TIFF" else None,
                path=name,
            )
        if width == 0 or height == 0:
            raise CorruptFileError(f"'{name}' has no pixels.", path=name)
        mode = img.mode
        try:
            if fmt == "TIFF" and mode in ("RGB", "RGBA") and img.tag_v2.get(258, (8,))[0] == 16:
                rgb = _read_tiff_16bit(source, name)
            else:
                rgb = None
            if rgb is None:
                img.load()
                rgb = _to_rgb_uint8(img)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            if fmt == "TIFF" and "cannot" in str(exc).lower() and "mode" in str(exc).lower():
                rgb = _read_tiff_16bit(source, name)
                if rgb is None:
                    raise UnsupportedFormatError(f"'{name}' is a TIFF of a kind HistoDash cannot convert ({mode}).", path=name) from exc
            else:
                raise CorruptFileError(f"'{name}' is damaged or cut short ({exc}).", path=name) from exc
    if rgb.shape[:2] != (height, width):
        raise CorruptFileError(f"'{name}' decoded to an unexpected shape {rgb.shape}.", path=name)
    return np.ascontiguousarray(rgb, dtype=np.uint8), ImageInfo(name, fmt if fmt != "MPO" else "JPEG", width, height, mode, size)


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
