"""Per-session state: the tiles a user uploaded (kept on disk in the session's workspace).

Session state holds small records (name, path, size), never pixel arrays; the files live in the
session's own workspace folder, so another browser session never sees them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from dashboard.common import session_workspace
from engine.archive import ZipReport, iter_zip_tiles
from engine.errors import HistoDashError
from engine.imageio import read_image, read_image_with_info, to_png_bytes, unique_name
from engine.uploads import safe_filename as _safe_name

TILES_KEY = "tiles"
PROCESSED_KEY = "processed_upload_ids"
PREVIEW_SUFFIX = ".preview.png"
PREVIEW_PX = 512  # thumbnails only


@dataclass(frozen=True)
class TileRecord:
    name: str
    path: str
    format: str
    width: int
    height: int
    bytes: int
    sha256: str


def tiles() -> list[TileRecord]:
    return list(st.session_state.get(TILES_KEY, []))


def clear_tiles() -> None:
    st.session_state[TILES_KEY] = []


def _preview_png(rgb) -> bytes:
    img = Image.fromarray(rgb)
    img.thumbnail((PREVIEW_PX, PREVIEW_PX))
    return to_png_bytes(np.asarray(img))


def _preview_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PREVIEW_SUFFIX)


def preview_file(path: str | Path, name: str | None = None) -> str:
    """An 8-bit RGB PNG thumbnail (≤ 512 px) of a stored tile, for ``st.image`` (written once, next to the tile).

    ``st.image`` cannot show every tile HistoDash reads: given a 16-bit PNG it raised "cannot write
    mode I;16 as JPEG", and as the tile stayed in the session, every later run of the page failed.
    """
    out = _preview_path(path)
    if not out.exists():
        out.write_bytes(_preview_png(read_image(path, name=name)))
    return str(out)


def add_tile_bytes(name: str, raw: bytes, notes: list[str] | None = None) -> TileRecord | None:
    """Validate one tile and store it in the workspace; raises a HistoDashError naming the file.

    The same file again is not added (None; ``notes`` says so); a different file with a name already in the
    session is kept apart as ``name (2).png`` (``notes`` says so too).
    """
    rgb, info = read_image_with_info(raw, name=name)
    digest = hashlib.sha256(raw).hexdigest()
    existing = {t.sha256: t for t in tiles()}
    if digest in existing:
        if notes is not None:
            notes.append(f"{name} is identical to {existing[digest].name}, already in this session: not added again.")
        return None
    shown = unique_name(name, {t.name for t in tiles()})
    if shown != name and notes is not None:
        notes.append(f"Another tile is already named {name}: this one is kept as {shown}.")
    name = shown
    folder = session_workspace() / "tiles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest[:12]}_{_safe_name(name)}"
    path.write_bytes(raw)
    _preview_path(path).write_bytes(_preview_png(rgb))
    record = TileRecord(name, str(path), info.format, info.width, info.height, len(raw), digest)
    st.session_state[TILES_KEY] = [*tiles(), record]
    return record


def ingest(name: str, raw: bytes, notes: list[str] | None = None) -> tuple[list[TileRecord], list[tuple[str, str]], list[str]]:
    """One uploaded file (tile or zip of tiles) → (added records, [(file, error)], skipped members).

    ``notes`` collects what the user should know about tiles renamed or not added again (duplicates).
    """
    added, errors, skipped = [], [], []
    if name.lower().endswith(".zip"):
        report, noted = ZipReport(), len(notes or [])
        try:
            for member, data in iter_zip_tiles(raw, name=name, report=report):
                try:
                    record = add_tile_bytes(f"{name}/{member}", data, notes)
                    if record is not None:
                        added.append(record)
                except HistoDashError as err:
                    errors.append((f"{name}/{member}", str(err)))
        except HistoDashError as err:
            errors.append((name, str(err)))
        skipped = report.skipped
        if not added and not errors and len(notes or []) == noted:  # (duplicates only: said in notes)
            errors.append((name, f"'{name}' contains no tiles (JPEG, PNG or TIFF files)."))
        return added, errors, skipped
    try:
        record = add_tile_bytes(name, raw, notes)
        if record is not None:
            added.append(record)
    except HistoDashError as err:
        errors.append((name, str(err)))
    return added, errors, skipped
