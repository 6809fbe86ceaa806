"""Slide heatmap: open a whole slide (upload or library) in the slide viewer, score it as a background job, and
explore the heatmap over it — every display change is drawn in the browser; a click opens a tile."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from dashboard import sidebar, tileserver
from dashboard import slidepage as sp
from dashboard.common import disclaimer, guarded, session_id, show_error
from dashboard.components import viewer
from engine import overlay
from engine.errors import HistoDashError
from engine.heatmap import HeatmapRun, TileGrid
from engine.slides import open_slide
from engine.uploads import resolve_slide_id

PAGES = Path(__file__).resolve().parent
SID = session_id()
QP = st.query_params

st.title("Slide heatmap")
card = sidebar.selected_card()
sp.remember_or_restore()
try:
    from engine.jobs import get_runner

    runner = get_runner()
except ImportError:  # the jobs module is part of the foundation; without it nothing runs in the background
    runner = None
sp.pick_source(SID, runner)
attached = sp.job_record(runner)
slide_id = QP.get("slide") or (attached.params.get("slide_id") if attached is not None else None)
sp.restore_job_settings(attached, slide_id)
if not slide_id:
    st.info("Upload a slide or pick one from the library.")
    disclaimer()
    st.stop()

try:
    try:
        slide_path = resolve_slide_id(slide_id, session=SID)
    except HistoDashError:  # after a browser refresh the session (and its upload folder) may be new: the job knows the file
        if attached is None or attached.params.get("slide_id") != slide_id:
            raise
        slide_path = Path(attached.params["slide_path"])
    mpp_key = f"user_mpp::{slide_id}"
    user_mpp = st.session_state.get(mpp_key) or None
    mtime = slide_path.stat().st_mtime_ns
    thumb, info, mask, slide_hash = sp.overview(str(slide_path), mtime, user_mpp)
    token = tileserver.mint(slide_path, SID, "library" if slide_id.startswith("lib:") else "upload")
except HistoDashError as err:
    show_error(err, context="Slide")
    disclaimer()
    st.stop()

# ----------------------------------------------------------------------------- slide and scoring settings
st.subheader(info.name)
mpp_text = f"{info.mpp[0]:.4g} µm/px ({info.mpp_source})" if info.mpp else "µm/px unknown"
st.caption(f"{info.vendor or info.format} · {info.dimensions[0]:,} × {info.dimensions[1]:,} px · {info.level_count} levels "
           f"({', '.join(f'{d:.3g}' for d in info.level_downsamples)}) · {mpp_text} · "
           f"{f'{info.objective_power:g}×' if info.objective_power else 'objective unknown'} · {info.file_bytes / 1e6:.1f} MB")
if info.mpp is None or info.mpp_source == "user":
    st.number_input("Microns per pixel at level 0 (the slide does not say)", min_value=0.0, max_value=100.0, step=0.01, format="%.4f", key=mpp_key,
                    help="Used for the scale bar and to tile at the model's resolution. Leave 0 to tile by level instead.")
if card is None:
    st.error("No model is registered, so nothing can be scored.")
    st.stop()
sp.default_scoring_settings(card, info)
with st.expander("Scoring settings", expanded=attached is None):
    c1, c2, c3, c4 = st.columns(4)
    by_mpp = bool(card.mpp and info.mpp)
    level = c1.selectbox("Level", list(range(info.level_count)), disabled=by_mpp, key="hm_level", help="Tiles are read at this level when µm/px are unknown (model card or slide).")
    tile_px = c2.number_input("Tile (px at level)", 16, 4096, disabled=by_mpp, key="hm_tile_px")
    stride = c3.select_slider("Stride (× tile)", [0.25, 0.5, 0.75, 1.0], key="hm_stride", help="Below 1: overlapping tiles.")
    min_tissue = c4.slider("Minimum tissue fraction per tile", 0.0, 1.0, step=0.05, key="hm_min_tissue")
try:
    with open_slide(slide_path, user_mpp=user_mpp) as slide:
        grid = TileGrid.for_slide(slide, card, level=level, tile_px=int(tile_px), stride_fraction=stride)
        x, y, frac = HeatmapRun(None, min_tissue=min_tissue).select_tiles(slide, grid, mask)
except HistoDashError as err:
    show_error(err, context="Tiling")
    st.stop()
how = f"at {card.mpp} µm/px (level {grid.level})" if grid.target_mpp else f"at level {grid.level}"
st.caption(f"{len(x):,} tissue tiles of {grid.n_tiles:,} ({grid.tile0} level-0 px each, {how}); tissue covers {mask.tissue_fraction:.0%} of the slide.")
if not len(x):
    st.warning("No tile has enough tissue: lower the minimum tissue fraction, or check that this slide holds tissue.")

params = {
    "slide_path": str(slide_path), "slide_id": slide_id, "model_id": card.id, "level": int(level), "tile_px": int(tile_px),
    "stride_fraction": float(stride), "min_tissue": float(min_tissue), "user_mpp": user_mpp, "batch_size": 32,
}
if runner is None:
    st.error("Background jobs are not available on this server.")
    st.stop()
busy = attached is not None and attached.active and attached.params.get("slide_id") == slide_id
if st.button("Compute heatmap", type="primary", disabled=not len(x) or busy, help="Runs in the background; the page stays usable." if not busy else "A heatmap job is running."):
    with guarded("Starting the heatmap"):
        QP["job"] = runner.submit("heatmap", params, owner=SID)
        sp.open_slide_id(slide_id, runner)
        busy = True
sp.job_panel(runner, slide_id, busy)
try:
    result, why_not = sp.result_of(sp.job_record(runner), slide_id, slide_hash)
except Exception as err:  # noqa: BLE001
    result, why_not = None, None
    show_error(err, context="Loading the heatmap")
if why_not:
    st.info(why_not)

# ----------------------------------------------------------------------------- viewer
result_key = f"{QP.get('job')}:{slide_hash}"
notes = st.file_uploader("Annotations (GeoJSON, e.g. a QuPath export)", type=["geojson", "json"], key=f"annotations::{slide_id}")
shapes = []
if notes is not None:
    with guarded("Annotations"):
        shapes = overlay.parse_geojson(notes.getvalue(), name=notes.name)
if not viewer.installed():
    st.error(viewer.MISSING)
    st.stop()
event = viewer.slide_viewer(
    slide={"key": slide_hash + slide_id, "hash": slide_hash, "dzi": tileserver.dzi_url(token), "tiles": tileserver.tiles_url(token),
           "width0": info.dimensions[0], "height0": info.dimensions[1], "mpp": (info.mpp[0] + info.mpp[1]) / 2 if info.mpp else None,
           "threshold": card.threshold},
    tiles=overlay.tiles_payload(result, job_id=QP.get("job"), score_name=card.score_name if card.id == result.model_id else None) if result is not None else None,
    grid=overlay.grid_payload(x, y, grid.tile0),
    mask=overlay.mask_payload(mask), annotations=shapes, colormaps=overlay.colormaps_payload(),
    display=sp.reported_display(result_key) or {**viewer.DEFAULT_DISPLAY, "show": {**viewer.DEFAULT_DISPLAY["show"], "mask": result is None, "grid": result is None}},
    key="viewer-" + hashlib.sha1(f"{slide_id}|{slide_hash}".encode()).hexdigest()[:16],
)
if result is None:
    disclaimer()
    st.stop()

# ----------------------------------------------------------------------------- result
chosen = sp.clicked_tile(event, result, result_key)
display = viewer.display_settings(sp.reported_display(result_key), result.threshold)  # the card's threshold until the viewer reports another
sp.summary(result, display)
sp.tile_view(result, chosen, card, slide_id, str(slide_path), mtime, gradcam=(PAGES / "gradcam.py").exists())
sp.gallery(result, str(slide_path), mtime)
sp.downloads(result, display, thumb)
disclaimer()
