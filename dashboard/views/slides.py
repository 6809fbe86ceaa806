"""Slide heatmap: open a whole slide (upload or library), check its tissue, score it as a background job, explore the heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import sidebar
from dashboard.common import disclaimer, guarded, session_id, show_error
from engine.errors import HistoDashError
from engine.heatmap import DEFAULT_THRESHOLD, MODES, HeatmapResult, HeatmapRun, TileGrid, heatmap_figure, png_bytes, render_overlay
from engine.slides import SlideLibrary, open_slide
from engine.tissue import DEFAULT_MIN_TISSUE, TissueMasker
from engine.uploads import resolve_slide_id, save_upload, uploads_dir

PAGES = Path(__file__).resolve().parent
SID = session_id()
QP = st.query_params

st.title("Slide heatmap")
card = sidebar.selected_card()

# ----------------------------------------------------------------------------- source
source = st.radio("Source", ["Upload", "Slide library"], horizontal=True, key="slide_source")
if source == "Upload":
    limit = st.get_option("server.maxUploadSize")
    upload = st.file_uploader(f"Whole-slide image (SVS, NDPI, MRXS, SCN, tiled TIFF, …, or a plain image) — up to {limit:,} MB", key="slide_upload")
    if upload is not None and st.session_state.get("slide_upload_done") != upload.file_id:
        st.session_state["slide_upload_done"] = upload.file_id
        try:
            path = save_upload(upload, upload.name, SID)
            QP["slide"] = f"up:{path.name}"
            st.success(f"Saved '{upload.name}' ({path.stat().st_size / 1e6:.1f} MB).")
        except Exception as err:  # noqa: BLE001 - message; the slide shown before stays
            show_error(err, context=f"Upload of '{upload.name}'")
    folder = uploads_dir(SID)
    mine = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if mine:
        current = QP.get("slide", "")
        pick = st.selectbox("This session's slides", mine, index=mine.index(current[3:]) if current.startswith("up:") and current[3:] in mine else len(mine) - 1)
        if st.button("Open", key="open_upload"):
            QP["slide"] = f"up:{pick}"
else:
    library = SlideLibrary.configured()
    if library is None:
        st.info("No slide library is configured: set HISTODASH_SLIDES_DIR to a (read-only) slide folder on the server.")
    else:
        with guarded("Slide library"):
            here = st.session_state.get("lib_dir", "")
            entries = library.list(here)
            st.caption(f"Library folder: /{here}")
            if here and st.button("⬆ Up one folder"):
                st.session_state["lib_dir"] = here.rsplit("/", 1)[0] if "/" in here else ""
                st.rerun()
            dirs = [e for e in entries if e.is_dir]
            files = [e for e in entries if not e.is_dir]
            c1, c2 = st.columns(2)
            if dirs:
                sub = c1.selectbox("Folders", [e.relpath for e in dirs], format_func=lambda r: r.rsplit("/", 1)[-1] + "/")
                if c1.button("Enter folder"):
                    st.session_state["lib_dir"] = sub
                    st.rerun()
            if files:
                pick = c2.selectbox("Slides", [e.relpath for e in files], format_func=lambda r: r.rsplit("/", 1)[-1], key="lib_pick")
                if c2.button("Open slide", type="primary"):
                    QP["slide"] = f"lib:{pick}"
            elif not dirs:
                st.info("No slides in this folder.")

try:
    from engine.jobs import get_runner

    runner = get_runner()
except ImportError:  # the jobs module is part of the foundation; without it nothing runs in the background
    runner = None


def job_record():
    """The job named in the URL (its id is the capability: a refreshed browser re-attaches with it)."""
    job_id = QP.get("job")
    if not job_id or runner is None:
        return None
    try:
        return runner.get(job_id)
    except HistoDashError:
        del QP["job"]
        return None


attached = job_record()
slide_id = QP.get("slide")
if not slide_id and attached is not None:
    slide_id = attached.params.get("slide_id")
if attached is not None and attached.params.get("slide_id") == slide_id and "hm_level" not in st.session_state:
    # re-attached after a refresh: show the settings the job ran with
    st.session_state["hm_level"] = int(attached.params.get("level") or 0)
    st.session_state["hm_tile_px"] = int(attached.params.get("tile_px") or 0) or None
    st.session_state["hm_stride"] = float(attached.params.get("stride_fraction") or 1.0)
    st.session_state["hm_min_tissue"] = float(attached.params.get("min_tissue", DEFAULT_MIN_TISSUE))
    if st.session_state["hm_tile_px"] is None:
        del st.session_state["hm_tile_px"]
    else:
        st.session_state["hm_tile_px_set"] = True
if not slide_id:
    st.info("Upload a slide or pick one from the library.")
    disclaimer()
    st.stop()


@st.cache_data(max_entries=8, show_spinner="Reading slide…")
def slide_overview(path: str, _mtime: int, user_mpp: float | None):
    with open_slide(path, user_mpp=user_mpp) as slide:
        thumb, _ = slide.get_thumbnail(1024)
        info = slide.info
    masker = TissueMasker()
    mask = masker.thumbnail_mask(thumb, info.dimensions[0] / thumb.shape[1], info.dimensions[1] / thumb.shape[0])
    return thumb, info, mask


try:
    try:
        slide_path = resolve_slide_id(slide_id, session=SID)
    except HistoDashError:
        # after a browser refresh the session (and its upload folder) is new: the job knows the file
        if attached is None or attached.params.get("slide_id") != slide_id:
            raise
        slide_path = Path(attached.params["slide_path"])
    mpp_key = f"user_mpp::{slide_id}"
    user_mpp = st.session_state.get(mpp_key) or None
    thumb, info, mask = slide_overview(str(slide_path), slide_path.stat().st_mtime_ns, user_mpp)
except HistoDashError as err:
    show_error(err, context="Slide")
    disclaimer()
    st.stop()

# ----------------------------------------------------------------------------- overview
st.subheader(info.name)
left, right = st.columns([2, 3])
with left:
    rows = {
        "Vendor": info.vendor or info.format, "Dimensions (level 0)": f"{info.dimensions[0]:,} × {info.dimensions[1]:,}",
        "Levels": info.level_count, "Downsamples": ", ".join(f"{d:.3g}" for d in info.level_downsamples),
        "Microns per pixel": f"{info.mpp[0]:.4g} × {info.mpp[1]:.4g} ({info.mpp_source})" if info.mpp else "unknown",
        "Objective power": f"{info.objective_power:g}×" if info.objective_power else "unknown", "File size": f"{info.file_bytes / 1e6:.1f} MB",
    }
    st.table({"": list(rows), "value": [str(v) for v in rows.values()]})
    if info.mpp is None or info.mpp_source == "user":
        st.number_input("Microns per pixel at level 0 (the slide does not say)", min_value=0.0, max_value=100.0, step=0.01, format="%.4f", key=mpp_key,
                        help="Used to tile at the model's resolution. Leave 0 to tile by level instead.")

if card is None:
    st.error("No model is registered, so nothing can be scored.")
    st.stop()

if st.session_state.get("hm_tile_card") != card.id:  # tile size follows the model until the user changes it
    st.session_state["hm_tile_card"] = card.id
    if not st.session_state.pop("hm_tile_px_set", False):
        st.session_state["hm_tile_px"] = int(card.input_px)
if st.session_state.get("hm_level", 0) >= info.level_count:
    st.session_state["hm_level"] = 0
st.session_state.setdefault("hm_stride", 1.0)
st.session_state.setdefault("hm_min_tissue", DEFAULT_MIN_TISSUE)
with right:
    c1, c2, c3 = st.columns(3)
    by_mpp = bool(card.mpp and info.mpp)
    level = c1.selectbox("Level", list(range(info.level_count)), disabled=by_mpp, key="hm_level", help="Tiles are read at this level when µm/px are unknown (model card or slide).")
    tile_px = c2.number_input("Tile (px at level)", 16, 4096, disabled=by_mpp, key="hm_tile_px")
    stride = c3.select_slider("Stride (× tile)", [0.25, 0.5, 0.75, 1.0], key="hm_stride", help="Below 1: overlapping tiles.")
    min_tissue = st.slider("Minimum tissue fraction per tile", 0.0, 1.0, step=0.05, key="hm_min_tissue")
    try:
        with open_slide(slide_path, user_mpp=user_mpp) as slide:
            grid = TileGrid.for_slide(slide, card, level=level, tile_px=int(tile_px), stride_fraction=stride)
            x, y, frac = HeatmapRun(None, min_tissue=min_tissue).select_tiles(slide, grid, mask)
    except HistoDashError as err:
        show_error(err, context="Tiling")
        st.stop()
    how = f"at {card.mpp} µm/px (level {grid.level})" if grid.target_mpp else f"at level {grid.level}"
    st.caption(f"{len(x):,} tissue tiles of {grid.n_tiles:,} ({grid.tile0} level-0 px each, {how}); tissue covers {mask.tissue_fraction:.0%} of the slide.")
    from PIL import Image, ImageDraw

    preview = thumb.copy()
    preview[mask.mask] = (preview[mask.mask] * 0.55 + np.array([0, 160, 0]) * 0.45).astype(np.uint8)
    img = Image.fromarray(preview)
    draw = ImageDraw.Draw(img)
    sx, sy = info.dimensions[0] / thumb.shape[1], info.dimensions[1] / thumb.shape[0]
    if len(x) <= 20000:
        for xi, yi in zip(x, y):
            draw.rectangle([xi / sx, yi / sy, (xi + grid.tile0) / sx, (yi + grid.tile0) / sy], outline=(30, 30, 200))
    st.image(img, caption="Tissue mask (green) and the tiles that will be scored (blue)", width="stretch")

if not len(x):
    st.warning("No tile has enough tissue: lower the minimum tissue fraction, or check that this slide holds tissue.")

# ----------------------------------------------------------------------------- job
params = {
    "slide_path": str(slide_path), "slide_id": slide_id, "model_id": card.id, "level": int(level), "tile_px": int(tile_px),
    "stride_fraction": float(stride), "min_tissue": float(min_tissue), "user_mpp": user_mpp, "batch_size": 32,
}
if runner is None:
    st.error("Background jobs are not available on this server.")
    st.stop()

busy = attached is not None and attached.active
if st.button("Compute heatmap", type="primary", disabled=not len(x) or busy, help="Runs in the background; the page stays usable." if not busy else "A heatmap job is running."):
    with guarded("Starting the heatmap"):
        QP["job"] = runner.submit("heatmap", params, owner=SID)
        QP["slide"] = slide_id


@st.fragment(run_every=1.5)
def job_panel():
    rec = job_record()
    if rec is None:
        return
    p = rec.progress or {}
    if rec.active:
        eta = p.get("eta_s")
        text = f"{rec.state}: {p.get('done', 0):,}/{p.get('total', 0):,} tiles" + (f" · about {eta:.0f} s left" if eta is not None else "") + (f" · {p['message']}" if p.get("message") else "")
        st.progress(rec.fraction, text=text)
        if st.button("Cancel", key="cancel_job"):
            runner.cancel(rec.id)
        st.session_state["job_was_active"] = rec.id
    else:
        if st.session_state.get("job_was_active") == rec.id:
            st.session_state["job_was_active"] = None
            st.rerun()  # redraw the whole page with the result
        if rec.state == "failed":
            st.error(f"The heatmap job failed: {rec.error}")
        elif rec.state == "cancelled":
            st.warning("The heatmap job was cancelled. Finished tiles are cached: computing again resumes from them.")


job_panel()
rec = job_record()
if rec is None or rec.state != "succeeded" or not rec.result:
    disclaimer()
    st.stop()

# ----------------------------------------------------------------------------- result
try:
    out_dir = Path(rec.result["out_dir"])
    result = HeatmapResult.load(out_dir)
except Exception as err:  # noqa: BLE001
    show_error(err, context="Loading the heatmap")
    st.stop()
if result.slide_hash and rec.params.get("slide_id") != slide_id:
    st.info(f"This heatmap is of '{result.slide_name}', not of the slide opened above.")
st.subheader("Heatmap")
c1, c2, c3, c4, c5, c6 = st.columns(6)
mode = c1.selectbox("Mode", MODES, key="hm_mode", help="raw scores · percentile ranks · 0/1 at the threshold · only scores ≤ 0.3 or ≥ 0.7")
cmap = c2.selectbox("Colour map", ["viridis", "plasma", "inferno", "magma", "cividis", "RdBu_r", "jet"])
opacity = c3.slider("Opacity", 0.0, 1.0, 0.6, 0.05)
threshold = c4.slider("Threshold", 0.0, 1.0, DEFAULT_THRESHOLD, 0.01)
blur = c5.number_input("Blur σ (level-0 px)", 0.0, 10000.0, 0.0, 50.0)
blank = c6.toggle("Blank canvas", key="hm_blank")
base = None if blank else thumb
fig = heatmap_figure(result, base, mode=mode, colormap=cmap, opacity=opacity, blur_sigma=blur, threshold=threshold)
event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="heatmap_chart", config={"scrollZoom": True})

summary = result.summary(threshold)
m = st.columns(5)
m[0].metric("Tissue tiles", f"{summary['n_tiles']:,}")
m[1].metric("Mean score", f"{summary['mean_score']:.3f}" if summary["mean_score"] is not None else "-")
m[2].metric(f"Tiles ≥ {threshold:.2f}", f"{summary['fraction_over_threshold']:.1%}" if summary["fraction_over_threshold"] is not None else "-")
m[3].metric(f"Top-{summary['top_k']} mean", f"{summary['top_k_mean']:.3f}" if summary["top_k_mean"] is not None else "-")
m[4].metric("From cache", f"{int(result.cached.sum()):,}/{result.n_tiles:,}")

import plotly.express as px  # noqa: E402

frame = result.to_frame()
st.plotly_chart(px.histogram(frame, x="score", nbins=40, range_x=[0, 1], title="Tile scores").add_vline(x=threshold, line_dash="dash"), key="histogram")

# tile view: a clicked tile, or one chosen from the most positive tiles
top = result.top_k(12)
points = (event.selection.points if event and getattr(event, "selection", None) else []) or []
chosen = None
for pt in points:
    cd = pt.get("customdata")
    if cd and not np.isnan(cd[2]):
        chosen = (int(cd[0]), int(cd[1]))
options = [(int(r.x), int(r.y)) for r in top.itertuples()]
if chosen is None and options:
    chosen = st.selectbox("Tile", options, format_func=lambda t: f"x {t[0]}, y {t[1]} · score {float(frame.loc[(frame.x == t[0]) & (frame.y == t[1]), 'score'].iloc[0]):.3f}")


def read_tile(xy, size):
    with open_slide(slide_path) as slide:
        return slide.read_region(xy, 0, (size, size))


size = result.grid.tile0
if chosen is not None:
    row = frame[(frame.x == chosen[0]) & (frame.y == chosen[1])]
    st.subheader(f"Tile at x {chosen[0]}, y {chosen[1]} (level 0)")
    a, b = st.columns([1, 1])
    with guarded("Tile view"):
        a.image(read_tile(chosen, min(size, 2048)), caption=f"{size}×{size} level-0 px", width="stretch")
    if len(row):
        r = row.iloc[0]
        b.metric(card.score_name if card.id == result.model_id else "score", f"{r.score:.3f}")
        b.json({c: round(float(r[c]), 4) for c in frame.columns if c.startswith("p_")})
    if (PAGES / "gradcam.py").exists():
        b.page_link("views/gradcam.py", label="Open in Grad-CAM", icon=":material/local_fire_department:",
                    query_params={"slide": slide_id, "x": chosen[0], "y": chosen[1], "size": size})

st.subheader("Most positive tiles")
cols = st.columns(6)
with guarded("Gallery"):
    for i, r in enumerate(top.itertuples()):
        cols[i % 6].image(read_tile((int(r.x), int(r.y)), min(size, 512)), caption=f"{r.score:.3f} · ({r.x}, {r.y})", width="stretch")

st.subheader("Downloads")
anonymise = st.toggle("Anonymise names", key="hm_anonymise", help="Exports name the slide by a stable pseudonym (slide-…) instead of its file name. The same slide always gets the same pseudonym on this server.")
png = png_bytes(render_overlay(result, base, mode=mode, colormap=cmap, opacity=opacity, blur_sigma=blur, threshold=threshold))
files = list(result.export_files(threshold=threshold, anonymise=anonymise, png=png).items())
labels = [("Tiles CSV", "text/csv"), ("Heatmap PNG", "image/png"), ("GeoJSON (QuPath)", "application/geo+json"), ("Summary JSON", "application/json"), ("Run manifest", "application/json")]
d = st.columns(5)
for col, (label, mime), (file_name, data) in zip(d, labels, files, strict=True):
    col.download_button(label, data, file_name, mime, key=f"dl_{label}")
disclaimer()
