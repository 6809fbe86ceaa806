"""Generated whole-slide images with known content, for tests, benchmarks and demos.

>>> from engine.synthetic import rect_painter, write_pyramid_tiff
>>> write_pyramid_tiff("s.tif", 4096, 3072, rect_painter([((1024, 512, 2048, 1536), (170, 60, 140))]))

:func:`write_pyramid_tiff` is the one writer of tiled pyramidal TIFFs that OpenSlide reads as
multi-level slides (the recipe in ../shared/NOTES.md). Tiles come either from a ``painter`` (pixels
of a level-0 region at a downsample) or, for very large slides written fast, from ``encoded``
(already JPEG-encoded tiles, see :func:`encode_tile`). Memory stays bounded by one tile.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: ``painter(x0, y0, w, h, ds) -> (h, w, 3) uint8``: pixels of the region whose top-left is level-0 ``(x0, y0)`` at downsample ``ds``.
Painter = Callable[[int, int, int, int, int], np.ndarray]
#: ``encoded(tx, ty, ds) -> bytes``: the encoded tile whose top-left is ``(tx, ty)`` in pixels of the level at downsample ``ds``.
EncodedTiles = Callable[[int, int, int], bytes]


def write_pyramid_tiff(
    path: str | Path, width: int, height: int, painter: Painter | None = None, *, encoded: EncodedTiles | None = None, levels: int = 3,
    tile: int = 256, mpp: float | None = 0.5, quality: int = 90, compression: str = "jpeg", bigtiff: bool | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide reads as a multi-level slide, tile by tile (bounded memory).

    The recipe OpenSlide needs: one page per level (not SubIFDs), tiled, JPEG with ``photometric='rgb'``,
    every level after the first marked ``subfiletype=1``, resolution in centimetres.
    Level ``k`` is ``width // 2**k`` × ``height // 2**k``.

    Args:
        painter: pixel source; pixel ``(i, j)`` of a region covers level-0 ``[x0 + j*ds, x0 + (j+1)*ds)``.
            Edge tiles are padded with white.
        encoded: instead of ``painter``, a source of ``tile × tile`` tiles already encoded with
            ``compression`` (:func:`encode_tile`); ``quality`` is then the encoder's business.
        levels: pyramid levels; tile: tile side; mpp: level-0 µm/px written as the resolution (None: none).
        bigtiff: BigTIFF (default: when the level-0 pixels exceed 2 GB).
    """
    import tifffile

    if (painter is None) == (encoded is None):
        raise ValueError("give exactly one of painter and encoded")
    path = Path(path)
    big = width * height * 3 > 2**31 if bigtiff is None else bool(bigtiff)
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        for k in range(levels):
            ds = 2**k
            w, h = max(1, width // ds), max(1, height // ds)

            def tiles(w=w, h=h, ds=ds):
                for ty in range(0, h, tile):
                    for tx in range(0, w, tile):
                        if encoded is not None:
                            yield encoded(tx, ty, ds)
                            continue
                        block = np.full((tile, tile, 3), 255, np.uint8)
                        bw, bh = min(tile, w - tx), min(tile, h - ty)
                        block[:bh, :bw] = painter(tx * ds, ty * ds, bw, bh, ds)
                        yield block

            extra = {}
            if mpp:
                extra = {"resolution": (1e4 / (mpp * ds), 1e4 / (mpp * ds)), "resolutionunit": "CENTIMETER"}
            args = {"compressionargs": {"level": quality}} if compression == "jpeg" and encoded is None else {}
            tif.write(
                tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression=compression,
                subfiletype=0 if k == 0 else 1, metadata=None, **args, **extra,
            )
    return path


def encode_tile(rgb: np.ndarray, quality: int = 85) -> bytes:
    """A tile JPEG-encoded exactly as tifffile writes it (taken out of a one-tile TIFF), for ``encoded=``."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, tile=rgb.shape[:2], photometric="rgb", compression="jpeg", compressionargs={"level": quality})
    buf.seek(0)
    with tifffile.TiffFile(buf) as tf:
        page = tf.pages[0]
        off, n = page.dataoffsets[0], page.databytecounts[0]
    return buf.getvalue()[off : off + n]


def rect_painter(rects, background=(245, 245, 245), noise: int = 0, seed: int = 0) -> Painter:
    """A painter for :func:`write_pyramid_tiff`: ``rects`` = [((x0, y0, x1, y1), (r, g, b)), …] in level-0 px.

    A pixel takes a rectangle's colour when its centre lies inside it (so the pattern's location is
    exact at every level).
    """
    rng = np.random.default_rng(seed)
    bg = np.array(background, np.uint8)

    def paint(x0, y0, w, h, ds):
        out = np.empty((h, w, 3), np.uint8)
        out[:] = bg
        cx = x0 + (np.arange(w) + 0.5) * ds
        cy = y0 + (np.arange(h) + 0.5) * ds
        for (a, b, c, d), colour in rects:
            xs = (cx >= a) & (cx < c)
            ys = (cy >= b) & (cy < d)
            if xs.any() and ys.any():
                out[np.ix_(ys, xs)] = colour
        if noise:
            out = np.clip(out.astype(np.int16) + rng.integers(-noise, noise + 1, out.shape), 0, 255).astype(np.uint8)
        return out

    return paint
