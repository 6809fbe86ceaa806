"""engine.synthetic: the one pyramid writer, from a painter or from pre-encoded tiles, read back by OpenSlide."""

from __future__ import annotations

import numpy as np
import pytest

from engine.slides import OpenSlideSlide, open_slide
from engine.synthetic import encode_tile, rect_painter, write_pyramid_tiff


def test_painted_pyramid_is_multilevel_and_exact(tmp_path):
    path = write_pyramid_tiff(tmp_path / "p.tif", 1000, 600, rect_painter([((256, 0, 512, 256), (200, 30, 40))]), levels=2, mpp=0.25)
    with open_slide(path) as slide:
        assert isinstance(slide, OpenSlideSlide) and slide.level_dimensions == ((1000, 600), (500, 300))
        assert slide.info.mpp == pytest.approx((0.25, 0.25))
        inside = slide.read_region((300, 50), 1, (16, 16)).astype(int)
        assert np.abs(inside - (200, 30, 40)).max() < 12 and slide.read_region((700, 400), 0, (8, 8)).min() > 230


def test_pre_encoded_tiles(tmp_path):
    red, blue = encode_tile(np.full((256, 256, 3), (220, 20, 20), np.uint8)), encode_tile(np.full((256, 256, 3), (20, 20, 220), np.uint8))
    calls = []

    def encoded(tx, ty, ds):
        calls.append((tx, ty, ds))
        return red if tx == 0 else blue

    path = write_pyramid_tiff(tmp_path / "e.tif", 512, 256, encoded=encoded, levels=2, bigtiff=True)
    assert calls == [(0, 0, 1), (256, 0, 1), (0, 0, 2)]
    with open_slide(path) as slide:
        assert slide.level_count == 2
        assert np.abs(slide.read_region((10, 10), 0, (8, 8)).astype(int) - (220, 20, 20)).max() < 12
        assert np.abs(slide.read_region((300, 10), 0, (8, 8)).astype(int) - (20, 20, 220)).max() < 12
    with pytest.raises(ValueError, match="exactly one"):
        write_pyramid_tiff(tmp_path / "x.tif", 8, 8)
