"""Background jobs: long work (training, slide heatmaps) outside the web process.

>>> from engine.jobs import get_runner
>>> runner = get_runner()
>>> job_id = runner.submit("train", {"data": "tiles/", "epochs": 1})
>>> runner.get(job_id).state          # "queued" | "running" | "succeeded" | "failed" | "cancelled"
>>> runner.cancel(job_id)

A *job function* is ``fn(params: dict, ctx: JobContext) -> dict`` named by :data:`JOB_KINDS`
(``kind -> "module:function"``). It runs in its own OS process, reports through ``ctx``
(:meth:`JobContext.progress`, :meth:`~JobContext.metric`, :meth:`~JobContext.log`) and checks
:meth:`JobContext.cancelled` often; its return value (JSON-serialisable) becomes the record's ``result``.

The embedded default, :class:`LocalProcessRunner`, needs no server. Every job is a folder under
``settings.jobs_dir``::

    <job id>/job.json        kind, target, params, owner, created           (written once, at submit)
    <job id>/state.json      state, pid (+ its start time), started, finished, result, error (under a file lock)
    <job id>/progress.json   done, total, message, eta_s, …                 (the worker only, throttled)
    <job id>/metrics.jsonl   one JSON row per ``ctx.metric`` call           (the worker only, appended)
    <job id>/log.txt         ``ctx.log`` lines + the worker's stdout/stderr (tracebacks included)
    <job id>/cancel          flag file: cancel requested
    <job id>/work/           the job's scratch folder (``ctx.workdir``)

All JSON is written atomically (temp file + ``os.replace``), so records survive page reloads, a
dashboard restart and a crash of either side. Each job runs as
``python -m engine.jobs _worker <job dir>`` in a new session (``start_new_session=True``), so
closing the browser or restarting Streamlit leaves it running. Scheduling (start queued jobs while
fewer than ``slots`` run; ``HISTODASH_JOB_SLOTS``, default 1) happens on ``submit``/``get``/``list``
and when a worker finishes, under a lock on the jobs folder: no daemon thread. A record that says
``running`` whose worker process is gone (killed, out of memory, machine rebooted) is marked
``failed`` the next time it is read.

The runner is used only through the small :class:`JobRunner` protocol (submit, get, cancel, list,
log_tail), so a cluster backend (a Ray runner is planned: ``ray.remote`` tasks reporting through
the same :class:`JobContext` verbs, records in a shared store) can replace
:class:`LocalProcessRunner` in :func:`get_runner` without touching the pages.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.config import REPO_ROOT, get_settings
from engine.errors import Cancelled, HistoDashError, JobError, JobNotFoundError

try:  # POSIX file locks; on other systems the lock is a no-op (one dashboard process assumed)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: kind -> "module:function" of the job function. Resolved once, at submit, and stored in the record.
JOB_KINDS: dict[str, str] = {
    "train": "engine.training.run:run_job",
    "heatmap": "engine.heatmap:run_job",
    "cohort": "engine.cohort.job:run_job",
}

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
DAMAGED, UNKNOWN = "damaged", "unknown"  # a job.json that cannot be trusted; a state file that cannot be read
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")

JOB_FILE, STATE_FILE, PROGRESS_FILE, METRICS_FILE, LOG_FILE, CANCEL_FILE = (
    "job.json", "state.json", "progress.json", "metrics.jsonl", "log.txt", "cancel")


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class JobRecord:
    """A job as last persisted. Times are UNIX seconds (``time.time()``), None until they happen.

    ``progress`` holds ``done``, ``total``, ``message``, ``eta_s`` (seconds left, None when unknown)
    and whatever extra keys the job passed to :meth:`JobContext.progress` (training: ``epoch``,
    ``epochs``, ``batch``, ``batches``).
    """

    id: str
    kind: str
    state: str
    params: dict
    owner: str | None = None
    pid: int | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    progress: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    result: dict | None = None
    error: str | None = None
    log_path: str = ""
    cancel_requested: bool = False

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def finished_ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def fraction(self) -> float:
        """Progress in 0..1 (1 once finished successfully)."""
        if self.state == "succeeded":
            return 1.0
        total = self.progress.get("total") or 0
        return min(max(float(self.progress.get("done", 0)) / total, 0.0), 1.0) if total else 0.0

    @property
    def elapsed_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict:
        return asdict(self)


class JobRunner(Protocol):
    """What the pages and the CLI use. Implementations: :class:`LocalProcessRunner` (a Ray runner later)."""

    def submit(self, kind: str, params: dict, *, owner: str | None = None) -> str: ...

    def get(self, job_id: str) -> JobRecord: ...

    def cancel(self, job_id: str) -> None: ...

    def list(self, kind: str | None = None, owner: str | None = None) -> list[JobRecord]: ...

    def log_tail(self, job_id: str, n: int = 50) -> str: ...


# ----------------------------------------------------------------------------- small file helpers


def _write_json(path: Path, data: Any) -> None:
    """Atomic: readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _job_problem(job: Any) -> str | None:
    """Why a parsed job.json cannot be trusted (None when it can)."""
    if not isinstance(job, dict):
        return "job.json is not a JSON object" if job is not None else "job.json cannot be read"
    if not isinstance(job.get("kind"), str) or not job["kind"]:
        return "no job kind"
    if not isinstance(job.get("params", {}), dict):
        return "its parameters are not an object"
    if job.get("owner") is not None and not isinstance(job["owner"], str):
        return "its owner is not text"
    return None


