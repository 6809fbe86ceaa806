"""Helpers of the Slide heatmap page (``dashboard/views/slides.py``): where the slide comes from, the state
rules that keep the heatmap shown the one of the slide shown, and small cached reads.

State rules:

* the URL names the slide and the job (``?slide=…&job=…``); a page run that finds neither restores the last
  pair this browser session had (the sidebar's page links drop query parameters);
* opening another slide drops a job of a different slide from the URL;
* a heatmap is drawn only when its job was run on this slide id *and* its content hash is this file's
  (a re-uploaded file of the same name is another slide);
* the viewer's key names the slide version, so a tile clicked on one slide is never read on another;
* a ``?job=`` id is opened only through :func:`engine.jobs.get_visible`: a job on an uploaded slide opens in its
  owner's browser session only (anyone else gets one message and nothing of the job); a finished job of an upload
  brings its own copy of the slide (``result["slide_path"]``), so it still opens after the workspace was swept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from dashboard.common import guarded, show_error
from engine.cohort.pipeline import slide_result as cohort_slide_result
from engine.errors import HistoDashError
from engine.heatmap import HeatmapResult, png_bytes, render_overlay
from engine.jobs import get_visible
from engine.slides import SlideLibrary, open_slide
from engine.tissue import DEFAULT_MIN_TISSUE, TissueMasker
from engine.uploads import save_upload, uploads_dir

LAST_KEY = "hm_last"
DISPLAY_KEY = "hm_display"
QP = st.query_params


def remember_or_restore() -> None:
    """Keep ``?slide``/``?job`` across navigation inside the app (see the module docstring)."""
    if "slide" not in QP and "job" not in QP:
        last = st.session_state.get(LAST_KEY) or {}
        for k, v in last.items():
            QP[k] = v
    st.session_state[LAST_KEY] = {k: QP[k] for k in ("slide", "job") if k in QP}


def open_slide_id(slide_id: str, runner=None, sid: str | None = None) -> None:
    """Show ``slide_id``; a job of another slide (or one this session may not open) leaves the URL."""
    job = QP.get("job")
    if job and runner is not None:
        try:
            if get_visible(runner, job, sid).params.get("slide_id") != slide_id:
                del QP["job"]
        except HistoDashError:
            del QP["job"]
    QP["slide"] = slide_id
    st.session_state[LAST_KEY] = {k: QP[k] for k in ("slide", "job") if k in QP}


def pick_source(sid: str, runner) -> None:
    """The Upload / Slide library choosers; a chosen slide is opened with :func:`open_slide_id`."""
    if st.radio("Source", ["Upload", "Slide library"], horizontal=True, key="slide_source") == "Upload":
        limit = st.get_option("server.maxUploadSize")
        upload = st.file_uploader(f"Whole-slide image (SVS, NDPI, MRXS, SCN, tiled TIFF, …, or a plain image) — up to {limit:,} MB", key="slide_upload")
        if upload is not None and st.session_state.get("slide_upload_done") != upload.file_id:
            st.session_state["slide_upload_done"] = upload.file_id
            try:
                path = save_upload(upload, upload.name, sid)
                open_slide_id(f"up:{path.name}", runner, sid)
                st.success(f"Saved '{upload.name}' ({path.stat().st_size / 1e6:.1f} MB).")
            except Exception as err:  # noqa: BLE001 - message; the slide shown before stays
                show_error(err, context=f"Upload of '{upload.name}'")
        folder = uploads_dir(sid)
        mine = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        if mine:
            current = QP.get("slide", "")
            index = mine.index(current[3:]) if current.startswith("up:") and current[3:] in mine else len(mine) - 1
            pick = st.selectbox("This session's slides", mine, index=index)
            if st.button("Open", key="open_upload"):
                open_slide_id(f"up:{pick}", runner, sid)
        return
    library = SlideLibrary.configured()
    if library is None:
        st.info("No slide library is configured: set HISTODASH_SLIDES_DIR to a (read-only) slide folder on the server.")
        return
    with guarded("Slide library"):
        here = st.session_state.get("lib_dir", "")
        entries = library.list(here)
        st.caption(f"Library folder: /{here}")
        if here and st.button("⬆ Up one folder"):
            st.session_state["lib_dir"] = here.rsplit("/", 1)[0] if "/" in here else ""
            st.rerun()
        dirs, files = [e for e in entries if e.is_dir], [e for e in entries if not e.is_dir]
        c1, c2 = st.columns(2)
        if dirs:
            sub = c1.selectbox("Folders", [e.relpath for e in dirs], format_func=lambda r: r.rsplit("/", 1)[-1] + "/")
            if c1.button("Enter folder"):
                st.session_state["lib_dir"] = sub
                st.rerun()
        if files:
            pick = c2.selectbox("Slides", [e.relpath for e in files], format_func=lambda r: r.rsplit("/", 1)[-1], key="lib_pick")
            if c2.button("Open slide", type="primary"):
                open_slide_id(f"lib:{pick}", runner, sid)
        elif not dirs:
            st.info("No slides in this folder.")


def job_record(runner, sid: str, *, explain: bool = False):
    """The job named in the URL, when this browser session may open it (its id is the capability: a refreshed
    browser re-attaches with it). Otherwise the id leaves the URL; with ``explain`` the page says why (one message
    for a job that does not exist and one of another session's upload)."""
    job_id = QP.get("job")
    if not job_id or runner is None:
        return None
    try:
        return get_visible(runner, job_id, sid)
    except HistoDashError as err:
        del QP["job"]
        if explain:
            show_error(err, context="Heatmap job")
        return None


def slide_of_job(rec, slide_id: str) -> Path | None:
    """The slide a job of ``slide_id`` scored, when the upload is gone (the workspace was swept): the job's own
    copy (kept by finished jobs), else the path it was given, if either still exists."""
    if rec is None or rec.params.get("slide_id") != slide_id:
        return None
    for value in ((rec.result or {}).get("slide_path"), rec.params.get("slide_path")):
        if isinstance(value, str) and value and Path(value).is_file():
            return Path(value)
    return None


def restore_job_settings(attached, slide_id: str) -> None:
    """Re-attached after a refresh: the scoring widgets show the settings the job ran with."""
    if attached is None or attached.params.get("slide_id") != slide_id or "hm_level" in st.session_state:
        return
    p = attached.params
    st.session_state["hm_level"] = int(p.get("level") or 0)
    st.session_state["hm_stride"] = float(p.get("stride_fraction") or 1.0)
    st.session_state["hm_min_tissue"] = float(p.get("min_tissue", DEFAULT_MIN_TISSUE))
    if int(p.get("tile_px") or 0):
        st.session_state["hm_tile_px"] = int(p["tile_px"])
        st.session_state["hm_tile_px_set"] = True


def default_scoring_settings(card, info) -> None:
    if st.session_state.get("hm_tile_card") != card.id:  # tile size follows the model until the user changes it
        st.session_state["hm_tile_card"] = card.id
        if not st.session_state.pop("hm_tile_px_set", False):
            st.session_state["hm_tile_px"] = int(card.input_px)
    if st.session_state.get("hm_level", 0) >= info.level_count:
        st.session_state["hm_level"] = 0
    st.session_state.setdefault("hm_stride", 1.0)
    st.session_state.setdefault("hm_min_tissue", DEFAULT_MIN_TISSUE)


@st.cache_data(max_entries=8, show_spinner="Reading slide…")
def overview(path: str, _mtime: int, user_mpp: float | None):
    """``(thumbnail, info, tissue mask, content hash)`` of a slide."""
    with open_slide(path, user_mpp=user_mpp) as slide:
        thumb, _ = slide.get_thumbnail(1024)
        info, content_hash = slide.info, slide.content_hash()
    mask = TissueMasker().thumbnail_mask(thumb, info.dimensions[0] / thumb.shape[1], info.dimensions[1] / thumb.shape[0])
    return thumb, info, mask, content_hash


def result_of(rec, slide_id: str, slide_hash: str) -> tuple[HeatmapResult | None, str | None]:
    """The finished heatmap of ``rec`` when it is of this slide; else ``(None, why not)``."""
    if rec is None or rec.state != "succeeded" or not rec.result:
        return None, None
    if rec.kind == "cohort":  # a cohort's per-slide result, found by the slide's content: its cluster map is a layer
        result = cohort_slide_result(rec.result["out_dir"], slide_hash)
        return (result, None) if result is not None else (None, "This slide is not in the cohort job in the address.")
    if rec.params.get("slide_id") != slide_id:
        return None, "The heatmap job in the address is of another slide: it is not drawn over this one."
    result = HeatmapResult.load(Path(rec.result["out_dir"]))
    if result.slide_hash and result.slide_hash != slide_hash:
        return None, f"The heatmap job in the address was computed on another version of '{result.slide_name}': compute it again."
    return result, None


def clicked_tile(event, result: HeatmapResult, result_key: str) -> tuple[int, int] | None:
    """The viewer's last clicked tile when it is a tile of ``result``; records the display it reported."""
    if not isinstance(event, dict):
        return None
    if isinstance(event.get("display"), dict):
        st.session_state[DISPLAY_KEY] = {"result": result_key, "display": event["display"]}
    if event.get("event") != "tile":
        return None
    try:
        xy = (int(event["x"]), int(event["y"]))
    except (KeyError, TypeError, ValueError):
        return None
    return xy if bool(np.any((result.x == xy[0]) & (result.y == xy[1]))) else None


def reported_display(result_key: str) -> dict | None:
    saved = st.session_state.get(DISPLAY_KEY) or {}
    return saved.get("display") if saved.get("result") == result_key else None


@st.cache_data(max_entries=64, show_spinner=False)
def read_tile(path: str, _mtime: int, x: int, y: int, size: int, max_px: int) -> np.ndarray:
    """A level-0 square, read at the coarsest level that still gives ``min(size, max_px)`` pixels."""
    with open_slide(path) as slide:
        out = min(size, max_px)
        level = slide.get_best_level_for_downsample(size / out)
        ds = slide.level_downsamples[level]
        rgb = slide.read_region((x, y), level, (max(1, round(size / ds)),) * 2)
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((out, out), Image.BILINEAR)) if rgb.shape[0] != out else rgb


