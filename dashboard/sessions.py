"""Per-session workspace lifetime: this session's workspace is marked alive; old and signed-out ones are swept.

:func:`housekeeping` runs at the top of every script run (``app.py``):

* it touches this session's workspace marker (``engine.workspaces.touch``) at most every
  :data:`TOUCH_EVERY_S` seconds;
* at most once every :data:`SWEEP_EVERY_S` seconds per process it deletes workspaces idle longer than
  ``settings.session_max_age_s`` (``HISTODASH_SESSION_MAX_AGE_H``: the session's age limit) and those
  ended by a sign-out, plus expired sign-in records. A closed websocket or a restarted server ends
  nothing: a refresh, a second tab or a restart opens the same workspace again. Workspaces that an
  active background job reads from (a slide being scored, a training zip) are never deleted.

:func:`end_session` is the sign-out: it deletes this session's workspace (or marks it for the sweep while a
job still reads from it) and forgets everything the session held.

Housekeeping never breaks a page: any failure is logged (without names) and ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import streamlit as st

from dashboard.state import session_id, workspace_for
from engine.config import get_settings
from engine.workspaces import MARKER, end_workspace, server_token, sweep_workspaces, touch

log = logging.getLogger("histodash.sessions")

TOUCH_EVERY_S = 30.0
SWEEP_EVERY_S = 60.0
_TOUCHED_KEY = "_workspace_touched_at"
_sweep_lock = threading.Lock()
_last_sweep = [0.0]


def _streamlit_session_id() -> str | None:
    from dashboard.state import _streamlit_session_id as current  # noqa: PLC0415

    return current()


def mark_alive(*, force: bool = False) -> None:
    """Touch this session's workspace marker (rate-limited; only when the workspace exists or ``force``)."""
    now = time.time()
    if not force and now - st.session_state.get(_TOUCHED_KEY, 0.0) < TOUCH_EVERY_S:
        return
    workspace = workspace_for(session_id())
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


def sweep(*, force: bool = False) -> list[str]:
    """Delete old and signed-out workspaces (at most once a minute per process unless ``force``)."""
    now = time.time()
    with _sweep_lock:
        if not force and now - _last_sweep[0] < SWEEP_EVERY_S:
            return []
        _last_sweep[0] = now
    from dashboard.websession import sweep_signins  # noqa: PLC0415

    sweep_signins(now=now)
    settings = get_settings()
    work_dir = settings.work_dir
    if not work_dir.is_dir():
        return []
    protect = {session_id()} | _job_workspaces(work_dir)
    removed = sweep_workspaces(work_dir, settings.session_max_age_s, protect=protect, now=now)
    if removed:
        log.info("removed %d old or signed-out session workspace(s)", len(removed))
    return removed


def end_session() -> None:
    """Sign-out: this session's workspace goes (now, or after the job that reads from it) and its state is cleared."""
    sid = session_id()
    work_dir = get_settings().work_dir
    try:
        end_workspace(work_dir, sid, protect=_job_workspaces(work_dir) if work_dir.is_dir() else set())
    except Exception as err:  # noqa: BLE001 - the sign-out itself must still happen
        log.warning("could not remove the signed-out workspace (%s)", type(err).__name__)
    for key in list(st.session_state.keys()):
        del st.session_state[key]


def housekeeping() -> None:
    """Mark this session's workspace as alive and sweep old ones (never raises)."""
    try:
        mark_alive()
        sweep()
    except Exception as err:  # noqa: BLE001 - housekeeping must never break a page
        log.warning("session housekeeping failed (%s)", type(err).__name__)


__all__ = ["MARKER", "end_session", "housekeeping", "mark_alive", "sweep"]
