"""Per-browser-session state: who this browser is, its workspace, and values that outlive the websocket.

A browser's work must survive what browsers do (a refresh, a second tab, a closed lid) and a server
restart, so it is kept on disk in the session's workspace (``<work_dir>/<session id>/``), not only in
``st.session_state`` (which lasts one websocket).

**Persistence API** (for every page)::

    from dashboard import state

    state.put("survival_result", result)     # kept in st.session_state[key] and in the workspace
    result = state.get("survival_result")     # this run's copy, else the file (refresh, new tab, restart)
    state.pop("survival_result")              # forgotten in every tab
    state.store_for(sid).put(key, value)      # the same from a worker thread (no Streamlit calls there)

Keys are short names (``[a-z0-9_]``, a page's own prefix). Values are pickled and signed with an
HMAC under this installation's secret (``$HISTODASH_HOME/secret/state.key``): a file that was altered,
or that an older HistoDash wrote and this one cannot read, counts as absent. ``get`` notices another tab's
``put``/``pop`` (it compares the file's identity on every call) and returns the newer value. When the
workspace cannot be written (read-only home, full disk) the value is kept for this websocket only and
the failure is logged. Values live until sign-out or until the session is swept (idle longer than
``HISTODASH_SESSION_MAX_AGE_H``).

Tiles are files in the workspace (``tiles/<digest>_<name>`` with a ``.json`` record and a PNG thumbnail
next to it), so every tab of the browser lists the same tiles and removing one removes its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import pickle
import re
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from engine.archive import ZipReport, iter_zip_tiles
from engine.config import get_settings
from engine.errors import HistoDashError
from engine.imageio import read_image, read_image_with_info, to_png_bytes, unique_name
from engine.uploads import safe_filename as _safe_name
from engine.uploads import save_bytes

log = logging.getLogger("histodash.state")

SESSION_KEY = "session_id"
TILES_KEY = "tiles"
PROCESSED_KEY = "processed_upload_ids"
PREVIEW_SUFFIX = ".preview.png"
RECORD_SUFFIX = ".json"
PREVIEW_PX = 512  # thumbnails only
STATE_DIR = "state"
SECRET_NAME = "state.key"
MAGIC = b"HDS1"
MAX_VALUE_BYTES = 64 * 1024 * 1024  # larger values are kept for this websocket only
KEY_RE = re.compile(r"[a-z0-9_]{1,64}")
_VERSIONS = "_histodash_state_versions"  # {key: file identity when this session last read/wrote it}
_TILES_CACHE = "_histodash_tiles_cache"


# ----------------------------------------------------------------------------------------- identity
def session_id() -> str:
    """This browser's session id: the one its signed ``histodash_session`` cookie names (so a refresh or a
    second tab of the same browser gets the same workspace), else a random id kept in session state (AppTest,
    clients without the cookie, or a cookie whose session was signed out). Never derived from unsigned user input."""
    if SESSION_KEY not in st.session_state:
        from dashboard.websession import browser_session_id, is_retired  # noqa: PLC0415 - reads st.context

        sid = browser_session_id()
        if sid is not None and is_retired(sid):  # signed out in this browser: never its old workspace again
            sid = None
        st.session_state[SESSION_KEY] = sid or uuid.uuid4().hex
    return st.session_state[SESSION_KEY]


def workspace_for(sid: str) -> Path:
    return get_settings().work_dir / sid


def session_workspace() -> Path:
    """This browser session's private folder (created, and marked alive, on first use)."""
    path = workspace_for(session_id())
    if not path.is_dir():
        from engine.workspaces import server_token, touch  # noqa: PLC0415

        touch(path, session=_streamlit_session_id(), server=server_token())
    return path


def _streamlit_session_id() -> str | None:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        return ctx.session_id if ctx is not None else None
    except Exception:  # noqa: BLE001 - internal API
        return None


# ----------------------------------------------------------------------------------------- persistence
def _secret() -> bytes:
    from engine.privacy import installation_secret

    return installation_secret(name=SECRET_NAME)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(f"state keys are 1-64 characters of a-z, 0-9 and _ (got {key!r})")
    return key


