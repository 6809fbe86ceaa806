"""Lifetime of the per-session workspaces under ``settings.work_dir`` (uploads, slides, scratch files).

Each browser session writes into ``<work_dir>/<workspace id>/``. The dashboard marks a workspace
alive with :func:`touch` (a ``.last_seen`` file: its mtime is the last activity; its JSON names the
Streamlit session and the server process). :func:`sweep_workspaces` deletes workspaces

* idle longer than ``max_age_s``, or
* whose session has *ended* and that have been idle longer than ``ended_grace_s`` (a grace period,
  so a browser refresh that re-attaches to a background job still finds the slide it used). A
  session has ended when the caller knows the live sessions of this server (``active_ids`` given)
  and the workspace was last seen by this server (``server``) but is not among them, or when the
  server process that last saw it (on this host) is gone.

Workspaces in ``active_ids`` or ``protect`` are never deleted. Nothing outside ``work_dir`` is ever
touched: only direct sub-folders with a plain id name are considered, symlinks are skipped (never
followed) and removal uses :func:`shutil.rmtree`, which does not follow symlinks inside the tree.
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
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_ENDED_GRACE_S = 600.0


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def server_token() -> str:
    """``host:pid:start`` of this process (the start time tells a reused pid apart)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_proc_start(pid) or ''}"


def _server_alive(token: str) -> bool | None:
    """True/False for a token of this host; None when it names another host (cannot tell)."""
    host, _, rest = token.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _proc_start(pid) == start


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


def sweep_workspaces(
    work_dir: Path | str, max_age_s: float, *, active_ids: Iterable[str] | None = None, protect: Iterable[str] = (),
    server: str | None = None, ended_grace_s: float = DEFAULT_ENDED_GRACE_S, now: float | None = None,
) -> list[str]:
    """Delete idle and ended workspaces (module docstring); returns the ids removed."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir() or work_dir.is_symlink():
        return []
    now = time.time() if now is None else now
    active = set(active_ids) if active_ids is not None else None
    keep = set(protect) | (active or set())
    removed = []
    for ws_id in workspace_ids(work_dir):
        if ws_id in keep:
            continue
        path = work_dir / ws_id
        seen = last_seen(path)
        idle = now - seen
        stale = idle > max_age_s
        if not stale and idle > ended_grace_s:
            owner = str(read_marker(path).get("server") or "")
            if owner and active is not None and owner == server:
                stale = True  # this server's session, and it is no longer live
            elif owner and _server_alive(owner) is False:
                stale = True  # the server process that served it is gone
        if stale and last_seen(path) == seen and _remove(work_dir, ws_id):  # not touched meanwhile
            removed.append(ws_id)
    # leftovers of an interrupted removal
    with contextlib.suppress(OSError):
        for entry in os.scandir(work_dir):
            if entry.name.startswith(".trash-") and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
    return removed
