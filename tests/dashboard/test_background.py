"""dashboard.background: tasks run off the script thread, report progress, cancel, and leave their result in the session's store."""

from __future__ import annotations

import threading

from dashboard import background, state

SID = "c" * 32


def test_a_task_stores_its_result_for_the_browser_session():
    def work(task, n):
        for i in range(n):
            task.progress(i + 1, n)
        return {"sum": n * (n + 1) // 2}

    task = background.submit(SID, "sum", work, 4, key="bg_sum", label="Adding")
    assert task.wait(30) and task.state == "succeeded"
    assert (task.done, task.total, task.fraction) == (4, 4, 1.0)
    assert state.store_for(SID).get("bg_sum") == {"sum": 10}
    assert task.result is None  # on disk, not kept twice in memory
    assert background.get(SID, "sum") is task and background.active(SID, "sum") is None


def test_cancel_stops_a_task_and_keeps_the_previous_result():
    state.store_for(SID).put("bg_slow", "earlier result")
    started, release = threading.Event(), threading.Event()

    def slow(task):
        started.set()
        release.wait(30)
        task.progress(1, 2)  # raises: cancelled meanwhile
        return "never"

    task = background.submit(SID, "slow", slow, key="bg_slow")
    assert started.wait(30)
    task.cancel()
    release.set()
    assert task.wait(30) and task.state == "cancelled"
    assert state.store_for(SID).get("bg_slow") == "earlier result"


def test_a_newer_task_of_the_same_name_replaces_the_running_one():
    gate = threading.Event()

    def first(task):
        gate.wait(30)
        return "old"

    old = background.submit(SID, "same", first, key="bg_same")
    new = background.submit(SID, "same", lambda task: "new", key="bg_same")
    assert new.wait(30) and new.state == "succeeded"
    gate.set()
    assert old.wait(30) and old.state == "cancelled"  # finished after the new one: its result is dropped
    assert state.store_for(SID).get("bg_same") == "new"


def test_errors_are_kept_for_the_page_once():
    from engine.errors import InvalidInputError

    def bad(task):
        raise InvalidInputError("That tile is too small.")

    task = background.submit(SID, "bad", bad, key="bg_bad")
    assert task.wait(30) and task.state == "failed"
    err = background.failure(task)
    assert isinstance(err, InvalidInputError) and "too small" in str(err)
    assert background.failure(task) is None  # shown once
    assert state.store_for(SID).get("bg_bad") is None


def test_predict_page_shows_progress_then_the_result_on_a_later_run(tiny_registry, monkeypatch):
    """With no inline wait (a real browser), the click's run shows the task's progress and Cancel; the result comes later."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT
    from tests.dashboard.test_pages import png

    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    at.file_uploader[0].set_value([("a.png", png(1), "image/png"), ("b.png", png(2), "image/png")])
    at.run()
    at.switch_page("views/predict.py")
    at.run()
    gate = threading.Event()
    import dashboard.tilework as tilework

    real = tilework.predict_tiles

    def held(task, *args, **kwargs):
        gate.wait(60)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(background, "INLINE_WAIT_S", 0.0)
    monkeypatch.setattr(tilework, "predict_tiles", held)
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button if b.label == "Cancel"]  # the status fragment: progress and Cancel
    assert at.get("progress")  # the progress bar of the running task
    assert not at.dataframe  # no result yet
    gate.set()
    assert background.wait_idle(120)
    at.run()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == 2
