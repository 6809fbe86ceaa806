"""Tissue detection: Otsu + clean-up on a thumbnail, area-exact tile fractions, empty slides."""

from __future__ import annotations

import numpy as np
import pytest

from engine.slides import open_slide
from engine.tissue import TissueMask, TissueMasker
from tests.conftest import PATTERN, make_pyramid, shared_path


def test_synthetic_slide_mask_matches_pattern(tmp_path):
    path = make_pyramid(tmp_path / "s.tif", noise=4)
    with open_slide(path) as slide:
        mask = TissueMasker(max_side=512).fit(slide).mask_
    assert mask.mask.shape == (384, 512) and mask.scale_x == pytest.approx(8.0)
    x0, y0, x1, y1 = PATTERN
    expected = (x1 - x0) * (y1 - y0) / (4096 * 3072)
    assert mask.tissue_fraction == pytest.approx(expected, abs=0.01)
    assert mask.fraction_in((x0, y0, x1 - x0, y1 - y0)) > 0.98
    assert mask.fraction_in((0, 0, 512, 512)) == 0.0
    # a tile half over the pattern's left edge
    assert mask.fraction_in((x0 - 128, y0 + 256, 256, 256)) == pytest.approx(0.5, abs=0.05)


def test_fractions_are_area_exact():
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    mask = TissueMask(m, 10.0, 10.0, 0.5)
    xs = np.array([0, 10, 5, 15, 30])
    ys = np.array([0, 10, 5, 15, 30])
    got = mask.fractions(xs, ys, 10, 10)
    assert got == pytest.approx([0.0, 1.0, 0.25, 1.0, 0.0])
    assert mask.fraction_in((0, 0, 40, 40)) == pytest.approx(0.25)
    assert mask.fraction_in((35, 35, 20, 20)) == 0.0  # partly off the slide: the outside counts as glass


def test_blank_slide_has_no_tissue(tmp_path):
    path = make_pyramid(tmp_path / "blank.tif", rects=[], noise=6)
    with open_slide(path) as slide:
        mask = TissueMasker(max_side=256).fit(slide).mask_
    assert mask.tissue_fraction == 0.0


def test_uniform_image_has_no_tissue():
    mask = TissueMasker().thumbnail_mask(np.full((64, 64, 3), 250, np.uint8))
    assert not mask.mask.any()


def test_real_slides_have_tissue():
    for name, low, high in (("CMU-1-Small-Region.svs", 0.25, 0.7), ("TCGA-CR-7395-01A-01-TS1.svs", 0.45, 0.8)):
        with open_slide(shared_path("wsi", name)) as slide:
            mask = TissueMasker(max_side=512).fit(slide).mask_
        assert low < mask.tissue_fraction < high, (name, mask.tissue_fraction)


@pytest.mark.parametrize("value", [0, 40, 128, 200, 255])
def test_a_uniform_slide_has_no_tissue(value):
    """Issue 15: uniform black or grey slides were "100 % tissue" and scored."""
    from engine.tissue import TissueMasker

    rng = np.random.default_rng(value)
    flat = np.full((300, 400, 3), value, np.uint8)
    noisy = np.clip(flat.astype(int) + rng.integers(-2, 3, flat.shape), 0, 255).astype(np.uint8)  # JPEG-like noise
    for img in (flat, noisy):
        assert TissueMasker().thumbnail_mask(img).tissue_fraction == 0.0
    with_tissue = noisy.copy()
    with_tissue[100:200, 100:300] = (170, 70, 150)
    if value > 200:  # on glass-coloured background the stained block is found
        assert 0.1 < TissueMasker().thumbnail_mask(with_tissue).tissue_fraction < 0.25


def test_fit_returns_the_masker_with_fitted_attributes(tmp_path):
    path = make_pyramid(tmp_path / "s.tif", noise=4)
    masker = TissueMasker(max_side=256)
    with open_slide(path) as slide:
        fitted = masker.fit(slide)
        direct = masker.slide_mask(slide)
    assert fitted is masker and fitted.threshold_ == fitted.mask_.threshold
    np.testing.assert_array_equal(fitted.mask_.mask, direct.mask)
    assert masker.cache_key() == TissueMasker(max_side=256).cache_key()  # fitting does not change the parameters


@pytest.mark.parametrize("shape, density, radius", [((97, 131), 0.5, 2), ((40, 33), 0.9, 2), ((64, 64), 0.05, 3), ((5, 7), 0.5, 2), ((8, 8), 1.0, 1), ((8, 8), 0.0, 2)])
def test_binary_closing_equals_skimage(shape, density, radius):
    from skimage import morphology

    from engine.tissue import binary_closing

    mask = np.random.default_rng(radius * 100 + shape[0]).random(shape) < density
    expected = morphology.closing(mask, morphology.disk(radius)).astype(bool)
    np.testing.assert_array_equal(binary_closing(mask, radius), expected)
