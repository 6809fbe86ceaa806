"""Per-session workspace lifetime: this session's workspace is marked alive, idle and ended ones are swept.

:func:`housekeeping` runs at the top of every script run (``app.py``):

* it touches this session's workspace marker (``engine.workspaces.touch``) at most every
  :data:`TOUCH_EVERY_S` seconds, recording the Streamlit session id and this server process;
* at most once every :data:`SWEEP_EVERY_S` seconds per process it deletes workspaces idle longer
  than ``settings.session_max_age_s`` (``HISTODASH_SESSION_MAX_AGE_H``), and workspaces whose
  Streamlit session has ended (idle past a short grace period), found through Streamlit's runtime
  session manager (``Runtime.instance()._session_mgr.list_sessions()``, internal in Streamlit
  1.67: when it is missing, only the age rule applies). Workspaces that an active background job
  reads from (a slide being scored, a training zip) are never deleted.

Housekeeping never breaks a page: any failure is logged (without names) and ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import streamlit as st

from dashboard.common import session_id
from engine.config import get_settings
from engine.workspaces import MARKER, read_marker, server_token, sweep_workspaces, touch, workspace_ids

log = logging.getLogger("histodash.sessions")

TOUCH_EVERY_S = 30.0
SWEEP_EVERY_S = 60.0
_TOUCHED_KEY = "_workspace_touched_at"
_sweep_lock = threading.Lock()
_last_sweep = [0.0]


def _streamlit_session_id() -> str | None:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        return ctx.session_id if ctx is not None else None
    except Exception:  # noqa: BLE001 - internal API
        return None


def live_streamlit_sessions() -> set[str] | None:
    """Ids of the sessions this server's runtime still holds (connected or resumable); None when unknown."""
    try:
        from streamlit.runtime import Runtime

        if not Runtime.exists():
            return None
        manager = Runtime.instance()._session_mgr  # noqa: SLF001 - no public API lists sessions
        return {info.session.id for info in manager.list_sessions()}
    except Exception:  # noqa: BLE001 - the internal API moved: fall back to age only
        return None


def mark_alive(*, force: bool = False) -> None:
    """Touch this session's workspace marker (rate-limited; only when the workspace exists or ``force``)."""
    now = time.time()
    if not force and now - st.session_state.get(_TOUCHED_KEY, 0.0) < TOUCH_EVERY_S:
        return
    workspace = get_settings().work_dir / session_id()
    if not force and not workspace.is_dir():
        return
    touch(workspace, session=_streamlit_session_id(), server=server_token())
    st.session_state[_TOUCHED_KEY] = now


def _job_workspaces(work_dir: Path) -> set[str]:
    """Workspaces that active background jobs read from."""
    from engine.jobs import get_runner

    root = work_dir.resolve()
    out = set()
    for rec in get_runner().list():
        if not rec.active:
            continue
        for key in ("slide_path", "data"):
            value = rec.params.get(key)
            if not isinstance(value, str) or not value:
                continue
            try:
                rel = Path(value).resolve().relative_to(root)
            except (ValueError, OSError):
                continue
            if rel.parts:
                out.add(rel.parts[0])
    return out


def _active_workspaces(work_dir: Path, live: set[str] | None, me: str) -> set[str] | None:
    if live is None:
        return None
    token = server_token()
    active = {me}
    for ws_id in workspace_ids(work_dir):
        marker = read_marker(work_dir / ws_id)
        if marker.get("server") == token and marker.get("session") in live:
            active.add(ws_id)
    return active


def sweep(*, force: bool = False) -> list[str]:
    """Delete idle/ended workspaces (at most once a minute per process unless ``force``)."""
    now = time.time()
    with _sweep_lock:
        if not force and now - _last_sweep[0] < SWEEP_EVERY_S:
            return []
        _last_sweep[0] = now
    settings = get_settings()
    work_dir = settings.work_dir
    if not work_dir.is_dir():
        return []
    me = session_id()
    protect = {me} | _job_workspaces(work_dir)
    removed = sweep_workspaces(
        work_dir, settings.session_max_age_s, active_ids=_active_workspaces(work_dir, live_streamlit_sessions(), me),
        protect=protect, server=server_token(), now=now,
    )
    if removed:
        log.info("removed %d idle or ended session workspace(s)", len(removed))
    return removed


def housekeeping() -> None:
    """Mark this session's workspace as alive and sweep idle ones (never raises)."""
    try:
        mark_alive()
        sweep()
    except Exception as err:  # noqa: BLE001 - housekeeping must never break a page
        log.warning("session housekeeping failed (%s)", type(err).__name__)


__all__ = ["MARKER", "housekeeping", "live_streamlit_sessions", "mark_alive", "sweep"]