def job_panel(runner, sid: str, slide_id: str, busy: bool) -> None:
    """The progress of this slide's job; polls only while one runs (an idle page sends the browser nothing)."""

    @st.fragment(run_every=1.5 if busy else None)
    def panel():
        rec = job_record(runner, sid)
        if rec is None or rec.params.get("slide_id") != slide_id:
            return
        p = rec.progress or {}
        if rec.active:
            eta = p.get("eta_s")
            st.progress(rec.fraction, text=f"{rec.state}: {p.get('done', 0):,}/{p.get('total', 0):,} tiles" + (f" · about {eta:.0f} s left" if eta is not None else "") + (f" · {p['message']}" if p.get("message") else ""))
            if st.button("Cancel", key="cancel_job"):
                runner.cancel(rec.id)
            st.session_state["job_was_active"] = rec.id
        elif st.session_state.get("job_was_active") == rec.id:
            st.session_state["job_was_active"] = None
            st.rerun()  # redraw the whole page with the result
        elif rec.state == "failed":
            st.error(f"The heatmap job failed: {rec.error}")
        elif rec.state == "cancelled":
            st.warning("The heatmap job was cancelled. Finished tiles are cached: computing again resumes from them.")

    panel()


def summary(result: HeatmapResult, display: dict) -> None:
    """Slide-level metrics at the display's threshold (the model card's until the viewer reports another)."""
    t = display["threshold"]
    st.subheader("Heatmap")
    s = result.summary(t)
    m = st.columns(5)
    m[0].metric("Tissue tiles", f"{s['n_tiles']:,}")
    m[1].metric("Mean score", f"{s['mean_score']:.3f}" if s["mean_score"] is not None else "-")
    m[2].metric(f"Tiles ≥ {t:.4g}", f"{s['fraction_over_threshold']:.1%}" if s["fraction_over_threshold"] is not None else "-")
    m[3].metric(f"Top-{s['top_k']} mean", f"{s['top_k_mean']:.3f}" if s["top_k_mean"] is not None else "-")
    m[4].metric("From cache", f"{int(result.cached.sum()):,}/{result.n_tiles:,}")
    source = "the model card's" if t == result.threshold else f"set in the viewer; the card's is {result.threshold:.4g}"
    st.caption(f"Threshold {t:.4g} ({source}) · display {display['mode']} / {display['colormap']}: change them in the viewer, then 'Use in downloads'.")
    if s.get("out_of_domain_warning"):  # the model's own features say this is not its kind of tissue
        st.error(s["out_of_domain_warning"], icon=":material/warning:")
    if result.params.get("normalization_warning"):
        st.warning(result.params["normalization_warning"], icon=":material/warning:")
    if display["mode"] == "percentiles":
        st.caption(s["percentile_note"])


