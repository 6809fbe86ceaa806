"""A corpus of bad (and awkward-but-valid) inputs, generated at test time — nothing binary is committed.

Each :class:`Case` knows its group (``image``, ``archive``, ``slide``, ``table``, ``training``,
``model``), the file name a user would give, how to build the file into a temporary folder, and what
HistoDash must do with it: raise a particular :class:`engine.errors.HistoDashError` subclass whose
message contains ``fragment`` (and names the file), or load (``expect is None``; ``fragment`` then
describes what loading means and ``options`` carry the checks).

``tests/engine/test_corpus.py`` runs every case through the engine API, ``tests/dashboard/test_corpus.py``
through the dashboard page a user would use.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import (
    CorruptFileError,
    HistoDashError,
    IncompatibleModelError,
    InvalidInputError,
    TooLargeError,
    UnsafeArchiveError,
    UnsupportedFormatError,
)

LOADS = None  # ``expect`` of a case that must load


@dataclass(frozen=True)
class Case:
    group: str
    name: str  # the file (or folder) name the user gives
    build: Callable[[Path], Path]  # writes the input under the given folder, returns its path
    expect: type[HistoDashError] | None  # the error class, or LOADS
    fragment: str  # a piece of the message (or, for LOADS, what loading means)
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.group}:{self.name}"

    def make(self, folder: Path) -> Path:
        folder = Path(folder) / self.group / self.name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        return self.build(folder)


# ----------------------------------------------------------------------------- small encoders

def rgb(seed: int = 0, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png(seed: int = 0, size: int = 40) -> bytes:
    return encode(rgb(seed, size), "PNG")


def jpeg(seed: int = 0, size: int = 64) -> bytes:
    return encode(rgb(seed, size), "JPEG", quality=90)


def tiff(arr: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name) if name.startswith("/") else name, data, compress_type=compression)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width × height`` RGB pixels, with a few bytes of data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def huge_header_tiff(path: Path, width: int, height: int, *, tiled: bool = True) -> Path:
    """A small TIFF whose header then claims ``width × height`` pixels."""
    import tifffile

    tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), photometric="rgb", **({"tile": (256, 256)} if tiled else {}))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return path


def sparse_bigtiff(path: Path, width: int = 1_000_000, height: int = 1_000_000, *, tile: int = 4096, levels: int = 1) -> Path:
    """A *valid* tiled BigTIFF declaring ``width × height`` RGB px whose tiles are all absent (offset and byte count 0:
    OpenSlide reads them as transparent), written by hand so the file stays small (10⁶ × 10⁶ px in 4096-px tiles:
    about 1 MB, the tile tables). With ``levels`` > 1, levels each 32× smaller follow, the smallest one stored (glass
    white, 256-px tiles) as a scanner would. tifffile, given only a shape, writes every tile (terabytes): never use
    it for this."""
    import math

    SHORT, LONG, LONG8 = 3, 4, 16
    dims = [(max(1, width // 32**k), max(1, height // 32**k)) for k in range(levels)]
    out = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 16))  # BigTIFF header; the first IFD at 16
    for k, (w, h) in enumerate(dims):
        stored = levels > 1 and k == levels - 1
        side = 256 if stored else tile
        n = math.ceil(w / side) * math.ceil(h / side)
        small = [(254, LONG, [0 if k == 0 else 1]), (256, LONG, [w]), (257, LONG, [h]), (258, SHORT, [8, 8, 8]), (259, SHORT, [1]),
                 (262, SHORT, [2]), (277, SHORT, [3]), (284, SHORT, [1]), (322, LONG, [side]), (323, LONG, [side])]
        count = len(small) + 2
        tables_at = len(out) + 8 + 20 * count + 8
        data_at = tables_at + 16 * n
        nbytes = side * side * 3 if stored else 0
        offsets = [data_at + i * nbytes for i in range(n)] if stored else [0] * n
        out += struct.pack("<Q", count)
        for tag, typ, values in small:
            data = struct.pack(f"<{len(values)}{ {SHORT: 'H', LONG: 'I'}[typ] }", *values)
            out += struct.pack("<HHQ", tag, typ, len(values)) + data.ljust(8, b"\0")
        out += struct.pack("<HHQQ", 324, LONG8, n, tables_at) + struct.pack("<HHQQ", 325, LONG8, n, tables_at + 8 * n)
        out += struct.pack("<Q", data_at + n * nbytes if k + 1 < len(dims) else 0)  # the next IFD follows this one's data
        out += struct.pack(f"<{n}Q", *offsets) + struct.pack(f"<{n}Q", *([nbytes] * n))
        out += b"\xff" * (n * nbytes)
    path.write_bytes(bytes(out))
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def case(group: str, name: str, build: Callable[[Path], Path], expect, fragment: str, /, **options) -> Case:
    return Case(group, name, build, expect, fragment, options)


def file_case(group: str, name: str, data: Callable[[], bytes], expect, fragment: str, /, **options) -> Case:
    return Case(group, name, lambda d: write(d / name, data()), expect, fragment, options)


# ----------------------------------------------------------------------------- images

def _cmyk(fmt: str) -> bytes:
    # C=0 M=255 Y=255 K=0 is red, whatever the file's CMYK convention, after Pillow's conversion
    return encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), fmt)


def _rgba_transparent() -> bytes:
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., 0] = 255  # red but fully transparent: shows the glass (white)
    return encode(arr, "PNG")


def _palette_transparent() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    return encode(img, "PNG", transparency=0)


def _grey16_png() -> bytes:
    return encode(Image.fromarray(np.full((24, 24), 32768, np.uint16)), "PNG")


def _rgba16() -> np.ndarray:
    arr = np.full((16, 16, 4), 257 * 100, np.uint16)
    arr[..., 3] = 65535  # opaque
    return arr


def _truncated_tiff() -> bytes:
    data = encode(rgb(3, 128), "TIFF")
    return data[: len(data) // 2]


def _bad_crc_png() -> bytes:
    data = bytearray(png(4))
    data[33 + 8 + 10] ^= 0xFF  # a byte inside the IDAT chunk's data: its CRC no longer matches
    return bytes(data)


IMAGE_CASES = [
    file_case("image", "empty.png", lambda: b"", CorruptFileError, "is empty"),
    file_case("image", "empty.jpg", lambda: b"", CorruptFileError, "is empty"),
    file_case("image", "truncated.png", lambda: png(1)[:100], CorruptFileError, "damaged or cut short"),
    file_case("image", "truncated.jpg", lambda: jpeg(2)[: len(jpeg(2)) // 2], CorruptFileError, "damaged or cut short"),
    file_case("image", "headeronly.jpg", lambda: jpeg(2)[:400], CorruptFileError, "cannot be opened as an image"),
    file_case("image", "truncated.tif", _truncated_tiff, CorruptFileError, "damaged or cut short"),
    file_case("image", "truncated16.tif", lambda: tiff(np.full((64, 64, 3), 40000, np.uint16), photometric="rgb")[:3000],
              CorruptFileError, "cannot be decoded"),
    file_case("image", "badcrc.png", _bad_crc_png, CorruptFileError, "damaged or cut short"),
    file_case("image", "notes.png", lambda: b"plain text renamed to png\n", UnsupportedFormatError, "not an image"),
    file_case("image", "notes.jpg", lambda: b"plain text renamed to jpg\n", UnsupportedFormatError, "not an image"),
    file_case("image", "notes.tif", lambda: b"plain text renamed to tif\n", UnsupportedFormatError, "not an image"),
    file_case("image", "page.jpg", lambda: b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
              UnsupportedFormatError, "not an image"),
    file_case("image", "bomb.png", png_bomb, TooLargeError, "over the limit"),
    case("image", "hugeheader.tif", lambda d: huge_header_tiff(d / "hugeheader.tif", 1_000_000, 1_000_000), TooLargeError, "over the limit"),
    file_case("image", "anim.gif", lambda: encode(rgb(0, 8), "GIF"), UnsupportedFormatError, "GIF"),
    file_case("image", "scan.bmp", lambda: encode(rgb(0, 8), "BMP"), UnsupportedFormatError, "BMP"),
    file_case("image", "gif-named.png", lambda: encode(rgb(0, 8), "GIF"), UnsupportedFormatError, "GIF"),
    file_case("image", "photo.webp", lambda: encode(rgb(0, 8), "WEBP"), UnsupportedFormatError, "WEBP"),
    # awkward but valid: these must load, as RGB uint8 of the right size and colour
    file_case("image", "grey16.png", _grey16_png, LOADS, "16-bit grey PNG", size=(24, 24), colour=(128, 128, 128)),
    file_case("image", "grey16.tif", lambda: tiff(np.full((20, 30), 65535, np.uint16)), LOADS, "16-bit grey TIFF", size=(20, 30), colour=(255, 255, 255)),
    file_case("image", "rgb16.tif", lambda: tiff(np.full((16, 16, 3), 257 * 100, np.uint16), photometric="rgb"), LOADS, "16-bit RGB TIFF",
              size=(16, 16), colour=(100, 100, 100)),
    file_case("image", "rgba16.tif", lambda: tiff(_rgba16(), photometric="rgb", extrasamples=[2]), LOADS,
              "16-bit RGBA TIFF", size=(16, 16), colour=(100, 100, 100)),
    file_case("image", "cmyk.jpg", lambda: _cmyk("JPEG"), LOADS, "CMYK JPEG", size=(32, 32), colour=(255, 0, 0), tolerance=40),
    file_case("image", "cmyk.tif", lambda: _cmyk("TIFF"), LOADS, "CMYK TIFF", size=(32, 32), colour=(255, 0, 0), tolerance=40),
    file_case("image", "grey.png", lambda: encode(np.full((12, 14), 77, np.uint8), "PNG"), LOADS, "8-bit grey PNG", size=(12, 14), colour=(77, 77, 77)),
    file_case("image", "grey.jpg", lambda: encode(np.full((16, 16), 77, np.uint8), "JPEG"), LOADS, "8-bit grey JPEG", size=(16, 16), colour=(77, 77, 77),
              tolerance=3),
    file_case("image", "rgba.png", _rgba_transparent, LOADS, "transparent RGBA on white", size=(32, 32), colour=(255, 255, 255)),
    file_case("image", "greyalpha.png", lambda: encode(Image.new("LA", (10, 10), (0, 0)), "PNG"), LOADS, "grey+alpha on white", size=(10, 10),
              colour=(255, 255, 255)),
    file_case("image", "palette.png", _palette_transparent, LOADS, "palette with transparency", size=(16, 16), colour=(255, 255, 255)),
    file_case("image", "float.tif", lambda: tiff(np.full((8, 8), 0.5, np.float32)), LOADS, "32-bit float TIFF", size=(8, 8), colour=(128, 128, 128)),
    file_case("image", "jpeg-named.png", lambda: encode(np.full((16, 16, 3), 200, np.uint8), "JPEG"), LOADS, "a JPEG with a .png name",
              size=(16, 16), colour=(200, 200, 200), tolerance=3),
]
# Every awkward-but-valid tile above is one colour: it must read correctly, and then be named blank, never scored (issue 15).
IMAGE_CASES = [dataclasses.replace(c, options={**c.options, "blank": True}) if c.expect is None else c for c in IMAGE_CASES]


def _noise16_rgb() -> np.ndarray:
    return (25700 + np.random.default_rng(7).integers(-2570, 2571, (32, 32, 3))).astype(np.uint16)


def _ramp(h: int = 32, w: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))


def _float_with(value: float) -> bytes:
    arr = _ramp()
    arr[3, 5:8] = value
    return tiff(arr)


def _multipage() -> bytes:
    return tiff(np.stack([rgb(i, 32) for i in range(3)]), photometric="rgb")


def _forged_jpeg(width: int = 7000, height: int = 7000) -> bytes:
    """A small real JPEG whose frame header (SOF0) then declares ``width × height``: decoders pad the rest with grey."""
    data = bytearray(jpeg(2, 64))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_with(*chunks: bytes) -> bytes:
    data = png(1)
    return data[:33] + b"".join(chunks) + data[33:]  # after IHDR, before the image data


def _text_bomb() -> bytes:
    return _png_with(png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"A" * (50 * 1024 * 1024), 9)))


def _icc_bomb() -> bytes:
    return _png_with(png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * (50 * 1024 * 1024), 9)))


def _many_text_chunks() -> bytes:  # each under the per-chunk limit, together over the total
    one = zlib.compress(b"B" * 900 * 1024, 9)
    return _png_with(*(png_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + one) for i in range(12)))


IMAGE_CASES += [
    # degenerate: named, not scored
    file_case("image", "onepixel.png", lambda: encode(np.full((1, 1, 3), 180, np.uint8), "PNG"), InvalidInputError,
              "is 1×1 px, below the minimum of 8 px a side"),
    file_case("image", "line.png", lambda: encode(np.full((1, 100_000, 3), 180, np.uint8), "PNG"), InvalidInputError,
              "is 100000×1 px, below the minimum of 8 px a side"),
    file_case("image", "strip.png", lambda: encode(rgb(3, 20).repeat(100, axis=1), "PNG"), InvalidInputError, "an aspect ratio over 16:1"),
    file_case("image", "nan.tif", lambda: tiff(np.full((16, 16), np.nan, np.float32)), InvalidInputError,
              "has 256 pixel value(s) that are not finite numbers (NaN or infinite)"),
    file_case("image", "someinf.tif", lambda: _float_with(np.inf), InvalidInputError, "has 3 pixel value(s) that are not finite numbers"),
    file_case("image", "pages.tif", _multipage, UnsupportedFormatError, "is a TIFF with 3 pages"),
    file_case("image", "forged.jpg", _forged_jpeg, CorruptFileError, "declares 7000×7000 pixels but holds only"),
    file_case("image", "textbomb.png", _text_bomb, TooLargeError, "text or colour-profile (ICC) chunks that decompress to more than"),
    file_case("image", "iccbomb.png", _icc_bomb, TooLargeError, "text or colour-profile (ICC) chunks that decompress to more than"),
    file_case("image", "manytext.png", _many_text_chunks, TooLargeError, "or 8 MB in all, over the limit"),
    # textured (not blank): read correctly and scored
    file_case("image", "noise16.tif", lambda: tiff(_noise16_rgb(), photometric="rgb"), LOADS, "16-bit RGB TIFF with texture", size=(32, 32),
              colour=(100, 100, 100)),
    file_case("image", "ramp.tif", lambda: tiff(_ramp()), LOADS, "32-bit float ramp 0–1", size=(32, 64), colour=(127.5, 127.5, 127.5)),
    file_case("image", "gradient.png", lambda: encode(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1)), "PNG"), LOADS,
              "8-bit grey gradient", size=(16, 64), colour=(126, 126, 126)),
]


# ----------------------------------------------------------------------------- archives

def _mixed_zip() -> bytes:
    return zipped({"ok.png": png(9), "sub/ok2.jpg": jpeg(10), "bad.png": b"garbage", "cut.png": png(11)[:120], "readme.txt": b"x"})


def _many_members_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(10_001):
            zf.writestr(f"t{i}.png", b"")
    return buf.getvalue()


def _pixel_bomb_zip() -> bytes:
    """Five small PNGs each declaring 7000 × 7000 px (under the per-tile limit), 245 megapixels together."""
    return zipped({f"t{i}.png": png_bomb(7000, 7000) for i in range(5)})


ARCHIVE_CASES = [
    file_case("archive", "pixelbomb.zip", _pixel_bomb_zip, TooLargeError, "its tiles decode to more than 200,000,000 pixels in all"),
    file_case("archive", "slip.zip", lambda: zipped({"ok.png": png(1), "../evil.png": png(2)}), UnsafeArchiveError, "outside the archive"),
    file_case("archive", "slipdeep.zip", lambda: zipped({"a/../../../etc/evil.png": png(2)}), UnsafeArchiveError, "outside the archive"),
    file_case("archive", "absolute.zip", lambda: zipped({"/tmp/evil.png": png(2)}), UnsafeArchiveError, "outside the archive"),
    file_case("archive", "drive.zip", lambda: zipped({"C:\\Windows\\evil.png": png(2)}), UnsafeArchiveError, "outside the archive"),
    file_case("archive", "backslash.zip", lambda: zipped({"..\\evil.png": png(2)}), UnsafeArchiveError, "outside the archive"),
    file_case("archive", "bomb.zip", lambda: zipped({"big.png": b"\0" * (24 * 1024 * 1024)}), UnsafeArchiveError, "zip bomb"),
    file_case("archive", "crowd.zip", _many_members_zip, UnsafeArchiveError, "more than the limit"),
    file_case("archive", "nested.zip", lambda: zipped({"inner.zip": zipped({"t.png": png(3)})}), InvalidInputError, "contains no tiles",
              skipped=["inner.zip"]),
    file_case("archive", "empty.zip", lambda: zipped({}), InvalidInputError, "contains no tiles"),
    file_case("archive", "textonly.zip", lambda: zipped({"notes.txt": b"x"}), InvalidInputError, "contains no tiles", skipped=["notes.txt"]),
    file_case("archive", "corrupt.zip", lambda: b"PK\x03\x04 this is not really a zip", CorruptFileError, "not a valid zip"),
    file_case("archive", "cut.zip", lambda: zipped({"a.png": png(1), "b.png": png(2)})[:-60], CorruptFileError, "not a valid zip"),
    file_case("archive", "zero.zip", lambda: b"", CorruptFileError, "not a valid zip"),
    # good tiles in a zip with broken ones: the good ones load, each broken one is named
    file_case("archive", "mixed.zip", _mixed_zip, LOADS, "2 good tiles load, 2 broken are named", tiles=["ok.png", "sub/ok2.jpg"],
              member_errors={"bad.png": UnsupportedFormatError, "cut.png": CorruptFileError}, skipped=["readme.txt"]),
]


# ----------------------------------------------------------------------------- slides

APERIO = "Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5|Filename = corpus"


def aperio_like_svs(path: Path, width: int = 1536, height: int = 1024, *, tissue: bool = True, fill: int = 242) -> Path:
    """A real-looking Aperio SVS: tiled JPEG pyramid written with tifffile, with an Aperio description (``fill``: the glass)."""
    import tifffile

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.full((height, width, 3), fill, np.uint8)
    if tissue:
        blob = ((xx - width / 2) ** 2 / (width / 3) ** 2 + (yy - height / 2) ** 2 / (height / 3) ** 2) < 1
        noise = np.random.default_rng(0).integers(0, 40, (height, width, 1), dtype=np.uint8)
        img[blob] = (np.array([170, 70, 150], np.uint8) + noise[blob]).clip(0, 255)
    with tifffile.TiffWriter(path) as tif:
        for k in range(3):
            level = img[:: 2**k, :: 2**k]
            h, w = level.shape[:2]
            tif.write(level, tile=(256, 256), photometric="rgb", compression="jpeg", subfiletype=0 if k == 0 else 1,
                      description=APERIO.format(w=w, h=h) if k == 0 else None, metadata=None)
    return path


def _truncated_svs(d: Path) -> Path:
    path = aperio_like_svs(d / "cut.svs")
    data = path.read_bytes()
    return write(path, data[: len(data) // 2])


def _blank_slide(d: Path) -> Path:
    return aperio_like_svs(d / "blank.svs", tissue=False)


SLIDE_CASES = [
    case("slide", "cut.svs", _truncated_svs, CorruptFileError, "cut short"),
    file_case("slide", "renamed.svs", lambda: b"this is a text file, not a slide\n" * 20, CorruptFileError, "not a slide"),
    file_case("slide", "zero.svs", lambda: b"", CorruptFileError, "is empty"),
    file_case("slide", "zero.ndpi", lambda: b"", CorruptFileError, "is empty"),
    file_case("slide", "stub.tif", lambda: b"II*\x00" + b"\xff" * 12, CorruptFileError, "TIFF that cannot be opened"),
    case("slide", "huge.tif", lambda d: huge_header_tiff(d / "huge.tif", 4_000_000_000, 4_000_000_000), CorruptFileError, "cannot be opened (Invalid TIFF"),
    case("slide", "flat.tif", lambda d: huge_header_tiff(d / "flat.tif", 30_000, 30_000, tiled=False), TooLargeError, "not tiled"),
    # issue 15: a BigTIFF declaring 10⁶ × 10⁶ px (valid, sparse, ~1 MB) crashed with a 7 GiB allocation; refused at open
    case("slide", "sparse.tif", lambda d: sparse_bigtiff(d / "sparse.tif"), TooLargeError, "no pyramid level small enough"),
    file_case("slide", "anim.svs", lambda: encode(rgb(0, 8), "GIF"), UnsupportedFormatError, "GIF"),
    # these load: a slide without tissue (tiling finds nothing, the page warns) and a PNG named .ndpi (read as an image)
    case("slide", "blank.svs", _blank_slide, LOADS, "no tissue: zero tissue tiles", tissue=0.0, kind="openslide"),
    # issue 15: a uniform black or grey slide was "100 % tissue" and scored
    case("slide", "black.svs", lambda d: aperio_like_svs(d / "black.svs", tissue=False, fill=0), LOADS, "uniform black: no tissue", tissue=0.0,
         kind="openslide"),
    case("slide", "grey.svs", lambda d: aperio_like_svs(d / "grey.svs", tissue=False, fill=128), LOADS, "uniform grey: no tissue", tissue=0.0,
         kind="openslide"),
    file_case("slide", "really-png.ndpi", lambda: png(5, 300), LOADS, "a PNG with an .ndpi name opens as a one-level image slide", kind="image"),
    case("slide", "good.svs", lambda d: aperio_like_svs(d / "good.svs"), LOADS, "a real-looking Aperio slide", kind="openslide", vendor="aperio",
         mpp=0.5),
]


# ----------------------------------------------------------------------------- cohort tables

def csv(text: str) -> Callable[[], bytes]:
    return lambda: text.encode()


GOOD_ROWS = "time,status,arm,x\n5,1,a,1\n6,0,a,2\n7,1,a,3\n9,1,b,4\n3,1,b,5\n4,0,b,6\n"


def table_case(name: str, data: Callable[[], bytes], expect, fragment: str, *, step: str, time="time", event="status", group=None,
               covariates=(), **options) -> Case:
    """``step``: where the error must surface — read (read_table), prepare (prepare_cohort), groups (log-rank, group
    hazard ratios), cox (fit_cox on ``covariates``); for LOADS, everything runs."""
    return file_case("table", name, data, expect, fragment, step=step, time=time, event=event, group=group, covariates=tuple(covariates),
                     **options)


TABLE_CASES = [
    table_case("empty.csv", lambda: b"", CorruptFileError, "is empty", step="read"),
    table_case("blank.csv", lambda: b"  \n\n  \n", CorruptFileError, "is empty", step="read"),
    table_case("binary.csv", lambda: png(1, 64) + bytes(range(256)) * 8, CorruptFileError, "could not be read", step="read"),
    table_case("onecolumn.csv", csv("time\n5\n6\n7\n"), InvalidInputError, "has only 1 column", step="read"),
    table_case("cohort.json", csv('{"time": [1, 2]}'), UnsupportedFormatError, "unsupported table format", step="read"),
    table_case("broken.xlsx", lambda: b"PK\x03\x04 not a workbook", (CorruptFileError, UnsupportedFormatError), "Excel", step="read"),
    # (the page offers only the table's columns: it maps the event to the second column, which here reads as 0/1)
    table_case("nostatus.csv", csv("time,outcome\n5,1\n6,0\n"), InvalidInputError, "'status' is not in the table", step="prepare",
               page_loads=True, n=2, events=1),
    table_case("nontime.csv", csv("time,status,arm\n5,1,a\nsoon,0,a\n7,1,b\n9,1,b\n"), InvalidInputError, "non-numeric value(s), e.g. 'soon' in row 2",
               step="prepare", group="arm"),
    table_case("negtime.csv", csv("time,status,arm\n5,1,a\n-2,0,a\n7,1,b\n9,1,b\n"), InvalidInputError, "negative value(s), e.g. -2 in row 2",
               step="prepare", group="arm"),
    table_case("inftime.csv", csv("time,status,arm\n5,1,a\ninf,0,a\n7,1,b\n9,1,b\n"), InvalidInputError, "infinite values", step="prepare",
               group="arm"),
    table_case("badevent.csv", csv("time,status,arm\n5,dead,a\n6,maybe,a\n7,alive,b\n"), InvalidInputError,
               "cannot be read as event/censored: maybe", step="prepare", group="arm"),
    table_case("event3.csv", csv("time,status,arm\n5,0,a\n6,1,a\n7,3,b\n"), InvalidInputError, "cannot be read as event/censored: 3",
               step="prepare", group="arm"),
    table_case("allnan.csv", csv("time,status,arm\nNA,1,a\n6,,a\n,0,b\n"), InvalidInputError, "No rows left after dropping 3 rows", step="prepare",
               group="arm"),
    table_case("headeronly.csv", csv("time,status,arm\n"), InvalidInputError, "has no rows", step="prepare", group="arm"),
    table_case("noevents.csv", csv("time,status,arm\n5,0,a\n6,0,a\n7,0,b\n9,0,b\n"), InvalidInputError, "No events in the cohort", step="groups", group="arm"),
    table_case("groupnoevents.csv", csv("time,status,arm\n5,1,a\n6,0,a\n7,1,a\n9,0,b\n3,0,b\n4,0,b\n"), InvalidInputError,
               "Group 'b' of column 'arm' has no events", step="groups", group="arm"),
    table_case("onegroup.csv", csv("time,status,arm\n5,1,a\n6,0,a\n7,1,a\n9,0,a\n"), InvalidInputError, "Only one group ('a') in column 'arm'",
               step="groups", group="arm"),
    table_case("fewevents.csv", csv("time,status,arm,x\n5,1,a,1\n6,0,a,2\n7,0,a,3\n9,0,b,4\n3,0,b,5\n4,0,b,6\n"), InvalidInputError,
               "Too few events for a Cox model", step="cox", covariates=["x"]),
    # awkward but valid
    table_case("bom.csv", lambda: b"\xef\xbb\xbf" + GOOD_ROWS.encode(), LOADS, "a UTF-8 byte-order mark is ignored", step="all", group="arm",
               n=6, events=4),
    table_case("semicolon.csv", csv(GOOD_ROWS.replace(",", ";")), LOADS, "semicolon-separated", step="all", group="arm", n=6, events=4),
    # European Excel: semicolons with decimal commas: not guessed, but the message shows the value
    table_case("decimalcomma.csv", csv("time;status;arm\n5,5;1;a\n6,0;0;a\n7,25;1;a\n9,0;1;b\n3,5;1;b\n4,0;0;b\n"), InvalidInputError,
               "non-numeric value(s), e.g. '5,5' in row 1", step="prepare", group="arm"),
    table_case("tabs.tsv", csv(GOOD_ROWS.replace(",", "\t")), LOADS, "tab-separated", step="all", group="arm", n=6, events=4),
    table_case("words.csv", csv("time,status,arm\n5,Dead,a\n6,alive,a\n7,DEAD,a\n9,dead,b\n3,Alive,b\n4,dead,b\n"), LOADS, "event words in any case",
               step="all", group="arm", n=6, events=4),
    # issue 15: tables users really have, and the ones that used to give tracebacks or hang
    table_case("dupcols.csv", csv("time,status, time ,arm\n5,1,5,a\n6,0,6,b\n"), InvalidInputError,
               "column name(s) that appear more than once, ignoring surrounding spaces (e.g. 'time', 2 times)", step="read"),
    table_case("dupexact.csv", csv("time,status,x,x\n5,1,1,2\n6,0,3,4\n"), InvalidInputError, "appear more than once", step="read"),
    table_case("booltime.csv", csv("time,status,arm\ntrue,1,a\nfalse,0,a\ntrue,1,b\nfalse,1,b\n"), InvalidInputError,
               "Time column 'time' holds true/false values, not times", step="prepare", group="arm"),
    table_case("pidgroup.csv", lambda: _rows(300, pid=True).encode(), InvalidInputError,
               "Group column 'pid' has 300 different values, more than the limit of 50 groups (one per row: is it a patient id?)",
               step="prepare", group="pid"),
    table_case("infcov.csv", csv("time,status,arm,x\n5,1,a,1\n6,0,a,inf\n7,1,a,3\n9,1,b,4\n3,1,b,5\n4,0,b,6\n"), InvalidInputError,
               "Covariate 'x' has 1 infinite value(s), e.g. inf in row 2", step="cox", covariates=["x"]),
    table_case("latin1.csv", lambda: _with_accents(GOOD_ROWS).encode("cp1252"), LOADS, "Windows-1252 (Excel 'CSV' on Windows) is detected",
               step="all", group="arm", n=6, events=4, encoding="cp1252"),
    table_case("unicode.txt", lambda: _with_accents(GOOD_ROWS).replace(",", "\t").encode("utf-16"), LOADS,
               "UTF-16 with a byte-order mark (Excel 'Unicode text') is detected", step="all", group="arm", n=6, events=4, encoding="utf-16"),
    table_case("utf16le.csv", lambda: _with_accents(GOOD_ROWS).encode("utf-16-le"), LOADS, "UTF-16 without a byte-order mark",
               step="all", group="arm", n=6, events=4, encoding="utf-16"),
    table_case("good.xlsx", lambda: _xlsx(GOOD_ROWS), LOADS, "an Excel workbook (openpyxl)", step="all", group="arm", n=6, events=4),
    table_case("big.csv", lambda: _rows(200_000).encode(), LOADS, "200,000 rows answer in seconds (O(n log n) concordance)", step="all",
               group="arm", n=200_000, events=133_333),
]


def _with_accents(text: str) -> str:
    """The table with a last column whose name and values need more than ASCII (as French or German exports have)."""
    lines = text.strip().split("\n")
    return "\n".join([lines[0] + ",Région"] + [f"{line},{'Île' if i % 2 else 'Zürich'}" for i, line in enumerate(lines[1:])]) + "\n"


def _rows(n: int, *, pid: bool = False) -> str:
    """``n`` patients, deterministic: events where ``i % 3 != 0``, arms a/b alternating, times 1–3650 days."""
    head = "pid,time,status,arm,x\n" if pid else "time,status,arm,x\n"
    rows = (f"{f'P{i:06d},' if pid else ''}{1 + (i * 7919) % 3650},{int(i % 3 != 0)},{'ab'[i % 2]},{(i * 37) % 101 / 10}" for i in range(n))
    return head + "\n".join(rows) + "\n"


def _xlsx(text: str) -> bytes:
    import pandas as pd

    buf = io.BytesIO()
    pd.read_csv(io.StringIO(text)).to_excel(buf, index=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- training folders

def _tile_file(path: Path, colour, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.array(colour, np.int16) + np.random.default_rng(seed).integers(-20, 21, (24, 24, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def class_folders(root: Path, counts: dict[str, int]) -> Path:
    colours = [(200, 60, 160), (90, 40, 170), (230, 150, 200)]
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _tile_file(root / cls / f"{cls}_{i}.png", colours[k % 3], seed=10 * k + i)
    return root


def _one_class(d: Path) -> Path:
    return class_folders(d / "oneclass", {"tumour": 4})


def _empty_class(d: Path) -> Path:
    root = class_folders(d / "emptyclass", {"benign": 3, "tumour": 3})
    (root / "stroma").mkdir()
    (root / "stroma" / "notes.txt").write_text("no tiles here")
    return root


def _unreadable(d: Path) -> Path:
    root = class_folders(d / "unreadable", {"benign": 3, "tumour": 3})
    (root / "benign" / "broken.png").write_bytes(b"not a png")
    (root / "tumour" / "empty.jpg").write_bytes(b"")
    (root / "tumour" / "cut.png").write_bytes(png(1)[:90])
    return root


def _all_unreadable(d: Path) -> Path:
    root = d / "allbroken"
    for cls in ("benign", "tumour"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.png").write_bytes(b"nope")
    return root


def _loose(d: Path) -> Path:
    root = d / "loose"
    for i in range(3):
        _tile_file(root / f"t{i}.png", (200, 60, 160), i)
    return root


def _manifest(d: Path, folder: str, text: str, tiles=("a.png", "b.png")) -> Path:
    root = d / folder
    for i, name in enumerate(tiles):
        _tile_file(root / name, (200, 60, 160), i)
    (root / "manifest.csv").write_text(text)
    return root / "manifest.csv"


def _escaping_manifest(d: Path) -> Path:
    _tile_file(d / "outside.png", (1, 2, 3))
    return _manifest(d, "escape", "path,label\na.png,benign\n../outside.png,tumour\n")


def _absolute_manifest(d: Path) -> Path:
    return _manifest(d, "absolute", "path,label\na.png,benign\n/etc/passwd,tumour\n")


def _training_zip(d: Path, entries: dict[str, bytes], name: str) -> Path:
    return write(d / name, zipped(entries))


def _other_workspace(d: Path) -> Path:
    """Tiles in another browser session's upload workspace (under HISTODASH_WORK_DIR)."""
    from engine.config import get_settings

    return class_folders(get_settings().work_dir / "someone-else" / "training" / "tiles", {"benign": 2, "tumour": 2})


