"""Lifetime of the per-session workspaces under ``settings.work_dir`` (uploads, slides, kept results).

Each browser session writes into ``<work_dir>/<workspace id>/``; the id is the one its signed cookie names,
so the workspace outlives the websocket (a refresh, a second tab, a server restart open it again). The
dashboard marks a workspace alive with :func:`touch` (a ``.last_seen`` file: its mtime is the last
activity; its JSON names the Streamlit session and the server process, for diagnosis).
:func:`sweep_workspaces` deletes workspaces

* idle longer than ``max_age_s`` (the session's age limit, ``HISTODASH_SESSION_MAX_AGE_H``), or
* *ended* by a sign-out (:func:`end_workspace` removes one at once, or marks it ``.ended`` when a
  background job still reads from it, for the next sweep).

A websocket that closed, or a server process that is gone, ends nothing. Workspaces in ``protect`` are
never deleted. Nothing outside ``work_dir`` is ever touched: only direct sub-folders with a plain id name
are considered, symlinks are skipped (never followed) and removal uses :func:`shutil.rmtree`, which does
not follow symlinks inside the tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path

MARKER = ".last_seen"
ENDED = ".ended"
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def server_token() -> str:
    """``host:pid:start`` of this process (the start time tells a reused pid apart)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_proc_start(pid) or ''}"


def touch(workspace: Path, *, session: str | None = None, server: str | None = None, now: float | None = None) -> None:
    """Mark ``workspace`` alive (created if missing); records the Streamlit session and server process."""
    workspace.mkdir(parents=True, exist_ok=True)
    marker = workspace / MARKER
    tmp = workspace / f".{MARKER}.{os.getpid()}.{secrets.token_hex(3)}"
    tmp.write_text(json.dumps({"session": session, "server": server or server_token()}))
    os.replace(tmp, marker)
    if now is not None:
        os.utime(marker, (now, now))


def read_marker(workspace: Path) -> dict:
    try:
        data = json.loads((workspace / MARKER).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def last_seen(workspace: Path) -> float:
    """The workspace's last activity: the marker's mtime, else the folder's own (never following links)."""
    for path in (workspace / MARKER, workspace):
        with contextlib.suppress(OSError):
            return os.lstat(path).st_mtime
    return 0.0


def workspace_ids(work_dir: Path) -> list[str]:
    """Direct sub-folders of ``work_dir`` that are workspaces (plain id names, real folders, no symlinks)."""
    out = []
    try:
        entries = list(os.scandir(work_dir))
    except OSError:
        return out
    for entry in entries:
        if ID_RE.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            out.append(entry.name)
    return sorted(out)


def _remove(work_dir: Path, ws_id: str) -> bool:
    """Move the folder aside atomically, then delete it (a concurrent touch starts a fresh one)."""
    root = work_dir.resolve()
    path = root / ws_id
    if path.is_symlink() or not path.is_dir() or path.resolve().parent != root:
        return False
    trash = root / f".trash-{ws_id}-{secrets.token_hex(4)}"
    try:
        os.rename(path, trash)
    except OSError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def end_workspace(work_dir: Path | str, ws_id: str, *, protect: Iterable[str] = ()) -> bool:
    """A sign-out: delete workspace ``ws_id`` now (True), or, when protected (a job reads from it), mark it
    ended so a later sweep deletes it once nothing protects it (False)."""
    work_dir = Path(work_dir)
    if not ID_RE.fullmatch(ws_id or ""):
        return False
    if ws_id in set(protect):
        path = work_dir / ws_id
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                (path / ENDED).write_text("signed out")
        return False
    return _remove(work_dir, ws_id)


def sweep_workspaces(
    work_dir: Path | str, max_age_s: float, *, protect: Iterable[str] = (), now: float | None = None,
) -> list[str]:
    """Delete workspaces idle longer than ``max_age_s`` or ended by a sign-out (module docstring); returns the ids removed."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir() or work_dir.is_symlink():
        return []
    now = time.time() if now is None else now
    keep = set(protect)
    removed = []
    for ws_id in workspace_ids(work_dir):
        if ws_id in keep:
            continue
        path = work_dir / ws_id
        seen = last_seen(path)
        stale = now - seen > max_age_s or os.path.lexists(path / ENDED)
        if stale and last_seen(path) == seen and _remove(work_dir, ws_id):  # not touched meanwhile
            removed.append(ws_id)
    # leftovers of an interrupted removal
    with contextlib.suppress(OSError):
        for entry in os.scandir(work_dir):
            if entry.name.startswith(".trash-") and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
    return removed
