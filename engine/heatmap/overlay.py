"""Pictures of a heatmap result: per-tile values by mode, a PNG overlay and an interactive plotly figure.

Modes (the reference study's): ``raw`` scores, ``percentiles`` (ranks in 0–1, relative to the slide:
:data:`engine.heatmap.exporters.PERCENTILE_NOTE`), ``binarise`` (0/1 at the threshold) and ``extreme``
(only scores ≤ 0.3 or ≥ 0.7). Layers (:data:`LAYERS`): the score (with a mode), or one of the result's
per-tile columns — ``uncertainty`` (MC-dropout s.d. of the score, 0–0.5 mapped to 0–1), ``in_domain``
(1 inside the model's domain, 0 outside), ``domain_score`` (relative to the out-of-domain threshold:
0.5 at the threshold). Colours, blending, blur and PNG come from
:mod:`engine.render`, so the PNG, the figure and Grad-CAM overlays share one colour table.
"""

from __future__ import annotations

import numpy as np

from engine import render
from engine.errors import InvalidInputError
from engine.heatmap.result import HeatmapResult

MODES = ("raw", "percentiles", "binarise", "extreme")
DEFAULT_THRESHOLD = 0.6
EXTREME_LOW, EXTREME_HIGH = 0.3, 0.7


def mode_values(scores: np.ndarray, mode: str = "raw", *, threshold: float = DEFAULT_THRESHOLD, low: float = EXTREME_LOW, high: float = EXTREME_HIGH) -> np.ndarray:
    """Per-tile values to colour: raw scores, percentile ranks (0–1), 0/1 at ``threshold``, or extremes only (NaN elsewhere)."""
    s = np.asarray(scores, np.float64)
    if mode == "raw":
        return s.copy()
    if mode == "percentiles":
        if len(s) <= 1:
            return np.ones_like(s)
        from scipy.stats import rankdata

        return (rankdata(s, method="average") - 1) / (len(s) - 1)
    if mode == "binarise":
        return (s >= threshold).astype(np.float64)
    if mode == "extreme":
        return np.where((s <= low) | (s >= high), s, np.nan)
    raise InvalidInputError(f"Unknown heatmap mode '{mode}'. Choose one of {', '.join(MODES)}.")


LAYERS = ("score", "uncertainty", "in_domain", "domain_score")