def _escaping_link(d: Path) -> Path:
    """A folder inside the data roots that is a symbolic link to a folder outside them."""
    link = d / "link"
    if not link.exists():
        link.symlink_to("/usr/share")
    return link


TRAINING_CASES = [
    case("training", "oneclass", _one_class, InvalidInputError, "Only one class ('tumour')"),
    case("training", "emptyclass", _empty_class, InvalidInputError, "Class folder(s) 'stroma'"),
    case("training", "loose", _loose, InvalidInputError, "has no class subfolders"),
    case("training", "nolabel.csv", lambda d: _manifest(d, "nolabel", "path,class\na.png,benign\nb.png,tumour\n"), InvalidInputError,
         "has no column 'label'"),
    case("training", "blanklabel.csv", lambda d: _manifest(d, "blanklabel", "path,label\na.png,benign\nb.png,\n"), InvalidInputError,
         "have no label"),
    case("training", "nopath.csv", lambda d: _manifest(d, "nopath", "tile_name,label\na.png,benign\nb.png,tumour\n"), InvalidInputError,
         "has no tile path column"),
    case("training", "escape.csv", _escaping_manifest, InvalidInputError, "point outside the dataset folder (first: '../outside.png')"),
    case("training", "absolute.csv", _absolute_manifest, InvalidInputError, "point outside the dataset folder (first: '/etc/passwd')"),
    case("training", "emptymanifest.csv", lambda d: _manifest(d, "emptymanifest", "path,label\n"), InvalidInputError, "lists no tiles"),
    case("training", "oneclass.zip", lambda d: _training_zip(d, {"tumour/a.png": png(1), "tumour/b.png": png(2)}, "oneclass.zip"),
         InvalidInputError, "Only one class ('tumour')"),
    case("training", "slip.zip", lambda d: _training_zip(d, {"benign/a.png": png(1), "../tumour/b.png": png(2)}, "slip.zip"),
         UnsafeArchiveError, "outside the archive"),
    case("training", "allbroken", _all_unreadable, InvalidInputError, "None of the 2 tiles", step="prepare"),
    # unreadable tiles are counted and skipped: the rest trains
    case("training", "unreadable", _unreadable, LOADS, "3 unreadable tiles skipped, 6 kept", step="prepare", kept=6,
         skipped=["broken.png", "cut.png", "empty.jpg"]),
    # issue 15: server paths as input. The CLI's operator may name any folder; the page only uploads and data roots.
    case("training", "devnull", lambda d: Path("/dev/null"), InvalidInputError, "is a device or other special file",
         page_fragment="the path you gave is not"),
    case("training", "etc", lambda d: Path("/etc"), InvalidInputError, "", page_only=True, page_fragment="the path you gave is not"),
    case("training", "otherworkspace", _other_workspace, InvalidInputError, "", page_only=True, page_fragment="the path you gave is not"),
    case("training", "escapelink", _escaping_link, InvalidInputError, "", page_only=True, page_fragment="the path you gave is not"),
]