def tile_view(result: HeatmapResult, chosen, card, slide_id: str, path: str, mtime: int, *, gradcam: bool) -> None:
    """The clicked tile: its level-0 image, prediction and the Grad-CAM link (``/gradcam?slide=…&x=…&y=…&size=…``)."""
    size = result.grid.tile0
    if chosen is None:
        st.info("Click a tile in the viewer to open it here (its level-0 image, prediction and Grad-CAM).")
        return
    frame = result.to_frame()
    row = frame[(frame.x == chosen[0]) & (frame.y == chosen[1])].iloc[0]
    st.subheader(f"Tile at x {chosen[0]}, y {chosen[1]} (level 0)")
    a, b = st.columns([1, 1])
    with guarded("Tile view"):
        a.image(read_tile(path, mtime, chosen[0], chosen[1], size, 1024), caption=f"{size}×{size} level-0 px", width="stretch")
    b.metric(card.score_name if card is not None and card.id == result.model_id else "score", f"{row.score:.3f}")
    b.json({c: round(float(row[c]), 4) for c in frame.columns if c.startswith("p_")})
    if gradcam:
        b.page_link("views/gradcam.py", label="Open in Grad-CAM", icon=":material/local_fire_department:",
                    query_params={"slide": slide_id, "x": chosen[0], "y": chosen[1], "size": size})


