"""Deep Zoom tiles (engine.deepzoom): DZI geometry of every level, level-0 pixels equal to read_region, caches."""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from engine import deepzoom
from engine.deepzoom import DeepZoomSlide, FileKey, cached_tile, deepzoom_for
from engine.errors import HistoDashError, InvalidInputError
from engine.slides import open_slide
from tests.conftest import make_pyramid, shared_path

REAL = ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs")


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    # odd sizes (the last tile of a row is partial at every level) and noise (no two tiles alike)
    return make_pyramid(tmp_path_factory.mktemp("dz") / "pyr.tif", width=3001, height=2047, levels=3, noise=12,
                        rects=[((600, 400, 2400, 1700), (180, 60, 140))])


@pytest.fixture(autouse=True)
def _fresh_caches():
    deepzoom.clear_caches()
    yield
    deepzoom.clear_caches()


def expected_levels(w: int, h: int) -> list[tuple[int, int]]:
    """Deep Zoom levels from the spec: halve (rounding up) until 1 × 1; level 0 is the 1 × 1 one."""
    dims = [(w, h)]
    while dims[-1] != (1, 1):
        dims.append((max(1, math.ceil(dims[-1][0] / 2)), max(1, math.ceil(dims[-1][1] / 2))))
    return dims[::-1]


def expected_tile_side(dim: int, index: int, count: int, size: int = 254, overlap: int = 1) -> int:
    return min(size, dim - size * index) + (overlap if index > 0 else 0) + (overlap if index < count - 1 else 0)


