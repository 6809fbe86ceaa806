"""Session workspaces: idle and ended ones are swept, live and protected ones kept, nothing outside work_dir touched."""

import os
import time

from streamlit.testing.v1 import AppTest

from engine.workspaces import MARKER, read_marker, server_token, sweep_workspaces, touch, workspace_ids
from tests.conftest import ROOT

HOUR = 3600.0


def make(work, ws_id, *, age_s, session=None, server=None, now):
    touch(work / ws_id, session=session, server=server, now=now - age_s)
    (work / ws_id / "tiles").mkdir(exist_ok=True)
    (work / ws_id / "tiles" / "a.png").write_bytes(b"x")
    return work / ws_id


def test_idle_workspaces_are_removed_fresh_ones_kept(tmp_path):
    now = time.time()
    work = tmp_path / "sessions"
    make(work, "old", age_s=25 * HOUR, now=now)
    make(work, "fresh", age_s=60, now=now)
    removed = sweep_workspaces(work, 24 * HOUR, now=now)
    assert removed == ["old"]
    assert workspace_ids(work) == ["fresh"] and (work / "fresh" / "tiles" / "a.png").exists()


def test_active_and_protected_workspaces_are_kept(tmp_path):
    now = time.time()
    work = tmp_path / "sessions"
    for ws in ("live", "job", "gone"):
        make(work, ws, age_s=30 * HOUR, now=now)
    removed = sweep_workspaces(work, 24 * HOUR, active_ids={"live"}, protect={"job"}, now=now)
    assert removed == ["gone"] and workspace_ids(work) == ["job", "live"]


def test_ended_sessions_of_this_server_go_after_the_grace_period(tmp_path):
    now = time.time()
    work = tmp_path / "sessions"
    me = server_token()
    make(work, "ended", age_s=20 * 60, session="st-1", server=me, now=now)
    make(work, "just-ended", age_s=60, session="st-2", server=me, now=now)  # within the grace period (a refresh)
    make(work, "live", age_s=20 * 60, session="st-3", server=me, now=now)
    make(work, "other-host", age_s=20 * 60, session="st-4", server="another-host:1:1", now=now)
    removed = sweep_workspaces(work, 24 * HOUR, active_ids={"live"}, server=me, ended_grace_s=600, now=now)
    assert removed == ["ended"]
    assert workspace_ids(work) == ["just-ended", "live", "other-host"]
    # without knowledge of the live sessions (no Streamlit runtime), only age counts
    make(work, "ended2", age_s=20 * 60, session="st-5", server=me, now=now)
    assert sweep_workspaces(work, 24 * HOUR, active_ids=None, server=me, now=now) == []


def test_workspaces_of_a_dead_server_process_are_ended(tmp_path):
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"{socket.gethostname()}:{proc.pid}:1"
    now = time.time()
    work = tmp_path / "sessions"
    make(work, "orphan", age_s=20 * 60, session="s", server=dead, now=now)
    make(work, "mine", age_s=20 * 60, session="s", server=server_token(), now=now)
    assert sweep_workspaces(work, 24 * HOUR, now=now) == ["orphan"]


def test_never_deletes_outside_work_dir_or_through_symlinks(tmp_path):
    now = time.time()
    work = tmp_path / "sessions"
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    os.utime(outside, (now - 100 * HOUR, now - 100 * HOUR))
    work.mkdir()
    os.symlink(outside, work / "linkedsession")  # a symlinked "workspace"
    ws = make(work, "old", age_s=30 * HOUR, now=now)
    os.symlink(outside, ws / "escape")  # a symlink inside a workspace that is deleted
    (work / "not a workspace!").mkdir()
    os.utime(work / "not a workspace!", (now - 100 * HOUR, now - 100 * HOUR))
    removed = sweep_workspaces(work, 24 * HOUR, now=now)
    assert removed == ["old"]
    assert (outside / "data.txt").read_text() == "keep me"
    assert (work / "linkedsession").is_symlink() and (work / "not a workspace!").is_dir()
    # a work_dir that is itself a symlink is not swept
    link_work = tmp_path / "linkwork"
    os.symlink(work, link_work)
    make(work, "old2", age_s=30 * HOUR, now=now)
    assert sweep_workspaces(link_work, 24 * HOUR, now=now) == []
    assert (work / "old2").is_dir()


def test_missing_work_dir_is_fine(tmp_path):
    assert sweep_workspaces(tmp_path / "nope", 1.0) == []


# -- through the app: housekeeping marks the workspace and sweeps old ones ----------------------------


def test_app_marks_workspace_and_sweeps_idle_ones(tiny_registry, monkeypatch, tmp_path):
    work = tmp_path / "sessions"
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(work))
    monkeypatch.setenv("HISTODASH_SESSION_MAX_AGE_H", "1")
    now = time.time()
    make(work, "abandoned", age_s=2 * HOUR, now=now)
    make(work, "recent", age_s=10, now=now)
    from dashboard import sessions

    monkeypatch.setattr(sessions, "_last_sweep", [0.0])
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert not (work / "abandoned").exists() and (work / "recent").is_dir()
    # a workspace this session creates is marked with its session and this server
    sid = at.session_state["session_id"]
    at.switch_page("views/upload.py")
    at.run()
    at.file_uploader[0].set_value([("a.png", _png(), "image/png")])
    at.run()
    assert (work / sid / MARKER).exists()
    assert read_marker(work / sid)["server"] == server_token()


def _png() -> bytes:
    import io

    from PIL import Image

    from tests.conftest import rgb_tile

    buf = io.BytesIO()
    Image.fromarray(rgb_tile(1, 40)).save(buf, format="PNG")
    return buf.getvalue()
