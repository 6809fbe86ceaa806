"""Session workspaces: old and signed-out ones are swept; protected ones, ended websockets and restarted servers keep theirs;
nothing outside work_dir is touched."""

import os
import time

from streamlit.testing.v1 import AppTest

from engine.workspaces import ENDED, MARKER, end_workspace, read_marker, server_token, sweep_workspaces, touch, workspace_ids
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


def test_protected_workspaces_are_kept(tmp_path):
    now = time.time()
    work = tmp_path / "sessions"
    for ws in ("job", "gone"):
        make(work, ws, age_s=30 * HOUR, now=now)
    removed = sweep_workspaces(work, 24 * HOUR, protect={"job"}, now=now)
    assert removed == ["gone"] and workspace_ids(work) == ["job"]


def test_an_ended_websocket_or_a_dead_server_ends_nothing(tmp_path):
    """The workspace belongs to the browser: a closed websocket, a refresh or a server restart must find it again."""
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"{socket.gethostname()}:{proc.pid}:1"
    now = time.time()
    work = tmp_path / "sessions"
    make(work, "restarted", age_s=5 * HOUR, session="s", server=dead, now=now)
    make(work, "closed-tab", age_s=3 * HOUR, session="st-gone", server=server_token(), now=now)
    assert sweep_workspaces(work, 24 * HOUR, now=now) == []
    assert workspace_ids(work) == ["closed-tab", "restarted"]


def test_sign_out_removes_the_workspace_or_marks_it_for_the_sweep(tmp_path):
    now = time.time()
    work = tmp_path / "sessions"
    make(work, "signed-out", age_s=10, now=now)
    make(work, "busy", age_s=10, now=now)
    make(work, "other", age_s=10, now=now)
    assert end_workspace(work, "signed-out") is True
    assert end_workspace(work, "busy", protect={"busy"}) is False  # a job still reads from it
    assert (work / "busy" / ENDED).exists() and (work / "busy" / "tiles" / "a.png").exists()
    assert sweep_workspaces(work, 24 * HOUR, protect={"busy"}, now=now) == []
    assert sweep_workspaces(work, 24 * HOUR, now=now) == ["busy"]  # the job finished
    assert workspace_ids(work) == ["other"]
    assert end_workspace(work, "../other") is False and workspace_ids(work) == ["other"]


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