def layer_values(result: HeatmapResult, layer: str = "score", mode: str = "raw", *, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-tile values in 0–1 of a layer: the score by ``mode``, or a per-tile column scaled as the module docstring says."""
    if layer == "score":
        return mode_values(result.scores, mode, threshold=threshold)
    if layer not in LAYERS:
        raise InvalidInputError(f"Unknown heatmap layer '{layer}'. Choose one of {', '.join(LAYERS)}.")
    values = result.columns.get(layer)
    if values is None:
        raise InvalidInputError(f"This heatmap has no '{layer}' values: its model has no {'out-of-domain detector' if 'domain' in layer else 'dropout'}.")
    v = np.asarray(values, np.float64)
    if layer == "uncertainty":
        return np.clip(v / 0.5, 0.0, 1.0)
    if layer == "domain_score":
        limit = float(result.params.get("domain_threshold") or np.nanmax(v) or 1.0)
        return np.clip(v / (2 * limit), 0.0, 1.0)
    return v


def value_canvas(result: HeatmapResult, values: np.ndarray, scale: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Average ``values`` of overlapping tiles onto a canvas of ``shape`` (h, w) with ``scale`` level-0 px per pixel.

    Returns ``(mean, coverage)``: tile squares are mapped exactly (rounded to the nearest canvas
    pixel edge); NaN values are left out.
    """
    h, w = shape
    ok = ~np.isnan(values)
    x, y, v = result.x[ok], result.y[ok], values[ok]
    size = result.grid.tile0
    c0 = np.clip(np.rint(x / scale).astype(np.int64), 0, w)
    c1 = np.clip(np.rint((x + size) / scale).astype(np.int64), 0, w)
    r0 = np.clip(np.rint(y / scale).astype(np.int64), 0, h)
    r1 = np.clip(np.rint((y + size) / scale).astype(np.int64), 0, h)
    acc = np.zeros((h + 1, w + 1))
    cnt = np.zeros((h + 1, w + 1))
    for arr, val in ((acc, v), (cnt, np.ones_like(v))):
        np.add.at(arr, (r0, c0), val)
        np.add.at(arr, (r0, c1), -val)
        np.add.at(arr, (r1, c0), -val)
        np.add.at(arr, (r1, c1), val)
    acc = acc.cumsum(0).cumsum(1)[:h, :w]
    cnt = np.rint(cnt.cumsum(0).cumsum(1)[:h, :w])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    return mean, cnt > 0


def render_overlay(
    result: HeatmapResult, base: np.ndarray | None = None, *, mode: str = "raw", colormap: str = "viridis", opacity: float = 0.6,
    blur_sigma: float = 0.0, threshold: float = DEFAULT_THRESHOLD, max_side: int = 1024, layer: str = "score",
) -> np.ndarray:
    """The heatmap over ``base`` (an RGB thumbnail of the whole slide) or over a blank canvas when ``base`` is None.

    ``blur_sigma`` is in level-0 pixels (normalised Gaussian: untouched tiles stay transparent).
    Returns RGB ``uint8`` of the base's size (or at most ``max_side`` for a blank canvas).
    """
    W0, H0 = result.grid.width0, result.grid.height0
    if base is None:
        f = min(1.0, max_side / max(W0, H0))
        shape = (max(1, round(H0 * f)), max(1, round(W0 * f)))
        base = np.full((*shape, 3), 255, np.uint8)
    base = np.asarray(base, np.uint8)
    h, w = base.shape[:2]
    scale = (W0 / w + H0 / h) / 2
    values = layer_values(result, layer, mode, threshold=threshold)
    mean, covered = value_canvas(result, values, scale, (h, w))
    if blur_sigma and blur_sigma > 0:
        mean = render.normalized_blur(mean, covered, blur_sigma / scale)
    alpha = np.where(covered & ~np.isnan(mean), float(opacity), 0.0)
    return render.blend(base, render.colorize(mean, colormap), alpha)


def heatmap_figure(
    result: HeatmapResult, thumbnail: np.ndarray | None = None, *, mode: str = "raw", colormap: str = "viridis", opacity: float = 0.6,
    blur_sigma: float = 0.0, threshold: float = DEFAULT_THRESHOLD, layer: str = "score",
):
    """A plotly figure in level-0 coordinates: slide (or blank) image + per-tile heatmap with hover.

    Hover shows the score and the tile's level-0 top-left corner; ``customdata`` holds ``[x, y, score]``
    so a click selection identifies the tile. Colours: :func:`engine.render.plotly_colorscale`.
    """
    import plotly.graph_objects as go

    g = result.grid
    W0, H0 = g.width0, g.height0
    fig = go.Figure()
    if thumbnail is not None:
        th, tw = thumbnail.shape[:2]
        fig.add_trace(go.Image(z=thumbnail, x0=W0 / tw / 2, dx=W0 / tw, y0=H0 / th / 2, dy=H0 / th, hoverinfo="skip", name="slide"))
    values = layer_values(result, layer, mode, threshold=threshold)
    z = result.score_grid(values)
    if blur_sigma and blur_sigma > 0:
        z = render.normalized_blur(z, np.isfinite(z), blur_sigma / g.stride0)
    raw = result.score_grid()
    xs = np.arange(g.n_cols) * g.stride0
    ys = np.arange(g.n_rows) * g.stride0
    xx, yy = np.meshgrid(xs, ys)
    custom = np.stack([xx, yy, raw], axis=-1)
    fig.add_trace(go.Heatmap(
        z=z, x=xs + g.tile0 / 2, y=ys + g.tile0 / 2, colorscale=render.plotly_colorscale(colormap), zmin=0.0, zmax=1.0, opacity=opacity,
        customdata=custom, hoverongaps=False, colorbar={"title": {"text": layer if layer != "score" else ("score" if mode == "raw" else mode)}},
        hovertemplate="score %{customdata[2]:.3f}<br>x %{customdata[0]}, y %{customdata[1]} (level 0)<extra></extra>",
        name="heatmap",
    ))
    fig.update_xaxes(range=[0, W0], showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(range=[H0, 0], showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1)
    fig.update_layout(margin={"l": 0, "r": 0, "t": 10, "b": 0}, plot_bgcolor="white", dragmode="pan", height=640)
    return fig
