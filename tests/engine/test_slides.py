"""Slides: OpenSlide and plain images through one factory, the mpp fallback chain, broken files, library safety."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.errors import CorruptFileError, InvalidInputError, TooLargeError, UnsupportedFormatError
from engine.slides import ImageSlide, OpenSlideSlide, open_slide, resolve_mpp
from engine.uploads import resolve_slide_id
from tests.conftest import COLOUR, shared_path


def test_pyramid_opens_as_multilevel_openslide(pyramid):
    with open_slide(pyramid) as slide:
        assert isinstance(slide, OpenSlideSlide)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((4096, 3072), (2048, 1536), (1024, 768))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        info = slide.info
        assert info.mpp == pytest.approx((0.5, 0.5)) and info.mpp_source == "openslide"
        assert info.vendor == "generic-tiff"
        inside = slide.read_region((1500, 1000), 2, (8, 8))
        outside = slide.read_region((100, 100), 1, (8, 8))
        assert inside.shape == (8, 8, 3) and inside.dtype == np.uint8
        assert np.abs(inside.astype(int) - COLOUR).max() < 20
        assert outside.min() > 230
        assert slide.content_hash().startswith(("quickhash1:", "sha256:"))


def test_plain_image_is_a_one_level_slide(tmp_path):
    rgb = np.zeros((50, 80, 3), np.uint8) + 120
    path = tmp_path / "tile.png"
    Image.fromarray(rgb).save(path)
    with open_slide(path) as slide:
        assert isinstance(slide, ImageSlide)
        assert slide.dimensions == (80, 50) and slide.level_count == 1
        region = slide.read_region((70, 40), 0, (20, 20))  # runs off the image: glass (white) there
        assert (region[:10, :10] == 120).all() and (region[15:, 15:] == 255).all()
        assert slide.info.mpp is None and slide.mpp is None
        slide.set_user_mpp(0.25)
        assert slide.info.mpp == (0.25, 0.25) and slide.info.mpp_source == "user"
        thumb, ds = slide.get_thumbnail(40)
        assert max(thumb.shape[:2]) == 40 and ds == pytest.approx(2.0)


def test_mpp_fallback_chain(tmp_path):
    assert resolve_mpp({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.26"}) == ((0.25, 0.26), "openslide")
    tags = {"tiff.XResolution": "40000", "tiff.YResolution": "40000", "tiff.ResolutionUnit": "centimeter"}
    (mx, my), source = resolve_mpp(tags)
    assert source == "tiff-resolution" and mx == pytest.approx(0.25)
    assert resolve_mpp({"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}) == (None, None)  # screen dpi
    assert resolve_mpp({}, user_mpp=0.5) == ((0.5, 0.5), "user")
    assert resolve_mpp({"openslide.mpp-x": "nan"}) == (None, None)
    # an untiled TIFF with resolution tags: an ImageSlide whose mpp comes from the tags
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert isinstance(slide, ImageSlide)
        assert slide.info.mpp_source == "tiff-resolution" and slide.mpp == pytest.approx(0.5)
    with pytest.raises(InvalidInputError, match="plausible"):
        slide.set_user_mpp(1000)


def test_real_cmu_slide_metadata_hides_label_and_macro():
    path = shared_path("wsi", "CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        info = slide.info
        assert info.dimensions == (2220, 2967) and info.vendor == "aperio"
        assert info.mpp == pytest.approx((0.499, 0.499)) and info.objective_power == 20
        assert info.quickhash and slide.content_hash() == f"quickhash1:{info.quickhash}"
        assert slide.associated_names == ("thumbnail",)  # label and macro carry patient names
        assert "label" not in str(info.to_dict()) and "macro" not in str(info.to_dict())


def test_real_tcga_slide_without_mpp_falls_back_to_user_value():
    path = shared_path("wsi", "TCGA-CR-7395-01A-01-TS1.svs")
    with open_slide(path) as slide:
        assert slide.level_count == 2 and slide.info.mpp is None and slide.info.mpp_source is None
        assert slide.info.objective_power is None
    with open_slide(path, user_mpp=0.5) as slide:
        assert slide.info.mpp == (0.5, 0.5) and slide.info.mpp_source == "user"


# ----------------------------------------------------------------------------- broken slides

def test_zero_byte_slide(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty.svs' is empty"):
        open_slide(path)


def test_text_renamed_svs(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("patient list, not a slide\n" * 20)
    with pytest.raises(CorruptFileError, match="notes.svs' has a slide file name but is not a slide"):
        open_slide(path)
    other = tmp_path / "notes.txt"
    shutil.copy(path, other)
    with pytest.raises(UnsupportedFormatError, match="notes.txt"):
        open_slide(other)


def test_truncated_synthetic_slide(tmp_path, pyramid):
    data = pyramid.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="cut.tif"):
        with open_slide(path) as slide:  # opening or the first read must fail, with the name
            slide.read_region((0, 0), slide.level_count - 1, (64, 64))


def test_truncated_real_svs(tmp_path):
    src = shared_path("wsi", "CMU-1-Small-Region.svs")
    path = tmp_path / "CMU-cut.svs"
    path.write_bytes(src.read_bytes()[:600_000])
    with pytest.raises(CorruptFileError, match="CMU-cut.svs"):
        with open_slide(path) as slide:
            x, y = slide.dimensions
            for yy in range(0, y - 512, 512):
                slide.read_region((x // 2, yy), 0, (512, 512))


def test_huge_dimension_tiff_header(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), photometric="rgb", tile=(256, 256))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(4_000_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(4_000_000_000)
    with pytest.raises((TooLargeError, CorruptFileError), match="huge.tif"):
        open_slide(path)
    stripped = tmp_path / "huge-stripped.tif"
    tifffile.imwrite(stripped, np.full((16, 16, 3), 200, np.uint8), photometric="rgb")
    with tifffile.TiffFile(stripped, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(200_000)
        tif.pages[0].tags["ImageLength"].overwrite(200_000)
    with pytest.raises(TooLargeError, match="huge-stripped.tif.*not tiled"):
        open_slide(stripped)


BOUNDED = r"""
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # the 7 GiB allocation of issue 15 cannot happen here
from engine.deepzoom import DeepZoomSlide
from engine.errors import HistoDashError
from engine.heatmap import TileGrid
from engine.slides import open_slide
from engine.tissue import TissueMasker
out = {}
def attempt(key, fn):
    try:
        out[key] = fn()
    except HistoDashError as err:
        out[key] = f"{type(err).__name__}: {err.message}"
