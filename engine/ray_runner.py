"""The Ray backend of the job seam: :class:`RayRunner`, the same :class:`engine.jobs.JobRunner` protocol as
:class:`engine.jobs.LocalProcessRunner`, on a Ray cluster.

>>> from engine.ray_runner import RayRunner
>>> runner = RayRunner("http://head:8265")       # HISTODASH_RAY_ADDRESS (Ray's RAY_ADDRESS also works)
>>> job_id = runner.submit("cohort", {...})        # the same verbs, the same JobRecord, the same pages

Who does what:

* **Lifecycle: Ray's Jobs API.** :meth:`RayRunner.submit` hands Ray's job server one entrypoint,
  ``python -m engine.ray_runner _driver <job dir>``, under the HistoDash job id as Ray's submission id;
  Ray runs it on the head node, queues it (``PENDING`` → ``queued``), stops it (:meth:`RayRunner.cancel` →
  ``stop_job``: SIGTERM, SIGKILL after 3 s) and keeps its output (:meth:`RayRunner.log_tail` reads
  ``get_job_logs``).
* **Records: files on the head,** as the local runner's (``job.json``, ``state.json``, ``progress.json``,
  ``metrics.jsonl``, ``log.txt``, ``cancel``) but in ``<jobs dir>/ray/`` so that the local runner never
  schedules them. The driver runs on the head, next to them, and reports through an ordinary
  :class:`engine.jobs.JobContext`; a finished job's record is read without asking Ray at all.
* **Heavy work: Ray Core.** A job function marked ``runs_on_driver = True`` (the cohort job) runs in
  the driver and fans out over the cluster itself, with actors (:mod:`engine.cohort.ray_executor`).
  Every other kind (training, a single heatmap, …) runs as **one Ray task** on one node, with
  ``params["num_cpus"]`` (default 1) and ``params["num_gpus"]`` (default 0); it reports through a small
  relay actor pinned to the head, which writes the same record files, and it is killed on cancel.
  Ray Train's TensorFlow trainer is not used (it forces legacy Keras 2), nor Ray Data.

Every node must have HistoDash at the same path (the same image: ``PYTHONPATH`` is set to this
checkout for the job), the slide library mounted at the same place, and Ray of the same version.
This module imports Ray only inside the functions that need it; the local runner never imports it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from engine.config import REPO_ROOT, get_settings
from engine.errors import Cancelled, JobError, JobNotFoundError
from engine.jobs import (
    CANCEL_FILE,
    FINISHED,
    JOB_FILE,
    JOB_KINDS,
    LOG_FILE,
    STATE_FILE,
    JobContext,
    JobRecord,
    _jsonable,
    _locked,
    _read_json,
    _resolve,
    _tail,
    _write_json,
    check_submission,
    claim,
    create_job,
    execute,
    read_record,
    validate_job_id,
    wait_until_done,
)

log = logging.getLogger(__name__)

#: the records of Ray jobs live in this sub-folder of the jobs folder (the local runner ignores it).
RAY_SUBDIR = "ray"
#: Ray job status → HistoDash state.
RAY_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "cancelled"}
#: environment variables handed to the driver and to every worker of a job (besides ``HISTODASH_*``).
PASSED_ENV = ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS")
_ENV_LOCK = threading.Lock()


class RayUnavailableError(JobError):
    """The Ray cluster cannot be reached (or Ray is not installed)."""

    default_hint = ("Check that the Ray head runs and HISTODASH_RAY_ADDRESS names its Jobs address (http://<head>:8265), "
                    "or set HISTODASH_RUNNER=local to run jobs on this machine.")


def configured_address() -> str | None:
    """The Jobs/dashboard address of the cluster: ``settings.ray_address`` (``HISTODASH_RAY_ADDRESS``), else None
    (Ray's ``RAY_ADDRESS`` then applies)."""
    return get_settings().ray_address


@contextlib.contextmanager
def _ray_address_env_masked(active: bool):
    """Ray's job client lets ``RAY_ADDRESS`` override the address it is given: while it resolves an explicit
    HistoDash address, the variable is set aside (and put back)."""
    if not active:
        yield
        return
    with _ENV_LOCK:
        saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def job_environment() -> dict[str, str]:
    """What the driver and the workers of a job get: this checkout on ``PYTHONPATH`` and the ``HISTODASH_*`` variables
    of this process, passed through unread (the driver's own :func:`~engine.config.get_settings` reads them)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("HISTODASH_") or k in PASSED_ENV}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["HISTODASH_RUNNER"] = "ray"
    return env


# ----------------------------------------------------------------------------- the runner


class RayRunner:
    """Jobs on a Ray cluster; records under ``<jobs dir>/ray`` on this (the head) machine.

    Args:
        address: the cluster's Jobs address (``http://head:8265``) or anything Ray's ``JobSubmissionClient``
            takes (``auto``, a GCS ``host:port``); default ``HISTODASH_RAY_ADDRESS``, else Ray's ``RAY_ADDRESS``.
        root: the records folder (default ``settings.jobs_dir / "ray"``).
        client: an already connected ``JobSubmissionClient`` (tests).
    """

    backend = "ray"

    def __init__(self, address: str | None = None, root: Path | str | None = None, *, client=None):
        self.address = address if address is not None else configured_address()
        self.root = Path(root) if root is not None else get_settings().jobs_dir / RAY_SUBDIR
        self._client = client

    # -- Ray
    @property
    def client(self):
        """Ray's ``JobSubmissionClient`` (connected on first use; raises :class:`RayUnavailableError`)."""
        if self._client is None:
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError as exc:
                raise RayUnavailableError("Ray is not installed on this server (pip install 'ray[default]').") from exc
            try:
                with _ray_address_env_masked(self.address is not None):
                    self._client = JobSubmissionClient(self.address)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError from Ray
                raise RayUnavailableError(f"The Ray cluster at {self.address or os.environ.get('RAY_ADDRESS') or '(auto)'} cannot be reached: {_short(exc)}") from exc
        return self._client

    def _dir(self, job_id: str) -> Path:
        return self.root / validate_job_id(job_id)

    # -- JobRunner
    def submit(self, kind: str, params: dict, *, owner: str | None = None) -> str:
        """Hand one job to the cluster; it starts when Ray has room for its driver. Returns the job id."""
        params = check_submission(kind, params)
        client = self.client  # fail before writing anything when the cluster is away
        job_dir = create_job(self.root, kind, params, owner, backend="ray", address=self.address)
        job_id = job_dir.name
        entrypoint = f"exec {shlex.quote(sys.executable)} -m engine.ray_runner _driver {shlex.quote(str(job_dir.resolve()))}"
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env={"env_vars": job_environment()},
                              metadata={"histodash_kind": kind, "histodash_owner": owner or ""})
        except Exception as exc:  # noqa: BLE001 - the record says why, and so does the error
            message = f"The Ray cluster did not accept the job: {_short(exc)}"
            _update_state(job_dir, state="failed", finished=time.time(), error=message)
            raise RayUnavailableError(message) from exc
        return job_id

    def get(self, job_id: str) -> JobRecord:
        job_dir = self._dir(job_id)
        if not (job_dir / JOB_FILE).exists():
            raise JobNotFoundError(f"No job '{job_id}'.")
        return self._record(job_dir)

    def list(self, kind: str | None = None, owner: str | None = None) -> list[JobRecord]:
        """All Ray jobs recorded here, newest first (one call to Ray for all the active ones)."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and (p / JOB_FILE).exists()]
        statuses = None
        if any((_read_json(p / STATE_FILE, {}) or {}).get("state") not in FINISHED for p in dirs):
            statuses = self._statuses()
        out = []
        for job_dir in dirs:
            try:
                rec = self._record(job_dir, statuses)
            except JobError:
                continue
            if (kind is None or rec.kind == kind) and (owner is None or rec.owner == owner):
                out.append(rec)
        return sorted(out, key=lambda r: (r.created or 0, r.id), reverse=True)

    def cancel(self, job_id: str, *, force: bool = False) -> None:  # noqa: ARG002 - Ray always ends with SIGKILL after its grace period
        """Ask the job to stop: the cancel flag (seen by the job within a batch) and Ray's ``stop_job`` (SIGTERM, then
        SIGKILL after Ray's grace period), which also ends its actors and tasks. A finished job is left as it is."""
        job_dir = self._dir(job_id)
        if not (job_dir / JOB_FILE).exists():
            raise JobNotFoundError(f"No job '{job_id}'.")
        (job_dir / CANCEL_FILE).touch()
        st = _read_json(job_dir / STATE_FILE, {}) or {}
        if st.get("state") in FINISHED:
            return
        try:
            self.client.stop_job(job_id)
        except RayUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. Ray no longer knows the job
            log.warning("stop_job(%s) failed: %s", job_id, _short(exc))
        if st.get("state") == "queued":  # stopped before its driver ran: nothing else will record it
            status = self._status(job_id)
            if status in ("STOPPED", None):
                _update_state(job_dir, only_if_active=True, state="cancelled", finished=time.time(), error=None)
                _append(job_dir / LOG_FILE, "cancelled before it started")

    def log_tail(self, job_id: str, n: int = 50) -> str:
        """The last ``n`` lines of the job's output as Ray's job server keeps it (the driver's and its workers'),
        else of the record's own log file."""
        job_dir = self._dir(job_id)
        try:
            text = self.client.get_job_logs(job_id)
        except Exception:  # noqa: BLE001 - cluster away or job forgotten (cluster restarted): the file on the head
            return _tail(job_dir / LOG_FILE, n)
        lines = text.splitlines()
        return "\n".join(lines[-n:]) if n > 0 else ""

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> JobRecord:
        """Block until the job is finished (or ``timeout`` seconds passed); the last record."""
        return wait_until_done(self, job_id, timeout, poll_s)

    # -- internals
    def _status(self, job_id: str) -> str | None:
        """Ray's status of the job (``PENDING``…), None when Ray does not know it; raises when the cluster is away."""
        client = self.client
        try:
            return str(client.get_job_status(job_id).value)
        except Exception as exc:  # noqa: BLE001
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise RayUnavailableError(f"The Ray cluster did not answer about job {job_id}: {_short(exc)}") from exc

    def _statuses(self) -> dict[str, tuple[str, str]] | None:
        try:
            return {d.submission_id: (str(d.status.value), d.message or "") for d in self.client.list_jobs() if d.submission_id}
        except Exception as exc:  # noqa: BLE001 - records are shown as last written
            log.warning("Ray jobs cannot be listed: %s", _short(exc))
            return None

    def _record(self, job_dir: Path, statuses: dict | None = None) -> JobRecord:
        if not (job_dir / JOB_FILE).exists():
            raise JobNotFoundError(f"No job '{job_dir.name}'.")
        st = _read_json(job_dir / STATE_FILE, {}) or {}
        if st.get("state") not in FINISHED:
            st = self._reconcile(job_dir, st, statuses)
        return read_record(job_dir, st)

    def _reconcile(self, job_dir: Path, st: dict, statuses: dict | None) -> dict:
        """An unfinished record, brought up to date with Ray's view (and persisted once Ray says it ended)."""
        job_id = job_dir.name
        if statuses is not None:
            status, message = statuses.get(job_id, (None, ""))
        else:
            try:
                status, message = self._status(job_id), ""
            except RayUnavailableError as err:
                log.warning("%s", err)
                return st
        if status is None:
            if st.get("state") == "queued" and time.time() - (_read_json(job_dir / JOB_FILE, {}) or {}).get("created", 0) < 30:
                return st  # just submitted: Ray may not list it yet
            status, message = "FAILED", "Ray does not know this job (the cluster was restarted?)."
        state = RAY_STATES.get(status, "running")
        if state in ("queued", "running"):
            return dict(st, state="running" if st.get("state") == "running" else state)
        # Ray says it ended but the driver did not record how (killed by stop_job's SIGKILL, out of memory, node lost)
        if not message and state == "failed":
            with contextlib.suppress(Exception):
                message = self.client.get_job_info(job_id).message or ""
        update = {"state": state, "finished": time.time()}
        if state == "failed":
            update["error"] = f"The job's driver ended without a result ({message or 'no message from Ray'})."
        elif state == "succeeded":  # exit 0 without a record: treat as failed, the result is missing
            update.update(state="failed", error="The job's driver ended without recording a result.")
        _update_state(job_dir, only_if_active=True, **update)
        return _read_json(job_dir / STATE_FILE, {}) or dict(st, **update)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _append(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")


def _update_state(job_dir: Path, *, only_if_active: bool = False, **update) -> None:
    with _locked(job_dir / ".lock"):
        st = _read_json(job_dir / STATE_FILE, {}) or {}
        if only_if_active and st.get("state") in FINISHED:
            return
        st.update(update)
        _write_json(job_dir / STATE_FILE, st)


# ----------------------------------------------------------------------------- the driver (on the head)


_STOPPED = threading.Event()  # set by SIGTERM (Ray's stop_job)


class DriverContext(JobContext):
    """The :class:`JobContext` of a job's driver: ``backend = "ray"``; log lines also go to stdout (Ray's job log);
    SIGTERM (Ray's ``stop_job``) counts as a cancel request."""

    backend = "ray"

    def log(self, message: str) -> None:
        super().log(message)
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def cancelled(self) -> bool:
        return _STOPPED.is_set() or super().cancelled()


def _on_sigterm(signum, frame):  # noqa: ARG001 - Ray's stop_job
    """Only a flag: an exception raised from a signal handler inside Ray's C++ calls turns into a SystemError.
    The job sees it at its next ``ctx.cancelled()`` check (within a batch); Ray sends SIGKILL after 3 s anyway."""
    _STOPPED.set()


def run_driver(job_dir: Path | str) -> int:
    """Run one job as the driver of a Ray job (``python -m engine.ray_runner _driver DIR``) and record how it ended."""
    job_dir = Path(job_dir)
    job = _read_json(job_dir / JOB_FILE)
    if not job:
        print(f"no job in {job_dir}", file=sys.stderr)
        return 2
    if not claim(job_dir, node=socket.gethostname()):
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    ctx = DriverContext(job_dir, job.get("params"))
    ctx.log(f"job {job['id']} ({job['kind']}) started as a Ray driver in pid {os.getpid()} on {socket.gethostname()}")
    target, params = job.get("target") or JOB_KINDS[job["kind"]], job.get("params") or {}

    def call():
        fn = _resolve(target)
        import ray

        ray.init(namespace="histodash", log_to_driver=True, configure_logging=False)
        signal.signal(signal.SIGTERM, _on_sigterm)  # ray.init installs its own (sys.exit): a stop is a cancel here
        return fn(params, ctx) if getattr(fn, "runs_on_driver", False) else run_as_task(target, params, ctx)

    try:
        return execute(job_dir, ctx, call, cause=_cause, cancel_wins=True, echo_traceback=True)
    finally:
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()


def _cause(exc: BaseException) -> BaseException:
    """The job's own exception inside Ray's wrapper (``RayTaskError.cause``)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and isinstance(exc.cause, BaseException) and seen < 5:
        exc, seen = exc.cause, seen + 1
    return exc


# ----------------------------------------------------------------------------- other kinds: one Ray task


class RemoteContext:
    """A job context inside a Ray task on any node: the :class:`JobContext` verbs, sent to the relay actor on the head.

    ``workdir`` is a scratch folder on the task's own node (removed when the task ends); results the job
    writes elsewhere (a trained model in the models folder) need that folder to be shared by the nodes.
    """

    backend = "ray-task"

    def __init__(self, relay, job_id: str, params: dict, *, throttle_s: float = 0.25):
        self._relay = relay
        self.job_id = job_id
        self.params = dict(params or {})
        self.workdir = Path(tempfile.mkdtemp(prefix=f"histodash-{job_id}-"))
        self.job_dir = self.workdir
        self.throttle_s = throttle_s
        self._last = (0.0, None)
        self._state = (0, 0, {})
        self._cancel_checked = 0.0
        self._cancel_seen = False

    def progress(self, done: int, total: int, message: str | None = None, **extra) -> None:
        now = time.monotonic()
        if message is None:
            message = self._last[1] or ""
        self._state = (int(done), int(total), dict(extra))
        if now - self._last[0] < self.throttle_s and message == self._last[1] and done < total:
            return
        self._last = (now, message)
        self._relay.progress.remote(int(done), int(total), message, extra)

    def status(self, message: str) -> None:
        done, total, extra = self._state
        self.progress(done, total, str(message), **extra)

    def metric(self, **values) -> None:
        self._relay.metric.remote(json.loads(json.dumps(values, default=_jsonable)))

    def log(self, message: str) -> None:
        self._relay.log.remote(str(message))

    def cancelled(self) -> bool:
        if self._cancel_seen:
            return True
        now = time.monotonic()
        if now - self._cancel_checked >= 0.2:
            import ray

            self._cancel_checked = now
            self._cancel_seen = bool(ray.get(self._relay.cancelled.remote()))
        return self._cancel_seen

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled(f"job {self.job_id} was cancelled")


class _Relay:
    """Ray actor on the head (made remote by :func:`_remote_defs`): a task's reports into the job's record files."""

    def __init__(self, job_dir: str, params: dict):
        self.ctx = JobContext(Path(job_dir), params)
        self.lines: list[str] = []

    def progress(self, done, total, message, extra):
        self.ctx.progress(done, total, message, **(extra or {}))

    def metric(self, values):
        self.ctx.metric(**values)

    def log(self, message):
        self.ctx.log(message)
        self.lines.append(f"[{time.strftime('%H:%M:%S')}] {message}")

    def text(self, text):
        with open(self.ctx.job_dir / LOG_FILE, "a") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
        self.lines.append(text.rstrip("\n"))

    def drain(self, keep: bool = False) -> list[str]:
        """The log lines since the last call (the driver prints them: Ray's job log then has them in order);
        ``keep``: only a barrier (a task's reports before it are processed), the lines stay for the driver."""
        if keep:
            return []
        lines, self.lines = self.lines, []
        return lines

    def cancelled(self):
        return self.ctx.cancelled()


def _task_body(target: str, params: dict, relay, job_id: str):
    import ray

    ctx = RemoteContext(relay, job_id, params)
    try:
        ctx.log(f"running on node {socket.gethostname()} in pid {os.getpid()}")
        return _resolve(target)(params, ctx)
    except BaseException as exc:
        if not (isinstance(exc, Cancelled)):
            relay.text.remote(traceback.format_exc())  # the job's own traceback, into its log
        raise
    finally:
        with contextlib.suppress(Exception):
            ray.get(relay.drain.remote(keep=True), timeout=10)  # this task's reports are all written before it returns
        shutil.rmtree(ctx.workdir, ignore_errors=True)


_REMOTE: dict = {}


def _remote_defs():
    """``(relay actor class, task function)`` as Ray remotes, made once per process (Ray is imported here only)."""
    if not _REMOTE:
        import ray

        _REMOTE["relay"] = ray.remote(num_cpus=0)(_Relay)
        _REMOTE["task"] = ray.remote(_task_body)
    return _REMOTE["relay"], _REMOTE["task"]


def head_affinity():
    """A scheduling strategy that keeps an actor on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def run_as_task(target: str, params: dict, ctx: JobContext, poll_s: float = 0.25):
    """Run a job function as one Ray task (``params['num_cpus']``, default 1; ``params['num_gpus']``, default 0);
    its reports reach ``ctx`` through a relay actor on this node; cancel kills the task."""
    import ray

    relay_cls, task = _remote_defs()
    relay = relay_cls.options(scheduling_strategy=head_affinity()).remote(str(ctx.job_dir), ctx.params)
    options = {"num_cpus": float(params.get("num_cpus", 1)), "num_gpus": float(params.get("num_gpus", 0)), "max_retries": 0}
    if params.get("resources"):
        options["resources"] = {str(k): float(v) for k, v in dict(params["resources"]).items()}
    ref = task.options(**options).remote(target, params, relay, ctx.job_id)

    pending = [relay.drain.remote()]  # the relay's log lines, fetched without ever blocking on the relay

    def echo(wait_s: float = 0.0) -> None:
        done, _ = ray.wait(pending, timeout=wait_s)
        if done:
            for line in ray.get(pending[0]):
                print(line, flush=True)
            pending[0] = relay.drain.remote()

    ended = False
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=poll_s)
            echo()
            if ready:
                ended = True
                return ray.get(ref)
            ctx.raise_if_cancelled()
    except BaseException:
        if not ended:  # cancelling a task that already ended trips a check in Ray's core worker and kills this driver
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        with contextlib.suppress(Exception):
            echo(30.0)
            echo(30.0)  # the task's last reports (it waited for the relay to take them before returning)
        with contextlib.suppress(Exception):
            ray.kill(relay)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "_driver":
        return run_driver(argv[1])
    print("usage: python -m engine.ray_runner _driver JOB_DIR   (internal: RayRunner's job entrypoint)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    import engine.ray_runner as _self  # the imported module, so exception classes are the ones job code raises

    sys.exit(_self.main())
