"""Whole-slide images behind one small interface, whatever the file.

>>> from engine.slides import open_slide
>>> with open_slide("CMU-1-Small-Region.svs") as slide:
...     slide.info.mpp, slide.level_dimensions
...     rgb = slide.read_region((1000, 1000), 0, (512, 512))   # (512, 512, 3) uint8

:func:`open_slide` returns an :class:`OpenSlideSlide` for every format OpenSlide reads (through the
bundled ``openslide-bin``) and an :class:`ImageSlide` — a one-level slide — for plain JPEG/PNG/TIFF
images (openslide-python's own ``ImageSlide`` idea), so tiles and slides share one code path.
``read_region`` takes a level-0 location, a level and a size *at that level* and returns RGB
``uint8`` composited on white.

Errors: a file OpenSlide and Pillow both refuse → :class:`UnsupportedFormatError`; an empty, cut-short
or damaged slide → :class:`CorruptFileError` (at open or at read); absurd dimensions →
:class:`TooLargeError`. Every message names the file.

Microns per pixel fall back in a fixed chain (:func:`resolve_mpp`): ``openslide.mpp-x/y`` → the TIFF
resolution tags (``tiff.XResolution`` + ``tiff.ResolutionUnit``, or read with tifffile) → a value the
user enters → ``None`` (never a crash). Label and macro images carry patient names: this module never
returns them (:attr:`Slide.associated_names` lists only safe ones).

:class:`SlideLibrary` browses a read-only folder safely (no traversal, no symlinks leading out of it).
Uploads and the slide ids pages pass around live in :mod:`engine.uploads`; generated test slides in
:mod:`engine.synthetic`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.cache import sha256_file
from engine.config import get_settings
from engine.errors import CorruptFileError, HistoDashError, InvalidInputError, TooLargeError, UnsupportedFormatError
from engine.privacy import strip_server_paths

# Formats OpenSlide reads, plus plain images (opened as one-level slides).
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
    ".jpg", ".jpeg", ".png",
)
#: associated images that may be shown (never ``label`` or ``macro``: they carry patient names).
SAFE_ASSOCIATED = ("thumbnail",)
#: metadata keys shown on the page / written into manifests (no free-text comments, no user names).
MAX_SIDE = 10_000_000  # level-0 side beyond any real scanner (a 2 m slide at 0.2 µm/px)
MAX_LEVEL0_PIXELS = 2 * 10**12


@dataclass(frozen=True)
class SlideInfo:
    """What the page shows about a slide (no label/macro, no free-text comments)."""

    name: str
    format: str  # "openslide" | "image"
    vendor: str | None
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    mpp_source: str | None  # "openslide" | "tiff-resolution" | "user" | None
    objective_power: float | None
    quickhash: str | None
    file_bytes: int

    def to_dict(self) -> dict:
        return {
            "name": self.name, "format": self.format, "vendor": self.vendor,
            "width": self.dimensions[0], "height": self.dimensions[1], "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp_x": self.mpp[0] if self.mpp else None, "mpp_y": self.mpp[1] if self.mpp else None,
            "mpp_source": self.mpp_source, "objective_power": self.objective_power,
            "quickhash": self.quickhash, "file_bytes": self.file_bytes,
        }


class Slide:
    """A multi-resolution image. Subclasses implement the ``_read`` primitive and the level geometry."""

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def __init__(self, path: Path, user_mpp: float | None = None):
        self.path = Path(path)
        self._user_mpp = user_mpp
        self._hash: str | None = None

    # -- geometry ----------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level whose downsample is ≤ ``downsample`` (+ a small tolerance)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.001:
                best = i
        return best

    # -- metadata ----------------------------------------------------------------------------
    @property
    def properties(self) -> dict[str, str]:
        return {}

    @property
    def associated_names(self) -> tuple[str, ...]:
        return ()

    @property
    def info(self) -> SlideInfo:
        mpp, source = resolve_mpp(self.properties, self.path, self._user_mpp)
        props = self.properties
        obj = _float(props.get("openslide.objective-power"))
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        return SlideInfo(
            name=self.path.name, format=self.kind, vendor=props.get("openslide.vendor"),
            dimensions=self.dimensions, level_count=self.level_count,
            level_dimensions=tuple(self.level_dimensions), level_downsamples=tuple(float(d) for d in self.level_downsamples),
            mpp=mpp, mpp_source=source, objective_power=obj, quickhash=props.get("openslide.quickhash-1"), file_bytes=size,
        )

    @property
    def mpp(self) -> float | None:
        """Mean microns per pixel at level 0 after the fallback chain, or None."""
        mpp, _ = resolve_mpp(self.properties, self.path, self._user_mpp)
        return None if mpp is None else (mpp[0] + mpp[1]) / 2

    def set_user_mpp(self, value: float | None) -> None:
        if value is not None and not (0.01 <= float(value) <= 100):
            raise InvalidInputError(f"{value} µm/px is not a plausible resolution (0.01–100).")
        self._user_mpp = None if value is None else float(value)

    def content_hash(self) -> str:
        """OpenSlide's quickhash where present, else the file's sha256 (computed once)."""
        if self._hash is None:
            quick = self.properties.get("openslide.quickhash-1")
            self._hash = f"quickhash1:{quick}" if quick else f"sha256:{sha256_file(self.path)}"
        return self._hash

    # -- pixels ------------------------------------------------------------------------------
    kind = "abstract"

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8`` ``(h, w, 3)`` of ``size`` pixels at ``level``, top-left at level-0 ``location``."""
        if not 0 <= level < self.level_count:
            raise InvalidInputError(f"Level {level} does not exist in '{self.path.name}' ({self.level_count} levels).")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise InvalidInputError(f"Region size {size} must be positive.")
        if w * h > 64 * 1024 * 1024:
            raise TooLargeError(f"A region of {w}×{h} pixels is too large to read at once.")
        try:
            return self._read((int(location[0]), int(location[1])), level, (w, h))
        except HistoDashError:  # already a message naming the file (an image slide's decoder): not wrapped again
            raise
        except Exception as exc:  # noqa: BLE001 - OpenSlideError, OSError, decoder errors
            raise CorruptFileError(
                f"'{self.path.name}' cannot be read at ({location[0]}, {location[1]}) level {level}: {_clean(exc, self.path)}.",
                "The slide may be cut short or damaged: copy or upload it again.",
                path=str(self.path),
            ) from exc

    def _read(self, location, level, size) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_level(self, level: int) -> np.ndarray:
        """A whole level as RGB (only for small levels: thumbnails and tissue masks)."""
        w, h = self.level_dimensions[level]
        return self.read_region((0, 0), level, (w, h))

    def thumbnail_level(self, max_side: int = 2048) -> int:
        """The smallest-downsample level whose larger side is ≤ ``max_side``, else the lowest resolution."""
        for i, (w, h) in enumerate(self.level_dimensions):
            if max(w, h) <= max_side:
                return i
        return self.level_count - 1

    def get_thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """``(rgb, downsample)``: an RGB thumbnail with larger side ≤ ``max_side`` and its level-0 px per pixel.

        The downsample is exact in both axes only up to rounding of the level sizes: use
        ``dimensions[0] / thumb.shape[1]`` for x and ``dimensions[1] / thumb.shape[0]`` for y.
        """
        level = self.thumbnail_level(max(max_side, 2048))
        w, h = self.level_dimensions[level]
        if max(w, h) > 16384:
            raise TooLargeError(
                f"'{self.path.name}' has no pyramid level small enough for a thumbnail (smallest {w}×{h}).",
                "Convert the slide to a pyramidal format (e.g. with vips tiffsave --pyramid --tile).",
            )
        rgb = self.read_level(level)
        scale = min(1.0, max_side / max(w, h))
        if scale < 1.0:
            tw, th = max(1, round(w * scale)), max(1, round(h * scale))
            rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.BILINEAR))
        return rgb, self.dimensions[0] / rgb.shape[1]

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name!r}, {self.dimensions[0]}×{self.dimensions[1]}, {self.level_count} levels)"