def check_geometry(dz: DeepZoomSlide, w: int, h: int) -> None:
    root = ET.fromstring(dz.dzi())
    assert root.tag.endswith("Image")
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpeg")
    size = root[0]
    assert (int(size.get("Width")), int(size.get("Height"))) == (w, h)
    levels = expected_levels(w, h)
    assert dz.level_count == len(levels)
    assert list(dz.level_dimensions) == levels
    for level, (lw, lh) in enumerate(levels):
        cols, rows = math.ceil(lw / 254), math.ceil(lh / 254)
        assert dz.level_tiles[level] == (cols, rows), level
        for c, r in {(0, 0), (cols - 1, 0), (0, rows - 1), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            img = dz.tile_image(level, c, r)
            assert img.mode == "RGB"
            assert img.size == (expected_tile_side(lw, c, cols), expected_tile_side(lh, r, rows)), (level, c, r)


def test_geometry_of_every_level_of_a_generated_pyramid(pyramid):
    dz = DeepZoomSlide(pyramid)
    check_geometry(dz, 3001, 2047)
    # the deepest Deep Zoom level is level 0 of the slide; lower ones read the coarsest slide level that is
    # still at least as fine as they are (here level 1's downsample is 3001/1500 > 2, so 2× reads level 0)
    assert dz.read_args(dz.level_count - 1, 1, 1) == ((253, 253), 0, (256, 256))
    with open_slide(pyramid) as slide:
        ds = slide.level_downsamples
    for k in range(dz.level_count):
        want = 2 ** (dz.level_count - 1 - k)
        level = dz.read_args(k, 0, 0)[1]
        assert ds[level] <= want and (level == len(ds) - 1 or ds[level + 1] > want), k
    assert dz.read_args(dz.level_count - 3, 0, 0)[1] == 1 and dz.read_args(0, 0, 0)[1] == 2


@pytest.mark.parametrize("name", REAL)
def test_geometry_of_every_level_of_the_real_slides(name):
    path = shared_path("wsi", name)
    with open_slide(path) as slide:
        w, h = slide.dimensions
    check_geometry(DeepZoomSlide(path), w, h)


def level0_tiles_equal_read_region(path, addresses) -> None:
    dz = DeepZoomSlide(path)
    deepest = dz.level_count - 1
    with open_slide(path) as slide:
        for c, r in addresses:
            (x, y), level, size = dz.read_args(deepest, c, r)
            assert level == 0
            # independent of the generator's own arithmetic: tile c starts at 254 c minus the 1 px overlap
            assert (x, y) == (max(0, 254 * c - 1), max(0, 254 * r - 1))
            tile = np.asarray(dz.tile_image(deepest, c, r))
            ref = slide.read_region((x, y), 0, (tile.shape[1], tile.shape[0]))
            np.testing.assert_array_equal(tile, ref)
            # and through JPEG (what the browser gets): close to the same pixels
            jpeg = np.asarray(Image.open(io.BytesIO(dz.tile(deepest, c, r))).convert("RGB")).astype(int)
            assert jpeg.shape == ref.shape
            assert np.abs(jpeg - ref.astype(int)).mean() < 6


def test_level0_tile_pixels_equal_read_region_generated(pyramid):
    level0_tiles_equal_read_region(pyramid, [(0, 0), (3, 2), (11, 8), (5, 4)])


@pytest.mark.parametrize("name", REAL)
def test_level0_tile_pixels_equal_read_region_real(name):
    path = shared_path("wsi", name)
    dz = DeepZoomSlide(path)
    cols, rows = dz.level_tiles[-1]
    level0_tiles_equal_read_region(path, [(0, 0), (cols // 2, rows // 2), (cols - 1, rows - 1), (1, rows - 2)])


def test_plain_image_goes_through_the_same_path(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (700, 530, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "field.png")
    dz = DeepZoomSlide(tmp_path / "field.png")
    check_geometry(dz, 530, 700)
    np.testing.assert_array_equal(np.asarray(dz.tile_image(dz.level_count - 1, 1, 2)), rgb[507:700, 253:509])


def test_bad_addresses_and_files_are_refused(pyramid, tmp_path):
    dz = DeepZoomSlide(pyramid)
    deepest = dz.level_count - 1
    cols, rows = dz.level_tiles[deepest]
    for level, c, r in ((deepest + 1, 0, 0), (-1, 0, 0), (deepest, cols, 0), (deepest, 0, rows), (deepest, -1, 0)):
        with pytest.raises(InvalidInputError):
            dz.tile(level, c, r)
    (tmp_path / "broken.svs").write_text("not a slide")
    with pytest.raises(HistoDashError):
        DeepZoomSlide(tmp_path / "broken.svs")


def test_only_the_main_image_is_reachable():
    path = shared_path("wsi", "CMU-1-Small-Region.svs")  # carries label and macro images
    dz = DeepZoomSlide(path)
    public = {n for n in dir(dz) if not n.startswith("_")}
    assert not {n for n in public if "assoc" in n or "label" in n or "macro" in n}
    # the smallest levels are downsampled main image, not the label: 1 × 1 at level 0, white-ish glass + tissue
    assert dz.tile_image(0, 0, 0).size == (1, 1)


def test_tile_cache_is_bounded_by_bytes_and_follows_file_changes(pyramid, tmp_path, monkeypatch):
    monkeypatch.setattr(deepzoom, "_TILES", deepzoom._LRU(max_bytes=60_000))
    dz = deepzoom_for(pyramid)
    deepest = dz.level_count - 1
    cols, rows = dz.level_tiles[deepest]
    sizes = []
    for r in range(rows):
        for c in range(cols):
            sizes.append(len(cached_tile(pyramid, deepest, c, r)))
            assert deepzoom._TILES.nbytes <= 60_000
    assert sum(sizes) > 60_000 and 0 < len(deepzoom._TILES) < cols * rows
    # warm hit: the same bytes, no new decode
    again = cached_tile(pyramid, deepest, cols - 1, rows - 1)
    assert deepzoom._TILES.hits >= 1 and len(again) == sizes[-1]
    # a replaced file has a new identity: never served from the old entries
    copy = tmp_path / "copy.tif"
    copy.write_bytes(pyramid.read_bytes())
    first = cached_tile(copy, deepest, 2, 2)
    make_pyramid(tmp_path / "other.tif", width=3001, height=2047, levels=3, rects=[((0, 0, 3001, 2047), (20, 200, 20))])
    os.replace(tmp_path / "other.tif", copy)
    assert FileKey.of(copy) != FileKey.of(pyramid)
    second = cached_tile(copy, deepest, 2, 2)
    assert first != second
    green = np.asarray(Image.open(io.BytesIO(second)).convert("RGB")).reshape(-1, 3).mean(0)
    assert green[1] > 150 and green[0] < 60


def test_generator_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(deepzoom, "_SLIDES", deepzoom._LRU(max_items=2))
    paths = []
    for i in range(4):
        p = tmp_path / f"s{i}.png"
        Image.fromarray(np.full((300, 300, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
        deepzoom_for(p)
    assert len(deepzoom._SLIDES) == 2
    assert deepzoom_for(paths[-1]) is deepzoom_for(paths[-1])