class Store:
    """Signed pickles in ``<workspace>/state/``; no Streamlit calls, safe from any thread or process."""

    def __init__(self, workspace: Path | str):
        self.workspace = Path(workspace)
        self.root = self.workspace / STATE_DIR

    def path(self, key: str) -> Path:
        return self.root / f"{_check_key(key)}.pkl"

    def version(self, key: str) -> tuple | None:
        """The file's identity (inode, mtime, size): it changes with every write; None when absent."""
        try:
            st_ = os.stat(self.path(key))
        except OSError:
            return None
        return (st_.st_ino, st_.st_mtime_ns, st_.st_size)

    def put(self, key: str, value) -> tuple | None:
        """Write ``value``; returns the new version, or None when it could not be kept on disk (logged)."""
        path = self.path(key)
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - an unpicklable value stays in memory only
            log.warning("state '%s' not kept on disk: not picklable (%s)", key, type(err).__name__)
            return None
        if len(blob) > MAX_VALUE_BYTES:
            log.warning("state '%s' not kept on disk: %d MB is over the %d MB limit", key, len(blob) >> 20, MAX_VALUE_BYTES >> 20)
            return None
        mac = hmac.new(_secret(), key.encode() + b"\0" + blob, hashlib.sha256).digest()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{key}.{os.getpid()}.{secrets.token_hex(4)}"
            with open(tmp, "wb") as fh:
                fh.write(MAGIC + mac + blob)
            os.replace(tmp, path)
        except OSError as err:
            log.warning("state '%s' not kept on disk (%s)", key, type(err).__name__)
            with contextlib.suppress(OSError, UnboundLocalError):
                tmp.unlink()
            return None
        return self.version(key)

    def get(self, key: str, default=None):
        return self.read(key, default)[0]

    def read(self, key: str, default=None) -> tuple:
        """``(value, version)``; ``(default, None)`` when absent, altered or unreadable."""
        path = self.path(key)
        version = self.version(key)
        if version is None:
            return default, None
        try:
            data = path.read_bytes()
        except OSError:
            return default, None
        mac, blob = data[len(MAGIC): len(MAGIC) + 32], data[len(MAGIC) + 32:]
        expected = hmac.new(_secret(), key.encode() + b"\0" + blob, hashlib.sha256).digest()
        if not data.startswith(MAGIC) or not hmac.compare_digest(mac, expected):
            log.warning("state '%s' ignored: its signature does not match", key)
            return default, None
        try:
            return pickle.loads(blob), version  # noqa: S301 - signed by this server, checked above
        except Exception as err:  # noqa: BLE001 - written by another HistoDash version
            log.warning("state '%s' ignored: cannot be read by this version (%s)", key, type(err).__name__)
            return default, None

    def pop(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def keys(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.root.glob("*.pkl"))
        except OSError:
            return []


def store_for(sid: str) -> Store:
    """The store of browser session ``sid`` (for worker threads, which have no Streamlit context)."""
    return Store(workspace_for(sid))


def store() -> Store:
    """This browser session's store."""
    return store_for(session_id())


def _versions() -> dict:
    return st.session_state.setdefault(_VERSIONS, {})


def put(key: str, value) -> None:
    """Keep ``value`` under ``key`` for this browser (every tab, refreshes, restarts); also ``st.session_state[key]``."""
    _check_key(key)
    version = store().put(key, value)
    st.session_state[key] = value
    _versions()[key] = version


def get(key: str, default=None):
    """The value kept under ``key``: this run's copy while it is current, else the workspace file's."""
    _check_key(key)
    versions = _versions()
    on_disk = store().version(key)
    if key in st.session_state and key in versions:
        mine = versions[key]
        if mine is None or mine == on_disk:  # not kept on disk (memory only), or still the current file
            return st.session_state[key]
        if on_disk is None:  # another tab forgot it
            st.session_state.pop(key, None)
            versions.pop(key, None)
            return default
    elif key in st.session_state and on_disk is None:
        return st.session_state[key]  # set directly in session_state (older code, tests)
    if on_disk is None:
        return default
    value, version = store().read(key)
    if version is None:
        return default
    st.session_state[key] = value
    versions[key] = version
    return value


def pop(key: str) -> None:
    """Forget ``key`` in this tab and on disk (other tabs see it gone on their next run)."""
    _check_key(key)
    store().pop(key)
    st.session_state.pop(key, None)
    _versions().pop(key, None)


# ----------------------------------------------------------------------------------------- tiles
@dataclass(frozen=True)
class TileRecord:
    name: str
    path: str
    format: str
    width: int
    height: int
    bytes: int
    sha256: str
    added: float = 0.0


@dataclass
class IngestReport:
    """What one uploaded file gave: tiles added, ``(file, message)`` errors, skipped zip members,
    ``(name, name kept)`` of tiles already in the session (same content) and ``(name, new name)`` of tiles
    given a suffix (same name, other content)."""

    added: list[TileRecord] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: IngestReport) -> None:
        for name in ("added", "errors", "skipped", "duplicates", "renamed"):
            getattr(self, name).extend(getattr(other, name))


def tiles_folder(sid: str | None = None) -> Path:
    return workspace_for(sid or session_id()) / "tiles"


