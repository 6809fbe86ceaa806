"""engine.render: colour tables against published values, blend, the normalised blur against a direct sum, PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine import render
from engine.errors import InvalidInputError


def test_colour_tables_match_published_endpoints():
    # Matplotlib's viridis starts at #440154 and ends at #fde725 (van der Walt & Smith, 2015)
    lut = render.colour_lut("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert tuple(lut[0]) == (0x44, 0x01, 0x54) and tuple(lut[-1]) == (0xFD, 0xE7, 0x25)
    grey = render.colour_lut("gray")
    assert (grey == np.arange(256)[:, None]).all()  # grey i ↦ (i, i, i)
    with pytest.raises(ValueError):
        lut[0, 0] = 1  # shared between callers: read-only
    with pytest.raises(InvalidInputError, match="colour map 'rainbow-unicorn'"):
        render.colour_lut("rainbow-unicorn")


def test_colorize_rounds_values_to_table_entries():
    v = np.array([[0.0, 1.0], [0.5, np.nan]])
    rgb = render.colorize(v, "gray")
    assert rgb[..., 0].tolist() == [[0, 255], [128, 0]]  # round(127.5) = 128; NaN → entry 0
    assert render.colorize(np.array([-1.0, 2.0]), "gray")[:, 0].tolist() == [0, 255]


def test_plotly_colorscale_is_the_same_table():
    scale = render.plotly_colorscale("magma")
    lut = render.colour_lut("magma")
    assert len(scale) == 256 and scale[0][0] == 0.0 and scale[-1][0] == 1.0
    assert scale[100][1] == "rgb({},{},{})".format(*lut[100])


def test_blend():
    base = np.full((2, 2, 3), 100, np.uint8)
    colour = np.full((2, 2, 3), 201, np.uint8)
    assert (render.blend(base, colour, 0.0) == 100).all() and (render.blend(base, colour, 1.0) == 201).all()
    assert (render.blend(base, colour, 0.5) == 150).all()  # 150.5 rounds to even
    alpha = np.array([[0.0, 1.0], [0.25, 0.75]])
    assert render.blend(base, colour, alpha)[..., 0].tolist() == [[100, 201], [125, 176]]
    with pytest.raises(InvalidInputError, match="Opacity"):
        render.blend(base, colour, 1.5)


def test_normalized_blur_against_a_direct_weighted_mean():
    rng = np.random.default_rng(0)
    values = np.full((60, 60), np.nan)
    covered = np.zeros((60, 60), bool)
    covered[20:40, 15:45] = True
    values[covered] = rng.random(covered.sum())
    sigma = 2.0
    out = render.normalized_blur(values, covered, sigma)
    assert np.isnan(out[~covered]).all()
    # the obvious definition: Σ w·v / Σ w over covered pixels, w = Gaussian of the distance (scipy truncates at 4σ)
    r = int(4 * sigma + 0.5)
    for (i, j) in [(20, 15), (30, 30), (39, 44), (25, 40)]:
        num = den = 0.0
        for di in range(-r, r + 1):
            for dj in range(-r, r + 1):
                a, b = i + di, j + dj
                if covered[a, b]:
                    w = np.exp(-(di * di + dj * dj) / (2 * sigma * sigma))
                    num += w * values[a, b]
                    den += w
        assert out[i, j] == pytest.approx(num / den, rel=1e-9)
    const = np.where(covered, 0.3, np.nan)
    np.testing.assert_allclose(render.normalized_blur(const, covered, 5.0)[covered], 0.3)


def test_png_round_trip():
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(render.png_bytes(rgb))))
    np.testing.assert_array_equal(back, rgb)


def test_heatmap_and_gradcam_share_the_colours():
    from engine.gradcam import overlay as gradcam_overlay

    tile = np.full((4, 4, 3), 255, np.uint8)
    saliency = np.full((4, 4), 0.7, np.float32)
    expected = render.colour_lut("plasma")[round(0.7 * 255)]
    assert (gradcam_overlay(tile, saliency, cmap="plasma", opacity=1.0) == expected).all()
