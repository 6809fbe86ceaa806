"""Pieces of the Grad-CAM page: the tile sources and the drawing of maps (PNG renders cached per map,
colour map and opacity, so changing either redraws without recomputing or re-encoding)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import state
from dashboard.common import session_id, session_workspace
from engine.errors import InvalidInputError
from engine.imageio import read_image, to_png_bytes
from engine.privacy import pseudonym
from engine.uploads import save_bytes

SOURCES = {"session": "This session's tiles", "upload": "Upload a tile", "predict": "Prediction results", "slide": "Slide region"}


def tile_file(name: str, rgb: np.ndarray) -> str:
    """Keep a tile that is not already on disk (upload, slide region) in the session workspace."""
    folder = session_workspace() / "gradcam"
    path = folder / f"{hashlib.sha256(rgb.tobytes()).hexdigest()[:16]}.png"
    if not path.exists():
        save_bytes(to_png_bytes(rgb), folder, path.name)  # a full disk: "The server's disk is full: '….png' could not be saved."
    return str(path)


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"The link's '{name}' is not a whole number ({value!r}).") from None
    if not low <= number <= high:
        raise InvalidInputError(f"The link's '{name}' = {number} is outside {low}…{high}.")
    return number


def slide_region(params) -> tuple[str, np.ndarray]:
    """The slide tile named in the URL, or a HistoDashError saying why not."""
    try:
        from engine.slides import open_slide
        from engine.uploads import resolve_slide_id
    except ImportError:
        raise InvalidInputError("This link points at a slide region, but this HistoDash has no slide reader (engine.slides).", "Upload the tile instead.") from None
    x, y = (_int_param(k, params.get(k), 0, 10**7) for k in ("x", "y"))
    size = _int_param("size", params.get("size"), 16, 4096)
    path = resolve_slide_id(params.get("slide"), session=session_id())
    with open_slide(path) as slide:
        rgb = slide.read_region((x, y), 0, (size, size))  # no pixel of the slide there: its own message
        slide.check_region((x, y), (size, size))  # partly outside: a message too, never a tile padded with made-up glass
    return f"{Path(path).name} @ ({x}, {y}) {size} px", np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)


def pick_tile(source: str, params, predicted: dict | None, max_upload_mb: int) -> tuple[str | None, np.ndarray | None, str | None]:
    """(name, rgb, file) of the tile chosen from ``source``; (None, None, None) when there is none yet."""
    if source == "session":
        tiles = state.tiles()
        if not tiles:
            st.info("No tiles in this session yet: add some on the Upload page, or upload one here.")
            return None, None, None
        pick = st.selectbox("Tile", range(len(tiles)), format_func=lambda i: tiles[i].name)
        return tiles[pick].name, read_image(tiles[pick].path, name=tiles[pick].name), tiles[pick].path
    if source == "upload":
        upload = st.file_uploader("Tile (JPEG, PNG, TIFF)", accept_multiple_files=False, key="gradcam_upload", max_upload_size=max_upload_mb)
        if upload is None:
            return None, None, None
        rgb = read_image(upload.getvalue(), name=upload.name)
        return upload.name, rgb, None
    if source == "predict":
        if not predicted:
            st.info("No prediction results yet: run the Tile prediction page first.")
            return None, None, None
        frame = ranked(predicted)
        if not len(frame):
            return None, None, None
        pick = st.selectbox("Tile (highest score first)", range(len(frame)), format_func=lambda i: f"{frame.iloc[i]['path']} · {frame.iloc[i]['score']:.3f}")
        name, path = frame.iloc[pick]["path"], frame.iloc[pick]["tile_file"]
        return name, read_image(path, name=name), path
    name, rgb = slide_region(params)
    return name, rgb, None


def ranked(predicted: dict):
    """The prediction results' readable tiles that still exist, highest score first, with their files."""
    frame = predicted["frame"].assign(tile_file=predicted["paths"])
    frame = frame[frame["error"].isna() & frame["tile_file"].map(lambda p: Path(p).exists())]
    return frame.sort_values("score", ascending=False)


def download_stem(name: str) -> str:
    """The file-name stem of a download: the tile's own name, or its stable pseudonym when anonymising."""
    return pseudonym(name) if st.session_state.get("gradcam_anonymise") else Path(name).stem


@st.cache_data(max_entries=256, show_spinner=False)
def rendered(token: str, path: str, cmap: str, opacity: float, _result) -> tuple[bytes, bytes, bytes]:
    """(original, map, overlay) PNGs of one computed map; keyed by the map's token, never recomputed."""
    rgb = read_image(path)
    return to_png_bytes(rgb), _result.map_png(cmap), _result.overlay_png(rgb, cmap=cmap, opacity=opacity)


def _token(item: dict) -> str:
    return item.get("token") or hashlib.sha256(np.ascontiguousarray(item["result"].map).tobytes()).hexdigest()


def panels(saved: dict, cmap: str, opacity: float) -> None:
    """Original / map / overlay side by side, each with a PNG download."""
    res, stem = saved["result"], download_stem(saved["name"])
    pngs = rendered(_token(saved), saved["path"], cmap, opacity, res)
    captions = [("Original", "original"), (f"{res.method_label} map", "map"), ("Overlay", "overlay")]
    for col, (caption, kind), png in zip(st.columns(3), captions, pngs, strict=True):
        col.image(png, caption=caption, width="stretch")
        col.download_button(f"PNG: {kind}", png, file_name=f"{stem}_{kind}.png", mime="image/png", key=f"dl_{kind}_{saved['name']}")


def gallery(items: list[dict], cmap: str, opacity: float) -> None:
    cols = st.columns(4)
    for i, item in enumerate(items):
        res = item["result"]
        png = rendered(_token(item), item["path"], cmap, opacity, res)[2]
        with cols[i % 4]:
            st.image(png, caption=f"{item['name']} · p({res.target_class}) {res.score:.3f}", width="stretch")
            st.download_button("PNG", png, file_name=f"{download_stem(item['name'])}_overlay.png", mime="image/png", key=f"dl_gallery_{i}")
