"""Test doubles that keep to the engine's contracts (each checked against the real thing in tests/engine/test_fakes.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import Cancelled


@dataclass
class Recorded:
    """What a :class:`FakeContext` was told: progress calls ``(done, total, message, extra)``, status messages, metric rows, log lines."""

    progress: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    logs: list = field(default_factory=list)

    @property
    def last_metrics(self) -> dict:
        """All metric rows merged (later values win)."""
        out: dict = {}
        for row in self.metrics:
            out.update(row)
        return out


class FakeContext:
    """An in-memory :class:`engine.jobs.JobContext`: the same public methods with the same signatures.

    Everything the job reports lands in :attr:`recorded`. Cancellation is driven by the test:
    ``cancel_when(ctx)`` is asked on every :meth:`cancelled` check (e.g. ``lambda ctx: len(ctx.recorded.progress) > 3``),
    or :attr:`cancel_event` is set from the test's thread.

    Args:
        job_dir: the job's folder; ``workdir`` is ``job_dir/work`` (created), as for the real context.
        params: the job's parameters.
        throttle_s: kept for the same surface; nothing is throttled here.
        cancel_when: a predicate of this context that turns cancellation on.
    """

    def __init__(self, job_dir: Path | str, params: dict | None = None, *, throttle_s: float = 0.5,
                 cancel_when: Callable[[FakeContext], bool] | None = None):
        self.job_dir = Path(job_dir)
        self.job_id = self.job_dir.name
        self.workdir = self.job_dir / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.params = dict(params or {})
        self.throttle_s = throttle_s
        self.recorded = Recorded()
        self.cancel_event = threading.Event()
        self._cancel_when = cancel_when
        self._message = ""
        self._state: tuple[int, int, dict] = (0, 0, {})

    # -- reporting
    def progress(self, done: int, total: int, message: str | None = None, **extra) -> None:
        if message is None:
            message = self._message
        self._message = message
        self._state = (int(done), int(total), dict(extra))
        self.recorded.progress.append((int(done), int(total), message, dict(extra)))

    def status(self, message: str) -> None:
        self.recorded.statuses.append(str(message))
        done, total, extra = self._state
        self.progress(done, total, str(message), **extra)

    def metric(self, **values) -> None:
        self.recorded.metrics.append(dict(values))

    def log(self, message: str) -> None:
        self.recorded.logs.append(str(message))

    # -- cancellation
    def cancelled(self) -> bool:
        if not self.cancel_event.is_set() and self._cancel_when is not None and self._cancel_when(self):
            self.cancel_event.set()
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled(f"job {self.job_id} was cancelled")