# ----------------------------------------------------------------------------- training configurations (YAML, CLI)

def _config_case(name: str, text: Callable[[Path], str], expect, fragment: str, /, **options) -> Case:
    def build(d: Path) -> Path:
        class_folders(d / "good", {"benign": 3, "tumour": 3})
        return write(d / name, text(d).encode())
    return Case("config", name, build, expect, fragment, options)


def _alias_bomb(d: Path) -> str:
    lines = [f"data: {d / 'good'}", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


CONFIG_CASES = [
    _config_case("aliasbomb.yaml", _alias_bomb, InvalidInputError, "uses a YAML alias ('*a0', line 3); aliases are not accepted"),
    _config_case("huge.yaml", lambda d: f"data: {d / 'good'}\n" + "# padding\n" * 10_000, InvalidInputError, "is over 64 KB"),
    _config_case("nanweight.yaml", lambda d: f"data: {d / 'good'}\nclass_weights: {{benign: .nan, tumour: 1}}\n", InvalidInputError,
                 "class_weights must be 'balanced', 'none' or a mapping class → positive weight"),
    _config_case("infweight.yaml", lambda d: f"data: {d / 'good'}\nclass_weights: {{benign: .inf, tumour: 1}}\n", InvalidInputError,
                 "class_weights must be"),
    _config_case("devnull.yaml", lambda d: "data: /dev/null\n", InvalidInputError, "'null' is a device or other special file"),
    _config_case("takenid.yaml", lambda d: f"data: {d / 'good'}\nmodel_id: tiny-test\n", InvalidInputError,
                 "A model 'tiny-test' is already registered"),
    _config_case("good.yaml", lambda d: f"data: {d / 'good'}\nepochs: 1\n", LOADS, "queued: 6 tiles in 2 classes"),
]


# ----------------------------------------------------------------------------- models

def _tampered_model(path: Path, *, module: str, class_name: str, registered_name: str | None = None, config: dict | None = None) -> Path:
    """A real ``.keras`` file (tiny CNN) whose Conv2D layer's config is rewritten to name ``module.class_name``."""
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    outputs = k.layers.Conv2D(2, 3, name="payload")(inputs)
    clean = path.with_name("clean-" + path.name)
    k.Model(inputs, outputs).save(clean)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w") as dst:
        for member in src.namelist():
            data = src.read(member)
            if member == "config.json":
                cfg = json.loads(data)
                layer = next(layer for layer in cfg["config"]["layers"] if layer["name"] == "payload")
                layer.update(module=module, class_name=class_name, registered_name=registered_name)
                if config is not None:
                    layer["config"] = config
                data = json.dumps(cfg).encode()
            dst.writestr(member, data)
    clean.unlink()
    return path


CANARY = "histodash_corpus_canary"  # a module a malicious config names; importing it would leave a mark


def _lambda_model(d: Path) -> Path:
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    outputs = k.layers.Lambda(lambda t: t * 2)(inputs)
    path = d / "lambda.keras"
    k.Model(inputs, outputs).save(path)
    return path


def _canary_model(d: Path) -> Path:
    """A config whose layer lives in an importable module with a side effect on import (a file in ``d``)."""
    (d / f"{CANARY}.py").write_text("import os\nos.environ['HISTODASH_CANARY_IMPORTED'] = '1'\nclass Payload:\n    pass\n")
    return _tampered_model(d / "canary.keras", module=CANARY, class_name="Payload", registered_name="Payload", config={})


def _small_classifier(path: Path, *, activation: str = "softmax", nan: bool = False, edit=None) -> Path:
    """A real 8-px, 2-class ``.keras`` model (GAP → Dense); ``nan`` fills its weights with NaN; ``edit(config)`` rewrites config.json."""
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    outputs = k.layers.Dense(2, activation=activation, name="head")(k.layers.GlobalAveragePooling2D()(k.layers.Rescaling(1 / 255)(inputs)))
    model = k.Model(inputs, outputs)
    if nan:
        model.get_layer("head").set_weights([np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)])
    if edit is None:
        model.save(path)
        return path
    clean = path.with_name("clean-" + path.name)
    model.save(clean)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w") as dst:
        for member in src.namelist():
            data = src.read(member)
            dst.writestr(member, edit(data) if member == "config.json" else data)
    clean.unlink()
    return path