def _state_of(job_dir: Path) -> dict | None:
    """state.json as a dict, or None when it is missing, unreadable, not an object or has a non-numeric pid."""
    st = _read_json(job_dir / STATE_FILE)
    if not isinstance(st, dict):
        return None
    pid = st.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
        return None
    return st


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _whole(st: dict | None, key: str) -> int | None:
    value = (st or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _clean_progress(progress: Any) -> dict:
    """progress.json as a dict whose counters are numbers (a damaged file shows no progress)."""
    if not isinstance(progress, dict):
        return {}
    out = dict(progress)
    for key in ("done", "total", "eta_s"):
        if key in out and _seconds(out[key]) is None:
            out.pop(key)
    if "message" in out and not isinstance(out["message"], str):
        out.pop("message")
    return out


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return default


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _tail(path: Path, n: int, max_bytes: int = 256 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-n:]) if n > 0 else ""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), None without ``/proc``.

    Set at fork and unchanged by exec, so ``(pid, start)`` names one process even after the pid is reused.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int | None, start: str | None = None) -> bool:
    """True while process ``pid`` runs (zombies count as dead; with ``start``, it must be that very process)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own finished children (no zombies)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user: not one of our workers
        return start is None
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return False
        if fields[0] in ("Z", "X"):
            return False
        if start is not None and fields[19] != start:
            return False  # the pid now belongs to another process
    return True


def _resolve(target: str):
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name)


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id or len(job_id) > 100 or not all(c.isalnum() or c in "-_" for c in job_id):
        raise JobNotFoundError(f"'{job_id}' is not a job id.")
    return job_id


# ----------------------------------------------------------------------------- context (worker side)


class JobContext:
    """What a job function gets: its id, scratch folder, params, and the verbs to report and to stop.

    ``ctx.progress`` is a :class:`engine.progress.Progress` and ``ctx.status`` a
    :class:`engine.progress.Status`, so both can be handed to engine functions as they are;
    ``ctx.cancelled`` is their ``cancelled()`` check. Tests use ``tests.fakes.FakeContext``, which has
    the same public surface (a test checks it).

    Args:
        job_dir: the job's folder (see the module docstring).
        params: the job's parameters.
        throttle_s: ``progress`` writes at most this often (the last call is never lost for long:
            a change of ``message`` or ``done == total`` is written at once).
    """

    def __init__(self, job_dir: Path | str, params: dict | None = None, *, throttle_s: float = 0.5):
        self.job_dir = Path(job_dir)
        self.job_id = self.job_dir.name
        self.workdir = self.job_dir / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.params = dict(params or {})
        self.throttle_s = throttle_s
        self._last_write = 0.0
        self._last_message: str | None = None
        self._last_state: tuple[int, int, dict] = (0, 0, {})  # done, total, extra of the last progress call
        self._eta_origin: tuple[int, float, int] | None = None  # (total, t0, done0)
        self._cancel_path = self.job_dir / CANCEL_FILE
        self._cancel_checked = 0.0
        self._cancel_seen = False

    # -- reporting
    def progress(self, done: int, total: int, message: str | None = None, **extra) -> None:
        """Record progress (``done`` of ``total`` units) with an ETA; cheap to call every batch.

        ``message`` replaces the status message (None keeps the last one, see :meth:`status`);
        ``extra`` keys (training: ``epoch``, ``batch``, …) are stored beside ``done`` and ``total``.
        """
        if message is None:
            message = self._last_message or ""
        self._last_state = (int(done), int(total), dict(extra))
        now = time.time()
        if self._eta_origin is None or self._eta_origin[0] != total or done < self._eta_origin[2]:
            self._eta_origin = (total, now, done)
        _, t0, d0 = self._eta_origin
        rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
        eta = (total - done) / rate if rate else None
        if now - self._last_write < self.throttle_s and message == self._last_message and done < total:
            return
        self._last_write, self._last_message = now, message
        data = {"done": int(done), "total": int(total), "message": message, "eta_s": None if eta is None else round(eta, 1), "updated": now}
        data.update(extra)
        _write_json(self.job_dir / PROGRESS_FILE, data)

    def status(self, message: str) -> None:
        """The message channel: what is happening now in words (kept with the last ``done``/``total``)."""
        done, total, extra = self._last_state
        self.progress(done, total, str(message), **extra)

    def metric(self, **values) -> None:
        """Append a row (e.g. one epoch's metrics) to the record's ``metrics`` list."""
        row = {"time": time.time(), **values}
        with open(self.job_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    def log(self, message: str) -> None:
        """Append a time-stamped line to the job's log file."""
        stamp = time.strftime("%H:%M:%S")
        with open(self.job_dir / LOG_FILE, "a") as fh:
            fh.write(f"[{stamp}] {message}\n")

    # -- cancellation
    def cancelled(self) -> bool:
        """True once cancel was requested (a stat call at most every 50 ms)."""
        if self._cancel_seen:
            return True
        now = time.monotonic()
        if now - self._cancel_checked >= 0.05:
            self._cancel_checked = now
            self._cancel_seen = self._cancel_path.exists()
        return self._cancel_seen

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled(f"job {self.job_id} was cancelled")


# ----------------------------------------------------------------------------- records on disk (every runner)


def check_submission(kind: str, params: dict) -> dict:
    """``params`` as plain JSON for a known ``kind`` (a :class:`JobError` otherwise)."""
    if kind not in JOB_KINDS:
        raise JobError(f"Unknown job kind '{kind}'. Known: {', '.join(sorted(JOB_KINDS))}.")
    try:
        return json.loads(json.dumps(params))
    except (TypeError, ValueError) as exc:
        raise JobError(f"Job parameters must be plain JSON values ({exc}).") from exc


def create_job(root: Path, kind: str, params: dict, owner: str | None, **extra) -> Path:
    """A new queued job's folder under ``root`` (``extra`` goes into ``job.json``, e.g. the backend)."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    # 128 random bits: a job id is a capability (a ?job= link), it must not be guessable from the time
    job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{secrets.token_hex(16)}"
    job_dir = root / job_id
    job_dir.mkdir()
    (job_dir / "work").mkdir()
    (job_dir / LOG_FILE).touch()
    _write_json(job_dir / STATE_FILE, {"state": "queued"})
    # job.json last: a folder without it is not a job yet (list() skips it)
    _write_json(job_dir / JOB_FILE, {"id": job_id, "kind": kind, "target": JOB_KINDS[kind], "params": params, "owner": owner, "created": now, **extra})
    return job_dir


def read_record(job_dir: Path, state: dict | None = None) -> JobRecord:
    """The job in ``job_dir``, its files read as untrusted input: anything malformed gives a "damaged" (or "unknown" state)
    record, never an exception. ``state``: an already read (and brought up to date) ``state.json``."""
    if not (job_dir / JOB_FILE).exists():
        raise JobNotFoundError(f"No job '{job_dir.name}'.")
    job = _read_json(job_dir / JOB_FILE)
    problem = _job_problem(job)
    st = state if state is not None else _state_of(job_dir)
    metrics = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (job_dir / METRICS_FILE).read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict):
                    metrics.append(row)
    log_path, cancel = str(job_dir / LOG_FILE), (job_dir / CANCEL_FILE).exists()
    if problem:
        kind = job.get("kind") if isinstance(job, dict) and isinstance(job.get("kind"), str) else UNKNOWN
        return JobRecord(id=job_dir.name, kind=kind, state=DAMAGED, params={}, error=f"The job record is damaged ({problem}).",
                         log_path=log_path, cancel_requested=cancel)
    state = st.get("state") if st is not None else None
    progress = _read_json(job_dir / PROGRESS_FILE, {})
    return JobRecord(
        id=job_dir.name, kind=job["kind"], state=state if state in STATES else UNKNOWN, params=job.get("params") or {},
        owner=_text(job.get("owner")), pid=_whole(st, "pid"), created=_seconds(job.get("created")), started=_seconds((st or {}).get("started")),
        finished=_seconds((st or {}).get("finished")), progress=_clean_progress(progress), metrics=metrics,
        result=(st or {}).get("result") if isinstance((st or {}).get("result"), dict) else None,
        error=_text((st or {}).get("error")) if state in STATES else "The job's state file cannot be read: its state is unknown.",
        log_path=log_path, cancel_requested=cancel,
    )


def wait_until_done(runner: JobRunner, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> JobRecord:
    """Block until the job is finished (or ``timeout`` seconds passed); the last record."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        rec = runner.get(job_id)
        if not rec.active or (deadline is not None and time.monotonic() >= deadline):
            return rec
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- the local runner


class LocalProcessRunner:
    """Jobs as OS processes on this machine, records as files in ``root`` (module docstring).

    Args:
        root: the jobs folder (default: ``settings.jobs_dir``).
        slots: how many jobs run at once (default: ``settings.job_slots``, ``HISTODASH_JOB_SLOTS``).
    """

    def __init__(self, root: Path | str | None = None, *, slots: int | None = None):
        self.root = Path(root) if root is not None else get_settings().jobs_dir
        self.slots = max(1, int(slots if slots is not None else get_settings().job_slots))

    # -- paths
    def _dir(self, job_id: str) -> Path:
        return self.root / validate_job_id(job_id)

    def _lock(self) -> contextlib.AbstractContextManager:
        return _locked(self.root / ".lock")

    # -- public API
    def submit(self, kind: str, params: dict, *, owner: str | None = None) -> str:
        """Queue a job; it starts at once when a slot is free. Returns the job id."""
        job_dir = create_job(self.root, kind, check_submission(kind, params), owner)
        self._schedule()
        return job_dir.name

    def get(self, job_id: str) -> JobRecord:
        self._schedule()
        return self._record(self._dir(job_id))

    def list(self, kind: str | None = None, owner: str | None = None) -> list[JobRecord]:
        """All jobs, newest first (optionally of one kind / owner)."""
        self._schedule()
        out = []
        for job_dir in self._job_dirs():
            try:
                rec = self._record(job_dir)
            except JobError:
                continue
            if (kind is None or rec.kind in (kind, UNKNOWN)) and (owner is None or rec.owner == owner):  # a record of unknown kind is shown everywhere
                out.append(rec)
        return sorted(out, key=lambda r: (r.created or 0, r.id), reverse=True)

    def cancel(self, job_id: str, *, force: bool = False) -> None:
        """Cancel a queued job at once, or ask a running one to stop (within one batch for training).

        ``force=True`` also sends SIGTERM to a running worker (for a job stuck inside one long step).
        Cancelling a finished job does nothing.
        """
        job_dir = self._dir(job_id)
        if not (job_dir / JOB_FILE).exists():
            raise JobNotFoundError(f"No job '{job_id}'.")
        (job_dir / CANCEL_FILE).touch()
        with _locked(job_dir / ".lock"):
            st = _state_of(job_dir) or {}
            if st.get("state") == "queued":
                st.update(state="cancelled", finished=time.time(), error=None)
                _write_json(job_dir / STATE_FILE, st)
                _append(job_dir / LOG_FILE, "cancelled before it started")
            elif st.get("state") == "running" and force and _pid_alive(st.get("pid"), st.get("pid_start")):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(st["pid"], signal.SIGTERM)

    def log_tail(self, job_id: str, n: int = 50) -> str:
        return _tail(self._dir(job_id) / LOG_FILE, n)

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> JobRecord:
        """Block until the job is finished (or ``timeout`` seconds passed); the last record."""
        return wait_until_done(self, job_id, timeout, poll_s)

    # -- internals
    def _job_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and (p / JOB_FILE).exists()]

    def _record(self, job_dir: Path) -> JobRecord:
        return read_record(job_dir)

    def _schedule(self) -> None:
        """Mark vanished workers failed, then start queued jobs (oldest first) while slots are free."""
        for pid, proc in list(_CHILDREN.items()):  # reap our finished workers (no zombies)
            if proc.poll() is not None:
                del _CHILDREN[pid]
        if not self.root.is_dir():
            return
        with self._lock():
            running, queued = 0, []
            for job_dir in self._job_dirs():
                if _job_problem(_read_json(job_dir / JOB_FILE)):
                    continue  # a damaged record is listed as such, never run
                st = _state_of(job_dir) or {}
                state = st.get("state")
                if state == "running":
                    if _pid_alive(st.get("pid"), st.get("pid_start")):
                        running += 1
                    else:
                        self._mark_lost(job_dir)
                elif state == "queued":
                    queued.append((_seconds((_read_json(job_dir / JOB_FILE, {}) or {}).get("created")) or 0, job_dir))
            for _, job_dir in sorted(queued, key=lambda t: (t[0], t[1].name)):
                if running >= self.slots:
                    break
                if self._launch(job_dir):
                    running += 1

    def _mark_lost(self, job_dir: Path) -> None:
        with _locked(job_dir / ".lock"):
            st = _state_of(job_dir) or {}
            if st.get("state") != "running" or _pid_alive(st.get("pid"), st.get("pid_start")):
                return  # it finished (or is alive) after all
            msg = f"The worker process (pid {st.get('pid')}) is gone: it was killed or crashed without reporting (out of memory?)."
            st.update(state="failed", finished=time.time(), error=msg)
            _write_json(job_dir / STATE_FILE, st)
            _append(job_dir / LOG_FILE, f"FAILED: {msg}")

    def _launch(self, job_dir: Path) -> bool:
        with _locked(job_dir / ".lock"):
            st = _state_of(job_dir) or {}
            if st.get("state") != "queued":
                return False
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
            env["HISTODASH_JOBS_DIR"] = str(self.root)
            env["HISTODASH_JOB_SLOTS"] = str(self.slots)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            try:
                with open(job_dir / LOG_FILE, "ab") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "engine.jobs", "_worker", str(job_dir)],
                        cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True, close_fds=True,
                    )
            except OSError as exc:
                st.update(state="failed", finished=time.time(), error=f"Could not start the worker process: {exc}")
                _write_json(job_dir / STATE_FILE, st)
                return False
            _CHILDREN[proc.pid] = proc
            st.update(state="running", pid=proc.pid, pid_start=_proc_start(proc.pid), started=time.time())
            _write_json(job_dir / STATE_FILE, st)
            return True


