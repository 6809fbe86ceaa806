"""Pixels for people: colour tables, colouring, blending, normalised blur and PNG encoding.

>>> from engine.render import colorize, blend, png_bytes
>>> coloured = colorize(saliency, "viridis")                 # (H, W) in [0, 1] → (H, W, 3) uint8
>>> png = png_bytes(blend(tile, coloured, 0.45))              # 0.55·tile + 0.45·colour

One source of colour: every colour map is a Matplotlib colour map sampled into a ``(256, 3) uint8``
lookup table (:func:`colour_lut`), so a heatmap PNG, the interactive heatmap (:func:`plotly_colorscale`)
and a Grad-CAM overlay of the same values have the same colours. Values in [0, 1] map to entry
``round(255 · v)``.

:func:`normalized_blur` is the Gaussian blur of a partly covered map: blurred values divided by the
blurred coverage, so the edge of the covered area keeps its level and uncovered pixels stay uncovered.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from engine.errors import InvalidInputError

#: colour maps offered by the pages and the CLI (any Matplotlib colour map name works).
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "cividis", "turbo", "jet", "RdBu_r", "gray")


@functools.lru_cache(maxsize=32)
def _lut(name: str) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as exc:
        raise InvalidInputError(f"Unknown colour map '{name}'.", f"Use one of: {', '.join(COLORMAPS)}.") from exc
    lut = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def colour_lut(name: str = "viridis") -> np.ndarray:
    """``(256, 3) uint8`` lookup table of the Matplotlib colour map ``name`` (read-only; computed once)."""
    return _lut(str(name))


def plotly_colorscale(name: str = "viridis") -> list[list]:
    """The same colour table as a plotly ``colorscale`` (``[[position, "rgb(r, g, b)"], …]``, 256 stops)."""
    lut = colour_lut(name)
    return [[i / 255.0, f"rgb({r},{g},{b})"] for i, (r, g, b) in enumerate(lut.tolist())]


def lut_index(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → ``uint8`` indices into a colour table (``round(255 · v)``; NaN → 0, out of range clipped)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)


def colorize(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """A map of values in [0, 1] → ``(..., 3) uint8`` RGB through the colour map ``cmap``."""
    return colour_lut(cmap)[lut_index(values)]


def blend(base: np.ndarray, colour: np.ndarray, alpha) -> np.ndarray:
    """``(1 − alpha)·base + alpha·colour`` as ``uint8`` (``alpha``: a number in [0, 1] or an ``(H, W)`` map of them)."""
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 2:
        alpha = alpha[..., None]
    if alpha.size and not 0.0 <= float(alpha.min()) <= float(alpha.max()) <= 1.0:
        bad = float(alpha.min()) if float(alpha.min()) < 0.0 else float(alpha.max())
        raise InvalidInputError(f"Opacity must be between 0 and 1, not {bad:g}.")
    base = np.asarray(base)[..., :3].astype(np.float32)
    out = base * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalized_blur(values: np.ndarray, covered: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` in pixels of ``values``) of a partly covered map, normalised by the blurred coverage.

    ``values`` may hold NaN where not ``covered``; the result is NaN outside ``covered`` and a weighted
    mean of nearby covered values inside it (a constant map stays constant, up to its edge).
    """
    covered = np.asarray(covered, dtype=bool)
    values = np.asarray(values, dtype=np.float64)
    if not sigma or sigma <= 0 or not covered.any():
        return np.where(covered, values, np.nan)
    from scipy.ndimage import gaussian_filter

    num = gaussian_filter(np.where(covered, np.nan_to_num(values), 0.0), sigma)
    den = gaussian_filter(covered.astype(np.float64), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(covered, num / np.maximum(den, 1e-9), np.nan)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (or grey) ``uint8`` array as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()