def _deep_config(data: bytes) -> bytes:
    cfg = json.loads(data)
    cfg["config"]["layers"][-1]["config"]["nest"] = "DEEP"
    return json.dumps(cfg).replace('"DEEP"', "[" * 100_000 + "]" * 100_000).encode()


def _huge_layer(data: bytes) -> bytes:
    cfg = json.loads(data)
    next(layer for layer in cfg["config"]["layers"] if layer["name"] == "head")["config"]["units"] = 1_000_000_000
    return json.dumps(cfg).encode()


# these load in Keras (safe mode) but must not be imported: checked by import_model only
IMPORT_ONLY_CASES = [
    case("model", "deep.keras", lambda d: _small_classifier(d / "deep.keras", edit=_deep_config), IncompatibleModelError,
         "has a config.json nested 100005 levels deep, over the limit of 100: refused before parsing it", import_only=True),
    case("model", "hugelayer.keras", lambda d: _small_classifier(d / "hugelayer.keras", edit=_huge_layer), IncompatibleModelError,
         "layer 'head' has units = 1,000,000,000, over the limit of 65,536", import_only=True),
    case("model", "nan.keras", lambda d: _small_classifier(d / "nan.keras", nan=True), IncompatibleModelError,
         "gives non-finite outputs (NaN or infinite) on synthetic tissue tiles", import_only=True),
    case("model", "logits.keras", lambda d: _small_classifier(d / "logits.keras", activation="linear"), IncompatibleModelError,
         "on synthetic tissue tiles", import_only=True),
    case("model", "relu.keras", lambda d: _small_classifier(d / "relu.keras", activation="sigmoid"), IncompatibleModelError,
         "class probabilities that do not sum to 1", import_only=True),
]

