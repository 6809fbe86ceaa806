"""Upload: tiles (JPEG/PNG/TIFF) or a .zip of tiles into this session's private workspace.

Tiles are kept on disk in the browser session's workspace: a refresh, a second tab or a server restart
shows them again. Each tile can be removed on its own; the uploader is emptied once its files are stored
(so the server does not also hold them in memory).
"""

import streamlit as st

from dashboard import state
from dashboard.common import disclaimer, guarded
from engine.config import get_settings
from engine.imageio import is_tile_name

UPLOADER_KEY, MESSAGES_KEY = "tile_uploader_n", "upload_messages"
PER_ROW, SHOWN = 6, 60

settings = get_settings()
MAX_MB = max(1, settings.max_upload_bytes // (1024 * 1024))


def report_messages(report: state.IngestReport, source: str) -> list[tuple[str, str]]:
    """(kind, text) messages of one ingested file: errors, duplicates, renames and skipped zip entries."""
    out = [("error", f"**{name}** was not loaded: {message}") for name, message in report.errors]
    for name, kept in report.duplicates[:5]:
        out.append(("info", f"{name} is identical to {kept}, already in this session: not added again."))
    if len(report.duplicates) > 5:
        out.append(("info", f"… and {len(report.duplicates) - 5} more tile(s) already in this session: not added again."))
    for old, new in report.renamed:
        out.append(("info", f"Another tile is already named {old}: this one is kept as {new}."))
    if report.skipped:
        out.append(("info", f"{source}: skipped {len(report.skipped)} non-tile entries ({', '.join(report.skipped[:5])}{'…' if len(report.skipped) > 5 else ''})."))
    return out


def ingest_all(files) -> None:
    """Store every (name, bytes) file; the messages stay on the page until the next batch."""
    total = state.IngestReport()
    messages = []
    with guarded("Upload"):
        for name, read in files:
            report = state.ingest(name, read())
            total.extend(report)
            messages += report_messages(report, name)
    if total.added:
        messages.insert(0, ("success", f"Added {len(total.added)} tile(s)."))
    st.session_state[MESSAGES_KEY] = messages


def gallery(tiles: list) -> None:
    """Thumbnails with a remove button each (the first :data:`SHOWN`)."""
    for start in range(0, min(len(tiles), SHOWN), PER_ROW):
        for col, tile in zip(st.columns(PER_ROW), tiles[start : start + PER_ROW]):
            with col, guarded(tile.name):
                st.image(state.preview_file(tile.path, tile.name), width="stretch")
                st.caption(f"{tile.name}\n\n{tile.width}×{tile.height} {tile.format}, {tile.bytes / 1024:.0f} KB")
                if st.button("Remove", key=f"rm_{tile.sha256[:16]}", icon=":material/delete:", help=f"Remove {tile.name} from this session"):
                    state.remove_tiles([tile.path])
                    st.session_state[MESSAGES_KEY] = [("info", f"Removed **{tile.name}**.")]
                    st.rerun()
    if len(tiles) > SHOWN:
        st.caption(f"… and {len(tiles) - SHOWN} more (thumbnails of the first {SHOWN} shown).")


st.title("Upload tiles")
st.caption(
    f"JPEG, PNG or TIFF tiles (8/16-bit, grey, RGBA and CMYK are converted), or a .zip of them: up to {MAX_MB} MB per file "
    f"and {settings.max_pixels / 1e6:.0f} megapixels per tile. Uploads are visible to this browser only, and stay until you "
    "remove them, sign out, or leave them untouched for the session age limit."
)

n = st.session_state.setdefault(UPLOADER_KEY, 0)
uploads = st.file_uploader("Tiles or a zip of tiles", type=["jpg", "jpeg", "png", "tif", "tiff", "zip"], accept_multiple_files=True,
                           max_upload_size=MAX_MB, key=f"tile_uploader_{n}")
if uploads:
    ingest_all([(u.name, u.getvalue) for u in uploads])
    state.release_uploads(uploads)
    st.session_state[UPLOADER_KEY] = n + 1  # a fresh, empty uploader: the files are on disk now
    st.rerun()

examples = sorted(p for p in settings.examples_dir.glob("*") if p.is_file() and is_tile_name(p.name)) if settings.examples_dir.is_dir() else []
tiles = state.tiles()
cols = st.columns([1, 1, 2])
if examples and cols[0].button(f"Load {len(examples)} example tile(s)", icon=":material/science:", help="Tiles cut from the bundled demo slide (a lab sets its own with HISTODASH_EXAMPLES_DIR)."):
    ingest_all([(p.name, p.read_bytes) for p in examples])
    st.rerun()
if not examples:
    cols[0].caption("No example tiles configured (set HISTODASH_EXAMPLES_DIR to a folder of tiles).")
if tiles and cols[1].button("Remove all tiles", icon=":material/delete_sweep:"):
    state.clear_tiles()
    st.session_state[MESSAGES_KEY] = [("info", f"Removed all {len(tiles)} tile(s).")]
    st.rerun()

for kind, text in st.session_state.get(MESSAGES_KEY, []):
    getattr(st, kind)(text)

st.subheader(f"{len(tiles)} tile(s) in this session")
if tiles:
    st.page_link("views/predict.py", label="Predict these tiles →", icon=":material/analytics:")
    gallery(tiles)
disclaimer()
