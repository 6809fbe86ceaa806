"""Heavy page work off the script thread: worker threads with progress, cancel, and results kept on disk.

A page submits one task per action (``submit(sid, "predict", fn, …)``); ``fn(task)`` runs in a worker
thread of this server process (so models loaded once per process are shared by every session) and reports
``task.progress(done, total, message)``, which raises :class:`TaskCancelled` once the user pressed Cancel.
The finished result is written to the browser session's store (``dashboard.state.store_for(sid)``) under
the task's key before the task counts as done, so a refresh, a second tab or a closed tab finds it there.

The page then waits at most :data:`INLINE_WAIT_S` for the task (a quick one — cached tiles, one Grad-CAM —
is drawn in the same run), otherwise it shows :func:`status` — a fragment that redraws itself every
:data:`POLL_S` with the progress and a Cancel button, and reruns the page when the task ends. Tasks are
kept per browser session and name, so a refresh re-attaches to a running one. Worker threads never call
Streamlit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import streamlit as st

from dashboard.state import store_for

log = logging.getLogger("histodash.background")

INLINE_WAIT_S = 0.8  # tests raise it (AppTest does not run timed fragments)
POLL_S = 0.5
WORKERS = 4  # threads; heavy inference is limited separately (engine.limits.inference_slot)
KEEP_FINISHED_S = 3600.0


class TaskCancelled(Exception):
    """Raised inside a task by :meth:`Task.progress` once cancel was requested."""


@dataclass
class Task:
    sid: str
    name: str
    key: str | None  # state key the result is stored under
    label: str
    started: float = field(default_factory=time.time)
    done: int = 0
    total: int = 0
    message: str = ""
    state: str = "running"  # running | succeeded | failed | cancelled
    error: BaseException | None = None
    result: object = None
    finished: float | None = None
    seen_error: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report progress (from the worker); raises TaskCancelled when the user cancelled."""
        self.done, self.total = int(done), int(total)
        if message:
            self.message = message
        self.check()

    def note(self, message: str) -> None:
        self.message = message
        self.check()

    def check(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)


_lock = threading.Lock()
_tasks: dict[tuple[str, str], Task] = {}
_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="histodash-task")


def _run(task: Task, fn: Callable, args: tuple, kwargs: dict) -> None:
    try:
        task.check()
        result = fn(task, *args, **kwargs)
        task.check()  # replaced by a newer task meanwhile: its result must not overwrite the newer one's
        kept = store_for(task.sid).put(task.key, result) if task.key is not None else None
        # on disk: the page reads it from there (no second copy here); not writable: the page collects it from the task
        task.result, task.state = (None if kept is not None else result), "succeeded"
    except TaskCancelled:
        task.state = "cancelled"
    except Exception as err:  # noqa: BLE001 - the page shows it (HistoDashError: its message)
        from engine.errors import HistoDashError

        if not isinstance(err, HistoDashError):
            log.error("background task '%s' failed (%s)", task.name, type(err).__name__, exc_info=err)
        task.error, task.state = err, "failed"
    finally:
        task.finished = time.time()
        task._done.set()  # noqa: SLF001


def submit(sid: str, name: str, fn: Callable, *args, key: str | None = None, label: str = "Working", **kwargs) -> Task:
    """Start ``fn(task, *args, **kwargs)`` in a worker; a running task of the same name for this session is cancelled."""
    task = Task(sid=sid, name=name, key=key, label=label)
    with _lock:
        old = _tasks.get((sid, name))
        if old is not None and old.active:
            old.cancel()
        _tasks[(sid, name)] = task
        _prune()
    _pool.submit(_run, task, fn, args, kwargs)
    return task


def get(sid: str, name: str) -> Task | None:
    with _lock:
        return _tasks.get((sid, name))


def active(sid: str, name: str) -> Task | None:
    task = get(sid, name)
    return task if task is not None and task.active else None


def wait_idle(timeout: float = 300.0) -> bool:
    """Wait for every task of this process to end (tests); True when they did."""
    deadline = time.monotonic() + timeout
    with _lock:
        tasks = list(_tasks.values())
    return all(t.wait(max(0.0, deadline - time.monotonic())) for t in tasks)


def _prune() -> None:
    now = time.time()
    for k in [k for k, t in _tasks.items() if t.finished and now - t.finished > KEEP_FINISHED_S]:
        del _tasks[k]


# ----------------------------------------------------------------------------------------- page side
def run_or_show(task: Task) -> bool:
    """Give a task just submitted :data:`INLINE_WAIT_S` to finish; True when it is finished (draw its result now)."""
    return task.wait(INLINE_WAIT_S)


def collect(task: Task | None) -> None:
    """A result the worker could not keep on disk (read-only home, full disk): put it into this tab's state instead."""
    from dashboard import state

    if task is not None and task.state == "succeeded" and task.key is not None and task.result is not None:
        state.put(task.key, task.result)  # tries the disk again; else kept for this websocket
        task.result = None


def failure(task: Task | None) -> BaseException | None:
    """The error of a failed task, once (so it is shown on the run after it failed, not forever)."""
    if task is None or task.state != "failed" or task.seen_error:
        return None
    task.seen_error = True
    return task.error


def status(sid: str, name: str, *, key_prefix: str = "") -> None:
    """Progress and Cancel of a running task, redrawn every :data:`POLL_S`; reruns the page when it ends."""

    @st.fragment(run_every=POLL_S)
    def _status() -> None:
        task = get(sid, name)
        if task is None or not task.active:
            st.rerun()  # the whole page: it draws the result (or the error)
        elapsed = time.time() - task.started
        text = f"{task.label}: {task.done}/{task.total}" if task.total else f"{task.label}…"
        if task.message:
            text += f" · {task.message}"
        c1, c2 = st.columns([5, 1])
        c1.progress(task.fraction, text=f"{text} · {elapsed:.0f} s")
        if c2.button("Cancel", key=f"{key_prefix}cancel_{name}", icon=":material/stop:", disabled=task.cancel_requested):
            task.cancel()

    _status()
