"""Deep Zoom (DZI) for the slide viewer: the descriptor and JPEG tiles of any slide :mod:`engine.slides` opens.

>>> from engine.deepzoom import deepzoom_for
>>> dz = deepzoom_for("CMU-1-Small-Region.svs")
>>> dz.dzi()                         # the XML descriptor OpenSeadragon reads
>>> jpeg = dz.tile(dz.level_count - 1, 0, 0)   # a level-0 (deepest Deep Zoom level) tile

Tiles come from openslide-python's own :class:`openslide.deepzoom.DeepZoomGenerator` (254 px + 1 px
overlap, the OpenSlide convention). Whole slides go through :func:`engine.slides.open_slide` (so a
damaged or absurd file is refused with the same messages as everywhere else); a plain image is opened
the same way and its pixels wrapped in :class:`openslide.ImageSlide`. ``limit_bounds`` is off: Deep Zoom
image coordinates are the slide's level-0 pixels, the coordinates of heatmaps, tile grids, GeoJSON
annotations and the Grad-CAM page. Only the main image is served: label and macro images (patient names)
have no address here.

Two bounded in-memory caches: open generators (LRU by count, :data:`MAX_SLIDES`) and encoded tiles (LRU by
bytes, :data:`TILE_CACHE_BYTES`), both keyed by the file's identity (path, size, modification time), so a
replaced file is never served from a stale entry.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.errors import InvalidInputError
from engine.slides import open_slide

TILE_SIZE = 254
OVERLAP = 1
FORMAT = "jpeg"
JPEG_QUALITY = 90  # with 4:4:4 chroma: about 4 grey levels from the source pixels on H&E, ~50 KB a tile
MAX_SLIDES = 8
TILE_CACHE_BYTES = 96 * 1024 * 1024


@dataclass(frozen=True)
class FileKey:
    """A file's identity: a changed (re-uploaded, replaced) file gets a new key."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> FileKey:
        st = Path(path).stat()
        return cls(str(Path(path).resolve()), int(st.st_size), int(st.st_mtime_ns))


class DeepZoomSlide:
    """The Deep Zoom pyramid of one slide file.

    Args:
        path: any slide or plain image :func:`engine.slides.open_slide` reads.
        tile_size, overlap: Deep Zoom tile side and overlap (px).
        quality: JPEG quality of the encoded tiles.
    """

    def __init__(self, path: str | Path, *, tile_size: int = TILE_SIZE, overlap: int = OVERLAP, quality: int = JPEG_QUALITY):
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.path = Path(path)
        self.quality = int(quality)
        self._slide = open_slide(self.path)  # the checks and messages of every other page
        if self._slide.kind == "openslide":
            source = self._slide.openslide_handle
            self._lock = None  # OpenSlide reads are thread-safe
        else:
            source = openslide.ImageSlide(Image.fromarray(self._slide.read_level(0)))
            self._lock = threading.Lock()  # one PIL image shared by every request
        self.mpp = self._slide.mpp
        self._gen = DeepZoomGenerator(source, tile_size=tile_size, overlap=overlap, limit_bounds=False)
        self.tile_size, self.overlap = int(tile_size), int(overlap)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return self._gen.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._gen.level_dimensions

    @property
    def level_tiles(self) -> tuple[tuple[int, int], ...]:
        return self._gen.level_tiles

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._gen.level_dimensions[-1]

    def check_address(self, level: int, col: int, row: int) -> None:
        """Raise :class:`InvalidInputError` unless ``(level, col, row)`` names a tile of this pyramid."""
        if not 0 <= int(level) < self.level_count:
            raise InvalidInputError(f"Deep Zoom level {level} does not exist ({self.level_count} levels).")
        cols, rows = self.level_tiles[int(level)]
        if not (0 <= int(col) < cols and 0 <= int(row) < rows):
            raise InvalidInputError(f"Tile ({col}, {row}) does not exist at Deep Zoom level {level} ({cols} × {rows} tiles).")

    def read_args(self, level: int, col: int, row: int) -> tuple[tuple[int, int], int, tuple[int, int]]:
        """``(level-0 location, slide level, size at that level)``: the region a tile is read from."""
        self.check_address(level, col, row)
        return self._gen.get_tile_coordinates(int(level), (int(col), int(row)))

    # -- content -----------------------------------------------------------------------------
    def dzi(self) -> str:
        """The DZI XML descriptor (tile size, overlap, format, level-0 size)."""
        return self._gen.get_dzi(FORMAT)

    def tile_image(self, level: int, col: int, row: int) -> Image.Image:
        """The RGB tile before encoding, exactly the size the DZI geometry gives it.

        (``DeepZoomGenerator.get_tile`` shrinks with ``thumbnail``, which keeps the region's aspect ratio:
        on the smallest levels that can give a tile a pixel narrower than its address says, e.g. 1 × 1
        for a 2 × 1 level. Such tiles are resized to their Deep Zoom size.)
        """
        self.check_address(level, col, row)
        address = (int(col), int(row))
        if self._lock is None:
            img = self._gen.get_tile(int(level), address)
        else:
            with self._lock:
                img = self._gen.get_tile(int(level), address)
        size = self._gen.get_tile_dimensions(int(level), address)
        return img if img.size == size else img.resize(size, Image.LANCZOS)

    def tile(self, level: int, col: int, row: int) -> bytes:
        """The tile as JPEG bytes."""
        buf = io.BytesIO()
        self.tile_image(level, col, row).save(buf, format="JPEG", quality=self.quality, subsampling=0)
        return buf.getvalue()

    def close(self) -> None:
        self._slide.close()


