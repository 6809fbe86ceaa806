"""Upload: tiles (JPEG/PNG/TIFF) or a .zip of tiles into this session's private workspace."""

import streamlit as st

from dashboard import state
from dashboard.common import disclaimer, guarded
from engine.config import get_settings
from engine.imageio import is_tile_name

st.title("Upload tiles")
settings = get_settings()
st.caption(
    f"JPEG, PNG or TIFF tiles (8/16-bit, grey, RGBA and CMYK are converted), or a .zip of them. "
    f"Up to {settings.max_pixels / 1e6:.0f} megapixels per tile. Uploads are visible to this browser session only."
)

uploads = st.file_uploader(
    "Tiles or a zip of tiles",
    type=["jpg", "jpeg", "png", "tif", "tiff", "zip"],
    accept_multiple_files=True,
    key="tile_uploader",
)
processed: set = st.session_state.setdefault(state.PROCESSED_KEY, set())
new_errors: list[tuple[str, str]] = []
new_notes: list[str] = []
added_count = 0
processed_now = False
with guarded("Upload"):
    for uploaded in uploads or []:
        if uploaded.file_id in processed:
            continue
        added, errors, skipped = state.ingest(uploaded.name, uploaded.getvalue(), new_notes)
        processed.add(uploaded.file_id)
        processed_now = True
        added_count += len(added)
        new_errors.extend(errors)
        if skipped:
            st.info(f"{uploaded.name}: skipped {len(skipped)} non-tile entries ({', '.join(skipped[:5])}{'…' if len(skipped) > 5 else ''}).")
if processed_now:  # a new batch replaces the previous batch's messages; reruns keep them
    st.session_state["upload_errors"] = new_errors
    st.session_state["upload_notes"] = new_notes

if added_count:
    st.success(f"Added {added_count} tile(s).")
for note in st.session_state.get("upload_notes", []):
    st.info(note)
for name, message in st.session_state.get("upload_errors", []):
    st.error(f"**{name}** was not loaded: {message}")

examples = sorted(p for p in settings.examples_dir.glob("*") if p.is_file() and is_tile_name(p.name)) if settings.examples_dir.is_dir() else []
cols = st.columns(3)
if examples and cols[0].button(f"Load {len(examples)} example tile(s)", help=f"From {settings.examples_dir.name}/ (set HISTODASH_EXAMPLES_DIR)"):
    with guarded("Examples"):
        for path in examples:
            _, errors, _ = state.ingest(path.name, path.read_bytes())
            for name, message in errors:
                st.error(f"**{name}** was not loaded: {message}")
if not examples:
    cols[0].caption("No example tiles configured (set HISTODASH_EXAMPLES_DIR to a folder of tiles).")
if state.tiles() and cols[1].button("Remove all tiles"):
    state.clear_tiles()
    st.session_state["upload_errors"] = []
    st.rerun()

tiles = state.tiles()
st.subheader(f"{len(tiles)} tile(s) in this session")
if tiles:
    st.page_link("views/predict.py", label="Predict these tiles →", icon=":material/analytics:")
    per_row = 6
    for start in range(0, min(len(tiles), 60), per_row):
        row = st.columns(per_row)
        for col, tile in zip(row, tiles[start : start + per_row]):
            col.image(state.preview_file(tile.path, tile.name), width="stretch")
            col.caption(f"{tile.name}\n\n{tile.width}×{tile.height} {tile.format}, {tile.bytes / 1024:.0f} KB")
    if len(tiles) > 60:
        st.caption(f"… and {len(tiles) - 60} more (thumbnails of the first 60 shown).")
disclaimer()