def _read_records(folder: Path) -> list[TileRecord]:
    out = []
    for meta in folder.glob(f"*{RECORD_SUFFIX}"):
        try:
            data = json.loads(meta.read_text())
            tile = folder / data["file"]
            if tile.parent != folder or not tile.is_file():
                continue
            out.append(TileRecord(str(data["name"]), str(tile), str(data["format"]), int(data["width"]), int(data["height"]),
                                  int(data["bytes"]), str(data["sha256"]), float(data.get("added", 0.0))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda t: (t.added, t.name))


def tiles() -> list[TileRecord]:
    """This browser session's tiles, oldest first (read from the workspace; cached while its folder is unchanged)."""
    folder = tiles_folder()
    try:
        stamp = os.stat(folder).st_mtime_ns
    except OSError:
        return []
    cached = st.session_state.get(_TILES_CACHE)
    if cached and cached[0] == (str(folder), stamp):
        return list(cached[1])
    records = _read_records(folder)
    st.session_state[_TILES_CACHE] = ((str(folder), stamp), records)
    return list(records)


def _forget_tiles_cache() -> None:
    st.session_state.pop(_TILES_CACHE, None)


def _unlink_tile(path: str | Path) -> None:
    path = Path(path)
    for p in (path, _preview_path(path), path.with_name(path.name + RECORD_SUFFIX)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_tiles(paths) -> int:
    """Remove these tiles (files, thumbnails, records) from this session; returns how many were removed."""
    own = {t.path for t in tiles()}
    gone = 0
    for path in paths:
        if path in own:
            _unlink_tile(path)
            gone += 1
    _forget_tiles_cache()
    return gone


def clear_tiles() -> None:
    remove_tiles([t.path for t in tiles()])


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
        save_bytes(_preview_png(read_image(path, name=name)), out.parent, out.name)
    return str(out)


def add_tile_bytes(name: str, raw: bytes, report: IngestReport | None = None) -> TileRecord:
    """Validate one tile and store it in the workspace; raises a HistoDashError naming the file.

    The same content twice is kept once (``(name, name already kept)`` in ``report.duplicates``); another file
    with a name already in the session is kept under a suffixed name (``a (2).png``, noted in ``report.renamed``)."""
    rgb, info = read_image_with_info(raw, name=name)
    digest = hashlib.sha256(raw).hexdigest()
    current = tiles()
    for t in current:
        if t.sha256 == digest:
            if report is not None:
                report.duplicates.append((name, t.name))
            return t
    shown = unique_name(name, {t.name for t in current})
    if shown != name and report is not None:
        report.renamed.append((name, shown))
    folder = session_workspace() / "tiles"
    path = folder / f"{digest[:12]}_{_safe_name(name)}"
    record = TileRecord(shown, str(path), info.format, info.width, info.height, len(raw), digest, time.time())
    meta = {**asdict(record), "file": path.name}
    meta.pop("path")
    try:  # each file through a temporary one renamed into place: a full disk says so ("… could not be saved")
        save_bytes(raw, folder, path.name)
        save_bytes(_preview_png(rgb), folder, _preview_path(path).name)
        save_bytes(json.dumps(meta).encode(), folder, path.name + RECORD_SUFFIX)  # last: a tile exists once its record does
    except HistoDashError:
        for leftover in (path, _preview_path(path)):
            leftover.unlink(missing_ok=True)
        raise
    _forget_tiles_cache()
    if report is not None:
        report.added.append(record)
    return record


def release_uploads(files) -> None:
    """Let Streamlit drop uploaded files from server memory once their content is stored (``UploadedFile`` objects).

    Streamlit keeps every file of a file_uploader in memory until its session ends, even after the widget is
    reset; the upload page stores tiles on disk, then calls this (as ``st.chat_input`` does internally)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        manager = ctx.uploaded_file_mgr
        for f in files:
            manager.remove_file(ctx.session_id, f.file_id)
    except Exception as err:  # noqa: BLE001 - internal API (MemoryUploadedFileManager.remove_file): best effort
        log.debug("uploads not released (%s)", type(err).__name__)


def ingest(name: str, raw: bytes) -> IngestReport:
    """One uploaded file (tile or zip of tiles) → an :class:`IngestReport`."""
    report = IngestReport()
    if name.lower().endswith(".zip"):
        zreport = ZipReport()
        found = 0
        try:
            for member, data in iter_zip_tiles(raw, name=name, report=zreport):
                found += 1
                try:
                    add_tile_bytes(f"{name}/{member}", data, report)
                except HistoDashError as err:
                    report.errors.append((f"{name}/{member}", str(err)))
        except HistoDashError as err:
            report.errors.append((name, str(err)))
        report.skipped = list(zreport.skipped)
        if not found and not report.errors:
            report.errors.append((name, f"'{name}' contains no tiles (JPEG, PNG or TIFF files)."))
        return report
    try:
        add_tile_bytes(name, raw, report)
    except HistoDashError as err:
        report.errors.append((name, str(err)))
    return report