def pyramid():
    with open_slide(sys.argv[2]) as slide:
        thumb, _ = slide.get_thumbnail(1024)
        mask = TissueMasker().thumbnail_mask(thumb, slide.dimensions[0] / thumb.shape[1], slide.dimensions[1] / thumb.shape[0])
        out["tissue"] = mask.tissue_fraction
        attempt("grid", lambda: TileGrid.for_slide(slide, 224, level=0).n_tiles)
    dz = DeepZoomSlide(sys.argv[2])
    return [len(dz.tile(level, 0, 0)) for level in range(dz.level_count)]
attempt("open", lambda: open_slide(sys.argv[1]).dimensions)
attempt("deepzoom", lambda: DeepZoomSlide(sys.argv[1]).level_count)
attempt("pyramid", pyramid)
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_a_bigtiff_declaring_a_million_px_a_side_is_named_with_bounded_memory(tmp_path):
    """Issue 15: a (valid, sparse) BigTIFF of 10⁶ × 10⁶ px crashed with a 7 GiB allocation. One level only: refused at
    open, naming why; with a small stored level under it (a real pyramid): it opens, has no tissue, and the viewer's
    tiles decode within bounds. Run under a 3 GiB address-space limit; the files stay small on disk."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.corpus import sparse_bigtiff

    single = sparse_bigtiff(tmp_path / "million.tif")
    pyramid = sparse_bigtiff(tmp_path / "million-pyramid.tif", levels=3)
    for path in (single, pyramid):
        assert path.stat().st_blocks * 512 < 50 << 20 and path.stat().st_size < 50 << 20
    proc = subprocess.run([sys.executable, "-c", BOUNDED, str(single), str(pyramid)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("open", "deepzoom"):
        assert out[key].startswith("TooLargeError: 'million.tif' is 1,000,000×1,000,000 px and it has no smaller level: no pyramid level small enough"), out
    assert out["tissue"] == 0.0  # absent tiles are glass, not tissue
    assert out["grid"].startswith("TooLargeError") and "over the limit" in out["grid"], out  # 10⁶² px in 224-px tiles: refused, not allocated
    assert isinstance(out["pyramid"], list) and all(n > 0 for n in out["pyramid"]), out  # every Deep Zoom level serves its first tile


def test_regions_outside_the_slide_are_refused(pyramid):
    """Issue 15: a Grad-CAM link for a region outside the slide computed a map of nothing. ``check_region`` wants the
    region wholly inside; ``read_region`` refuses a region with no pixel on the slide (reads across the edge stay)."""
    with open_slide(pyramid) as slide:
        W, H = slide.dimensions
        slide.check_region((W - 224, H - 224), (224, 224))  # the last whole tile
        slide.check_region((0, 0), (W // 4, H // 4), level=2)
        for location, size, level in (((W - 100, 0), (224, 224), 0), ((-1, 0), (64, 64), 0), ((0, H), (64, 64), 0),
                                      ((10**7, 10**7), (224, 224), 0), ((0, 0), (W // 4 + 1, 8), 2)):
            with pytest.raises(InvalidInputError, match=f"is not inside 'synthetic.tif', which is {W:,}×{H:,} px"):
                slide.check_region(location, size, level=level)
        assert slide.read_region((W - 32, H - 32), 0, (64, 64)).shape == (64, 64, 3)  # across the edge: glass beyond it
        for location in ((W, 0), (10**7, 10**7), (-64, 0), (0, -64)):
            with pytest.raises(InvalidInputError, match=f"is outside 'synthetic.tif', which is {W:,}×{H:,} px at level 0"):
                slide.read_region(location, 0, (64, 64))


def test_missing_file(tmp_path):
    with pytest.raises(CorruptFileError, match="nope.svs"):
        open_slide(tmp_path / "nope.svs")


# ----------------------------------------------------------------------------- library

def test_library_lists_slides_only_inside(slide_library):
    top = slide_library.list("")
    assert [(e.name, e.is_dir) for e in top] == [("cases", True), ("inside-link.tif", False)]
    cases = slide_library.list("cases")
    assert [e.name for e in cases] == ["a"]  # no text file, no symlink leading out
    assert sorted(e.relpath for e in slide_library.walk()) == ["cases/a/one.tif", "inside-link.tif"]
    os.symlink(slide_library.root / "cases", slide_library.root / "cases" / "a" / "loop")  # a loop inside: walked once
    assert sorted(e.relpath for e in slide_library.walk()) == ["cases/a/one.tif", "inside-link.tif"]


@pytest.mark.parametrize("bad", ["../secret.svs", "/etc/passwd", "cases/../../secret.svs", "cases/escape.svs", "up/secret.svs", "C:/x.svs", "missing.svs"])
def test_library_refuses_traversal_and_symlinks_out(slide_library, bad):
    with pytest.raises(InvalidInputError):
        slide_library.resolve(bad)
    with pytest.raises(InvalidInputError):
        resolve_slide_id(f"lib:{bad}")