def gallery(result: HeatmapResult, path: str, mtime: int) -> None:
    st.subheader("Most positive tiles")
    cols = st.columns(6)
    with guarded("Gallery"):
        for i, r in enumerate(result.top_k(12).itertuples()):
            cols[i % 6].image(read_tile(path, mtime, int(r.x), int(r.y), result.grid.tile0, 256), caption=f"{r.score:.3f} · ({r.x}, {r.y})", width="stretch")


DOWNLOADS = [("Tiles CSV", "text/csv"), ("Heatmap PNG", "image/png"), ("GeoJSON (QuPath)", "application/geo+json"), ("Summary JSON", "application/json"), ("Run manifest", "application/json")]


def downloads(result: HeatmapResult, display: dict, thumb) -> None:
    """The five exports at the display's settings (the PNG is the static heatmap of the engine, as the CLI writes)."""
    st.subheader("Downloads")
    anonymise = st.toggle("Anonymise names", key="hm_anonymise", help="Exports name the slide by a stable pseudonym (slide-…) instead of its file name. The same slide always gets the same pseudonym on this server.")
    base = None if display["blank"] else thumb
    png = png_bytes(render_overlay(result, base, mode=display["mode"], colormap=display["colormap"], opacity=display["opacity"], blur_sigma=display["blur"], threshold=display["threshold"]))
    files = list(result.export_files(threshold=display["threshold"], anonymise=anonymise, png=png).items())
    for col, (label, mime), (file_name, data) in zip(st.columns(5), DOWNLOADS, files, strict=True):
        col.download_button(label, data, file_name, mime, key=f"dl_{label}")
