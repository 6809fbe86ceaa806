"""How long work reports back: one contract for every engine function, page, CLI and job.

>>> def progress(done: int, total: int) -> None: ...      # units done of total (tiles, batches)
>>> def status(message: str) -> None: ...                # a sentence for the user, e.g. the queue place
>>> predictor.predict_paths(paths, progress=progress)
>>> compute_heatmap(path, progress=progress, status=status)

* :class:`Progress` — ``progress(done, total)``: called with the units done so far and the total,
  ``0 ≤ done ≤ total``, non-decreasing within one run; the last call of a run that finished has
  ``done == total``. Cheap to call; callers throttle if they must.
* :class:`Status` — the optional message channel, ``status(message)``: what is happening now in
  words (``"waiting for a free inference slot: 2nd in line"``, ``"120 of 480 tiles from the cache"``).
  A status message never carries numbers the progress callback needs, and progress is never
  abused to carry a message (no ``progress(0, 0, text)``).

Both are optional everywhere (``None``: nobody listens). A job's :class:`engine.jobs.JobContext`
offers both (``ctx.progress``, ``ctx.status``), so it can be passed straight through. Stopping is
the other direction and has one exception, :class:`engine.errors.Cancelled`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """``progress(done, total)``: ``done`` of ``total`` units finished."""

    def __call__(self, done: int, total: int, /) -> None: ...


@runtime_checkable
class Status(Protocol):
    """``status(message)``: a plain-language sentence about what is happening now."""

    def __call__(self, message: str, /) -> None: ...


def report(progress: Progress | None, done: int, total: int) -> None:
    """Call ``progress(done, total)`` when somebody listens."""
    if progress is not None:
        progress(int(done), int(total))


def say(status: Status | None, message: str) -> None:
    """Call ``status(message)`` when somebody listens."""
    if status is not None:
        status(str(message))