MODEL_CASES = [
    case("model", "lambda.keras", _lambda_model, IncompatibleModelError, "refused for safety"),
    case("model", "unknown.keras", lambda d: _tampered_model(d / "unknown.keras", module="no_such_module.layers", class_name="Evil",
                                                             registered_name="Evil"),
         IncompatibleModelError, "unknown.keras"),
    case("model", "ossystem.keras", lambda d: _tampered_model(d / "ossystem.keras", module="os", class_name="system", registered_name="system",
                                                              config={"command": "touch pwned"}),
         IncompatibleModelError, "ossystem.keras"),
    case("model", "custom.keras", lambda d: _tampered_model(d / "custom.keras", module="keras.layers", class_name="EvilLayer",
                                                            registered_name="Custom>EvilLayer"),
         IncompatibleModelError, "custom.keras"),
    case("model", "canary.keras", _canary_model, IncompatibleModelError, "canary.keras", canary=True),
    file_case("model", "text.keras", lambda: b"not a keras model", IncompatibleModelError, "cannot be loaded as a Keras model"),
    file_case("model", "empty.keras", lambda: b"", IncompatibleModelError, "cannot be loaded as a Keras model"),
    file_case("model", "model.pkl", lambda: b"\x80\x04K\x01.", IncompatibleModelError, "not a .keras model file"),
    *IMPORT_ONLY_CASES,
]


ALL_CASES: list[Case] = [*IMAGE_CASES, *ARCHIVE_CASES, *SLIDE_CASES, *TABLE_CASES, *TRAINING_CASES, *CONFIG_CASES, *MODEL_CASES]


def cases(group: str) -> list[Case]:
    return [c for c in ALL_CASES if c.group == group]
