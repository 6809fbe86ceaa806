"""The bundled demo data: OpenSlide's CMU-1-Small-Region slide and tiles cut from it, the first-start defaults."""

from __future__ import annotations

import hashlib

import numpy as np

from engine.config import REPO_ROOT, get_settings
from engine.imageio import read_image

DEMO = REPO_ROOT / "engine" / "demo"
# the sha256 of OpenSlide's test slide as distributed (also in ../shared/data/wsi/SHA256SUMS)
CMU1_SHA256 = "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"


def test_defaults_are_the_bundled_demo_and_a_lab_setting_replaces_them(monkeypatch, tmp_path):
    monkeypatch.delenv("HISTODASH_SLIDES_DIR", raising=False)
    monkeypatch.delenv("HISTODASH_EXAMPLES_DIR", raising=False)
    settings = get_settings()
    assert settings.slides_dir == DEMO / "slides" and settings.examples_dir == DEMO / "tiles"
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(tmp_path / "lab-slides"))
    monkeypatch.setenv("HISTODASH_EXAMPLES_DIR", str(tmp_path / "lab-tiles"))
    settings = get_settings()
    assert settings.slides_dir == tmp_path / "lab-slides" and settings.examples_dir == tmp_path / "lab-tiles"


def test_the_demo_slide_is_the_unaltered_openslide_test_slide_and_small():
    slide = DEMO / "slides" / "CMU-1-Small-Region.svs"
    assert hashlib.sha256(slide.read_bytes()).hexdigest() == CMU1_SHA256
    assert slide.stat().st_size <= 2 * 1024 * 1024
    assert sorted(p.name for p in (DEMO / "slides").iterdir()) == ["CMU-1-Small-Region.svs"]  # nothing else bundled


def test_the_slide_library_lists_and_opens_the_demo_slide(monkeypatch):
    monkeypatch.delenv("HISTODASH_SLIDES_DIR", raising=False)
    from engine.slides import SlideLibrary, open_slide

    library = SlideLibrary.configured()
    assert library is not None and "CMU-1-Small-Region.svs" in [e.name for e in library.list()]
    with open_slide(library.resolve("CMU-1-Small-Region.svs")) as slide:
        rgb = slide.read_region((1024, 768), 0, (64, 64))
    assert rgb.shape[:2] == (64, 64)


def test_the_example_tiles_are_what_the_script_cuts(tmp_path):
    """The committed tiles equal a fresh run of engine/demo/make_tiles.py (pixels, within JPEG codec noise)."""
    from engine.demo.make_tiles import N_TILES, TILE_PX, main, tissue_fraction

    committed = sorted((DEMO / "tiles").glob("*.jpg"))
    assert len(committed) == N_TILES
    assert main(["--out", str(tmp_path)]) == 0
    fresh = sorted(tmp_path.glob("*.jpg"))
    assert [p.name for p in fresh] == [p.name for p in committed]
    for a, b in zip(committed, fresh):
        x, y = read_image(a), read_image(b)
        assert x.shape == (TILE_PX, TILE_PX, 3)
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 1.0
        assert tissue_fraction(x) > 0.5  # stained tissue, not glass