class _LRU:
    """A thread-safe LRU mapping bounded by entry count and/or total bytes."""

    def __init__(self, *, max_items: int | None = None, max_bytes: int | None = None):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._data: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key][0]
            self.misses += 1
            return None

    def put(self, key, value, size: int = 0) -> None:
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            if self.max_bytes is not None and size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._data and ((self.max_items is not None and len(self._data) > self.max_items) or (self.max_bytes is not None and self._bytes > self.max_bytes)):
                _, (_, old) = self._data.popitem(last=False)  # an evicted slide closes when its last reader drops it
                self._bytes -= old

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)


_SLIDES = _LRU(max_items=MAX_SLIDES)
_TILES = _LRU(max_bytes=TILE_CACHE_BYTES)
_OPEN_LOCK = threading.Lock()


def deepzoom_for(path: str | Path, key: FileKey | None = None) -> DeepZoomSlide:
    """The (cached) :class:`DeepZoomSlide` of ``path``; ``key`` defaults to the file's current identity."""
    key = key or FileKey.of(path)
    dz = _SLIDES.get(key)
    if dz is None:
        with _OPEN_LOCK:  # one opening per file, however many tile requests arrive at once
            dz = _SLIDES.get(key)
            if dz is None:
                dz = DeepZoomSlide(path)
                _SLIDES.put(key, dz)
    return dz


def cached_tile(path: str | Path, level: int, col: int, row: int, key: FileKey | None = None) -> bytes:
    """JPEG bytes of one tile, from the byte-bounded tile cache when there."""
    key = key or FileKey.of(path)
    tkey = (key, int(level), int(col), int(row))
    data = _TILES.get(tkey)
    if data is None:
        data = deepzoom_for(path, key).tile(level, col, row)
        _TILES.put(tkey, data, len(data))
    return data


def cached_tile_if_present(key: FileKey, level: int, col: int, row: int) -> bytes | None:
    """The cached JPEG bytes of a tile, or None (never decodes: cheap enough for an event loop)."""
    return _TILES.get((key, int(level), int(col), int(row)))


def cache_stats() -> dict:
    """Entries, bytes, hits and misses of both caches (the bench reports them)."""
    return {
        "slides": len(_SLIDES), "tiles": len(_TILES), "tile_bytes": _TILES.nbytes,
        "tile_hits": _TILES.hits, "tile_misses": _TILES.misses,
    }


def clear_caches() -> None:
    _SLIDES.clear()
    _TILES.clear()