_CHILDREN: dict[int, subprocess.Popen] = {}  # keeps Popen objects alive so finished workers can be reaped


def _append(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")


def get_runner() -> JobRunner:
    """The configured runner (``settings.runner``, ``HISTODASH_RUNNER``): the embedded :class:`LocalProcessRunner` on
    ``settings.jobs_dir`` (default), or :class:`engine.ray_runner.RayRunner` on the cluster at ``settings.ray_address``
    (imported only then: the local runner needs no Ray)."""
    settings = get_settings()
    if settings.runner == "ray":
        from engine.ray_runner import RayRunner

        return RayRunner(settings.ray_address)
    return LocalProcessRunner()


# ----------------------------------------------------------------------------- the worker process


def _finish(job_dir: Path, **update) -> None:
    with _locked(job_dir / ".lock"):
        st = _state_of(job_dir) or {}
        st.update(finished=time.time(), **update)
        _write_json(job_dir / STATE_FILE, st)


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Cancelled("terminated (SIGTERM)")


def claim(job_dir: Path, **info) -> bool:
    """Mark a job running in this process (``info``: more of ``state.json``); False when it has already ended."""
    with _locked(job_dir / ".lock"):
        st = _state_of(job_dir) or {}
        if st.get("state") in FINISHED:
            return False
        st.update(state="running", pid=os.getpid(), started=st.get("started") or time.time(), **info)
        _write_json(job_dir / STATE_FILE, st)
    return True


def execute(job_dir: Path, ctx: JobContext, call, *, cause=lambda exc: exc, cancel_wins: bool = False, echo_traceback: bool = False) -> int:
    """Run ``call()`` (the job function) and record how it ended; returns the exit code (0, or 1 when it failed).

    Args:
        cause: the job's own exception inside a wrapper (a Ray task's error); a wrapped one brought its traceback along.
        cancel_wins: a failure after a cancel request counts as cancelled (what the cancel broke on its way).
        echo_traceback: also print a failure's traceback on stderr (a Ray driver: Ray's job log is its output).
    """
    try:
        ctx.raise_if_cancelled()
        result = call()
        try:
            result = json.loads(json.dumps(result if result is not None else {}, default=_jsonable))
        except (TypeError, ValueError) as exc:
            raise JobError(f"The job's result is not JSON-serialisable ({exc}).") from exc
        ctx.log("succeeded")  # the log line first: whoever sees the final state sees the whole log
        _finish(job_dir, state="succeeded", result=result, error=None)
    except BaseException as exc:  # noqa: BLE001 - every ending is recorded, a failure with its traceback in the log
        own = cause(exc)
        if isinstance(own, Cancelled) or (cancel_wins and ctx.cancelled()):
            ctx.log(f"cancelled ({own})")
            _finish(job_dir, state="cancelled", error=None)
            return 0
        message = str(own) if isinstance(own, HistoDashError) else f"{type(own).__name__}: {own}"
        if own is exc:
            text = traceback.format_exc()
            with open(job_dir / LOG_FILE, "a") as fh:
                fh.write(text)
            if echo_traceback:
                print(text, file=sys.stderr, flush=True)
        ctx.log(f"FAILED: {message}")
        _finish(job_dir, state="failed", error=message)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def run_worker(job_dir: Path | str) -> int:
    """Run one job in this process (``python -m engine.jobs _worker DIR``) and record how it ended."""
    job_dir = Path(job_dir)
    job = _read_json(job_dir / JOB_FILE)
    if not job:
        print(f"no job in {job_dir}", file=sys.stderr)
        return 2
    if not claim(job_dir, pid_start=_proc_start(os.getpid())):
        return 0
    # SIGTERM (cancel with force, or a shutdown) → cancelled, with the log kept
    signal.signal(signal.SIGTERM, _on_sigterm)
    ctx = JobContext(job_dir, job.get("params"))
    ctx.log(f"job {job['id']} ({job['kind']}) started in pid {os.getpid()}")
    code = execute(job_dir, ctx, lambda: _resolve(job.get("target") or JOB_KINDS[job["kind"]])(job.get("params") or {}, ctx))
    # hand the slot on: start the next queued job (if any) before this process ends
    with contextlib.suppress(Exception):
        LocalProcessRunner(job_dir.parent)._schedule()
    return code


def _jsonable(value):
    import numpy as np  # noqa: PLC0415 - only for numpy scalars/arrays in results

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# ----------------------------------------------------------------------------- formatting (pages and the CLI)


def describe_progress(rec: JobRecord) -> str:
    p = rec.progress
    if not p:
        return ""
    text = f"{p.get('done', 0)}/{p.get('total', 0)}"
    if p.get("message"):
        text += f" {p['message']}"
    if rec.active and p.get("eta_s") is not None:
        text += f" (ETA {format_duration(p['eta_s'])})"
    return text


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# ----------------------------------------------------------------------------- the worker entry point


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "_worker":
        return run_worker(argv[1])
    print("usage: python -m engine.jobs _worker JOB_DIR   (internal; use `python -m engine jobs …`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # Re-enter through the imported module so this module's globals (_CHILDREN, the runner) are the ones job code sees.
    import engine.jobs as _jobs

    sys.exit(_jobs.main())
