"""The slide viewer: OpenSeadragon (npm ``openseadragon``, pinned in ``frontend/package.json``) as a Streamlit
custom component (``components.v1`` serving the static ``frontend/`` folder: works offline).

The browser reads Deep Zoom tiles from the dashboard's own tile server (``dashboard/tileserver.py``) and draws
every layer itself — heatmap (from per-tile arrays sent once per page run), tissue mask, tile grid, GeoJSON
annotations, scale bar — so a change of layer, mode, colour map, opacity, threshold, blur or blank canvas is
redrawn in the browser with no Streamlit rerun. The component returns a value only on a user action the page
must answer: ``{"event": "tile", "x", "y", "size", "display", "seq"}`` when a tile is clicked, and
``{"event": "display", "display", "seq"}`` when the user asks for the shown settings in the downloads.

``frontend/node_modules`` is installed by ``make run`` / ``make test`` (``npm ci``); it is never committed.
"""

from __future__ import annotations

from pathlib import Path

FRONTEND = Path(__file__).resolve().parent / "frontend"
OSD_JS = FRONTEND / "node_modules" / "openseadragon" / "build" / "openseadragon" / "openseadragon.min.js"
NAME = "histodash_slide_viewer"
MISSING = ("The slide viewer's browser library (OpenSeadragon) is not installed on this server: start HistoDash with "
           "`make run` (it runs `npm ci` in dashboard/components/viewer/frontend).")

DEFAULT_DISPLAY = {
    "layer": "score", "mode": "raw", "colormap": "viridis", "opacity": 0.6, "threshold": None, "blur": 0.0, "blank": False,
    "show": {"heatmap": True, "mask": False, "grid": False, "annotations": True},
}


def installed() -> bool:
    """Whether ``npm ci`` has put OpenSeadragon into the component's folder."""
    return OSD_JS.is_file()


def display_settings(reported: dict | None, threshold: float) -> dict:
    """The display the page uses for its summary and exports: what the viewer last reported, else the
    defaults with the model card's ``threshold``."""
    out = {**DEFAULT_DISPLAY, "threshold": float(threshold)}
    for k, v in (reported or {}).items():
        if k in out and v is not None:
            out[k] = v
    out["threshold"] = min(1.0, max(0.0, float(out["threshold"])))
    out["opacity"] = min(1.0, max(0.0, float(out["opacity"])))
    out["blur"] = max(0.0, float(out["blur"]))
    return out


def slide_viewer(
    *, slide: dict, tiles: dict | None = None, grid: dict | None = None, mask: dict | None = None,
    annotations: list | None = None, display: dict | None = None, colormaps: dict | None = None,
    key: str = "slide_viewer", height: int = 720,
):
    """Draw the viewer; returns its last event (see the module docstring) or None.

    Args:
        slide: ``{"key", "dzi", "tiles", "width0", "height0", "mpp", "name"}`` (``dzi``/``tiles``: token URLs).
        tiles: :func:`engine.overlay.tiles_payload` of the heatmap of *this* slide, or None.
        grid: :func:`engine.overlay.grid_payload` (tiles to be scored), mask: :func:`engine.overlay.mask_payload`.
        annotations: :func:`engine.overlay.parse_geojson` shapes.
        display: initial display settings (the last ones the viewer reported).
        colormaps: :func:`engine.overlay.colormaps_payload`.
    """
    from streamlit.components.v1 import declare_component

    # declared on every run: registers with whichever runtime runs the script (server, AppTest)
    component = declare_component(NAME, path=str(FRONTEND))
    return component(
        slide=slide, tiles=tiles, grid=grid, mask=mask, annotations=annotations or [], display=display or DEFAULT_DISPLAY,
        colormaps=colormaps or {}, height=int(height), key=key, default=None,
    )