class OpenSlideSlide(Slide):
    """A slide read by OpenSlide (SVS, NDPI, MRXS, SCN, tiled TIFF, …). Thread-safe reads."""

    kind = "openslide"

    def __init__(self, path: Path, handle, user_mpp: float | None = None):
        super().__init__(path, user_mpp)
        self._osr = handle
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)
        self._props = dict(handle.properties)

    @property
    def properties(self) -> dict[str, str]:
        return self._props

    @property
    def associated_names(self) -> tuple[str, ...]:
        return tuple(n for n in self._osr.associated_images if n in SAFE_ASSOCIATED)

    @property
    def openslide_handle(self):
        """The underlying ``openslide.OpenSlide`` (for ``openslide.deepzoom``); never read label/macro images from it."""
        return self._osr

    def get_thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """As :meth:`Slide.get_thumbnail`, but when the smallest pyramid level is big (> 4 MP to decode) and the
        file carries a ``thumbnail`` associated image of the same aspect ratio (Aperio), that image is used:
        decoding a whole single-level slide for a thumbnail costs more than scoring many tiles."""
        level = self.thumbnail_level(max(max_side, 2048))
        w, h = self.level_dimensions[level]
        if w * h > 4_000_000 and "thumbnail" in self._osr.associated_images:
            try:
                thumb = self._osr.associated_images["thumbnail"].convert("RGB")
            except Exception:  # noqa: BLE001 - fall back to the pyramid
                thumb = None
            W0, H0 = self.dimensions
            if thumb is not None and min(thumb.size) >= 256 and abs(thumb.size[0] / thumb.size[1] - W0 / H0) < 0.005 * W0 / H0:
                scale = min(1.0, max_side / max(thumb.size))
                if scale < 1.0:
                    thumb = thumb.resize((max(1, round(thumb.size[0] * scale)), max(1, round(thumb.size[1] * scale))), Image.BILINEAR)
                rgb = np.asarray(thumb)
                return rgb, W0 / rgb.shape[1]
        return super().get_thumbnail(max_side)

    def _read(self, location, level, size) -> np.ndarray:
        region = self._osr.read_region(location, level, size)  # RGBA, premultiplied → transparent = outside
        arr = np.asarray(region)
        rgb = arr[..., :3].astype(np.uint16)
        alpha = arr[..., 3:4].astype(np.uint16)
        if alpha.min() == 255:
            return np.ascontiguousarray(arr[..., :3])
        # OpenSlide returns premultiplied-free RGBA with alpha 0 outside the scanned area: show glass (white).
        return (rgb * alpha // 255 + (255 - alpha)).astype(np.uint8)

    def close(self) -> None:
        self._osr.close()


class ImageSlide(Slide):
    """A plain image (JPEG, PNG, stripped TIFF) as a one-level slide; pixels decoded once, lazily."""

    kind = "image"

    def __init__(self, path: Path, width: int, height: int, user_mpp: float | None = None):
        super().__init__(path, user_mpp)
        self.level_dimensions = ((int(width), int(height)),)
        self.level_downsamples = (1.0,)
        self._rgb: np.ndarray | None = None
        self._lock = threading.Lock()
        self._props: dict[str, str] = {}
        try:
            with Image.open(path) as img:
                dpi = img.info.get("dpi")
                tags = getattr(img, "tag_v2", None)
                if tags is not None and 282 in tags:
                    unit = {1: "none", 2: "inch", 3: "centimeter"}.get(int(tags.get(296, 2)), "inch")
                    self._props.update({"tiff.XResolution": str(float(tags[282])), "tiff.YResolution": str(float(tags.get(283, tags[282]))), "tiff.ResolutionUnit": unit})
                elif dpi and img.format == "PNG":
                    pass  # PNG pHYs is rarely a real scan resolution; ignore
        except Exception:  # noqa: BLE001 - metadata only
            pass

    @property
    def properties(self) -> dict[str, str]:
        return self._props

    def _pixels(self) -> np.ndarray:
        with self._lock:
            if self._rgb is None:
                from engine.imageio import read_image

                limit = max(get_settings().max_pixels, self.dimensions[0] * self.dimensions[1])
                self._rgb = read_image(self.path, max_pixels=limit)
            return self._rgb

    def _read(self, location, level, size) -> np.ndarray:
        rgb = self._pixels()
        x, y = location
        w, h = size
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = rgb[y0:y1, x0:x1]
        return out


# ---------------------------------------------------------------------------------- factory

def open_slide(path: str | Path, *, user_mpp: float | None = None, max_image_pixels: int | None = None) -> Slide:
    """Open any slide or plain image; see the module docstring for the errors raised."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptFileError(f"Cannot open '{name}': {exc.strerror or exc}.", "Check the path.", path=str(path)) from exc
    if not path.is_file():
        raise InvalidInputError(f"'{name}' is not a file.", path=str(path))
    if size == 0:
        raise CorruptFileError(f"'{name}' is empty (0 bytes).", path=str(path))

    import openslide

    vendor = None
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - detection failure = not an OpenSlide file
        vendor = None
    if vendor is not None and vendor != "generic-tiff" or (vendor == "generic-tiff" and _tiff_is_tiled(path)):
        try:
            handle = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise UnsupportedFormatError(f"'{name}' is not a slide format OpenSlide reads ({_clean(exc, path)}).", path=str(path)) from exc
        except Exception as exc:  # noqa: BLE001 - OpenSlideError: the file is damaged
            raise CorruptFileError(f"'{name}' looks like a {vendor} slide but cannot be opened ({_clean(exc, path)}).", path=str(path)) from exc
        _check_dimensions(name, handle.level_dimensions)
        slide = OpenSlideSlide(path, handle, user_mpp)
        _probe(slide)
        return slide

    # Plain images: check the header only, so a huge-dimension file is refused before decoding.
    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
    except Exception as exc:  # noqa: BLE001
        if _looks_like_tiff(path):
            raise CorruptFileError(f"'{name}' is a TIFF that cannot be opened ({_clean(exc, path)}).", path=str(path)) from exc
        hint = "Whole slides: SVS, NDPI, MRXS, SCN, tiled TIFF, … Plain images: JPEG, PNG, TIFF."
        if path.suffix.lower() in SLIDE_SUFFIXES:
            raise CorruptFileError(f"'{name}' has a slide file name but is not a slide or image OpenSlide or Pillow can read.", hint, path=str(path)) from exc
        raise UnsupportedFormatError(f"'{name}' is not a slide or image HistoDash can read.", hint, path=str(path)) from exc
    if fmt not in ("JPEG", "PNG", "TIFF", "MPO"):
        raise UnsupportedFormatError(f"'{name}' is a {fmt} image; slides must be OpenSlide formats, JPEG, PNG or TIFF.", path=str(path))
    _check_dimensions(name, [(w, h)])
    limit = max_image_pixels if max_image_pixels is not None else max(get_settings().max_pixels, 200_000_000)
    if w * h > limit:
        raise TooLargeError(
            f"'{name}' is a {w}×{h} image that is not tiled ({w * h:,} pixels, over the limit of {limit:,} for untiled images).",
            "Convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid) so it can be read piece by piece.",
            path=str(path),
        )
    slide = ImageSlide(path, w, h, user_mpp)
    _probe(slide)
    return slide


def _clean(exc: BaseException, path: Path) -> str:
    """An exception's text without server paths (messages are shown to users): the file name only."""
    return strip_server_paths(str(exc), known=(path,))


def _check_dimensions(name: str, dims) -> None:
    w, h = (int(v) for v in dims[0])
    if w <= 0 or h <= 0:
        raise CorruptFileError(f"'{name}' has no pixels ({w}×{h}).")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_LEVEL0_PIXELS:
        raise TooLargeError(f"'{name}' claims {w:,}×{h:,} pixels, beyond any real slide; the header is probably damaged.", path=name)


def _probe(slide: Slide) -> None:
    """Decode a small region of the lowest level now, so a cut-short file fails at open, not mid-run."""
    level = slide.level_count - 1
    w, h = slide.level_dimensions[level]
    if slide.kind == "image":
        slide.read_region((0, 0), 0, (min(w, 64), min(h, 64)))
        return
    ds = slide.level_downsamples[level]
    # the centre and the last corner of the lowest level: truncated files lose their tail
    for cx, cy in ((w // 2, h // 2), (max(w - 64, 0), max(h - 64, 0))):
        slide.read_region((int(cx * ds), int(cy * ds)), level, (min(64, w), min(64, h)))


def _looks_like_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_is_tiled(path: Path) -> bool:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            return bool(tf.pages[0].is_tiled)
    except Exception:  # noqa: BLE001
        return True  # let OpenSlide judge


def _float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


_UNIT_UM = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "in": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


def resolve_mpp(properties: dict, path: Path | None = None, user_mpp: float | None = None) -> tuple[tuple[float, float] | None, str | None]:
    """``((mpp_x, mpp_y), source)`` by the fallback chain: OpenSlide → TIFF tags → user → ``(None, None)``."""
    mx, my = _float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))
    if mx and my:
        return (mx, my), "openslide"
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    rx, ry = _float(properties.get("tiff.XResolution")), _float(properties.get("tiff.YResolution"))
    if rx and ry and unit in _UNIT_UM:
        mx, my = _UNIT_UM[unit] / rx, _UNIT_UM[unit] / ry
        if 0.01 <= mx <= 100 and 0.01 <= my <= 100:  # 72 dpi defaults give ~350 µm/px: not a scan
            return (mx, my), "tiff-resolution"
    if user_mpp is not None and _float(user_mpp):
        return (float(user_mpp), float(user_mpp)), "user"
    return None, None


# ---------------------------------------------------------------------------------- library

@dataclass(frozen=True)
class LibraryEntry:
    """One item of a library folder listing; ``relpath`` uses '/' and never leaves the root."""

    name: str
    relpath: str
    is_dir: bool
    bytes: int = 0


@dataclass
class SlideLibrary:
    """A read-only slide folder (``HISTODASH_SLIDES_DIR``) that can be browsed but never left.

    Paths are given relative to the root; ``..``, absolute paths and symlinks that resolve outside
    the root are refused with :class:`InvalidInputError`; symlinks out of the root are not listed.
    """

    root: Path
    suffixes: tuple[str, ...] = field(default=SLIDE_SUFFIXES)

    @classmethod
    def configured(cls) -> SlideLibrary | None:
        root = get_settings().slides_dir
        return cls(root) if root is not None and Path(root).is_dir() else None

    def _root(self) -> Path:
        return Path(self.root).resolve()

    def resolve(self, relpath: str = "") -> Path:
        """The real path of ``relpath`` inside the library (raises if it leaves it or is missing)."""
        rel = (relpath or "").replace("\\", "/").strip()
        if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel) or "\x00" in rel:
            raise InvalidInputError(f"'{relpath}' is not a path inside the slide library.")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise InvalidInputError(f"'{relpath}' leaves the slide library.")
        root = self._root()
        target = root.joinpath(*parts).resolve()
        if target != root and root not in target.parents:
            raise InvalidInputError(f"'{relpath}' points outside the slide library.")
        if not target.exists():
            raise InvalidInputError(f"'{relpath}' does not exist in the slide library.")
        return target

    def list(self, relpath: str = "") -> list[LibraryEntry]:
        """Sub-folders then slide files of one library folder, sorted by name."""
        folder = self.resolve(relpath)
        if not folder.is_dir():
            raise InvalidInputError(f"'{relpath}' is not a folder of the slide library.")
        root = self._root()
        dirs, files = [], []
        for item in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
            if item.name.startswith("."):
                continue
            real = item.resolve()
            if real != root and root not in real.parents:
                continue  # a symlink out of the library: not shown
            rel = item.relative_to(root).as_posix()  # folder is resolved inside root, so item is too
            if real.is_dir():
                dirs.append(LibraryEntry(item.name, rel, True))
            elif real.is_file() and item.suffix.lower() in self.suffixes:
                files.append(LibraryEntry(item.name, rel, False, real.stat().st_size))
        return dirs + files

    def walk(self) -> Iterator[LibraryEntry]:
        """Every slide file of the library (recursively)."""
        stack, seen = [""], set()
        while stack:
            rel = stack.pop()
            real = self.resolve(rel)
            if real in seen:  # a symlink loop inside the library
                continue
            seen.add(real)
            for entry in self.list(rel):
                if entry.is_dir:
                    stack.append(entry.relpath)
                else:
                    yield entry
