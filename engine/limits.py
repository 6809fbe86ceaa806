"""One global limit on concurrent heavy inference, across every process on this machine.

>>> from engine.limits import inference_slot
>>> with inference_slot(on_wait=lambda place: print(f"waiting: {ordinal(place)} in line")):
...     predictor.predict_paths(paths)

``N = settings.max_concurrent_inference`` (``HISTODASH_MAX_CONCURRENT_INFERENCE``, default 2) slots
are ``N`` lock files under ``<home>/locks/inference/``; holding a slot is holding an exclusive
``flock`` on one of them. The kernel drops a ``flock`` when its process dies (killed, out of
memory), so a dead holder never keeps its slot.

Waiting is a fair (first come, first served) queue: a waiter creates a ticket file
``queue/<sequence>-<pid>`` and holds a ``flock`` on it while it waits; only the first live ticket
may take a free slot. Tickets whose lock can be taken belong to dead waiters and are removed.
Ticket creation, the position check and the slot attempt happen under one short lock
(``queue.lock``), so they are atomic with respect to other processes. ``on_wait(place)`` is called
with the 1-based place in line whenever it changes and about once a second while waiting (so a
caller can check for cancellation; an exception it raises abandons the wait cleanly).

Nested use on one thread is re-entrant (the inner block does not take a second slot), so a
function that takes a slot may call another that takes one too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.config import get_settings
from engine.errors import SlotTimeoutError

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.1
REPEAT_S = 1.0  # on_wait is called again this often while the place stays the same


def ordinal(n: int) -> str:
    """``1 → "1st"``, ``2 → "2nd"``, ``11 → "11th"``, ``23 → "23rd"``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def wait_message(place: int) -> str:
    """What a page or a job log shows while waiting."""
    return f"waiting for a free inference slot: {ordinal(place)} in line"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


class InferenceLimiter:
    """``slots`` concurrent holders across processes, with a fair queue (module docstring).

    Args:
        root: folder for the lock files (default ``<home>/locks/inference``).
        slots: how many may hold a slot at once (default ``settings.max_concurrent_inference``).
        poll_s: how often a waiter looks again.
    """

    def __init__(self, root: Path | str | None = None, slots: int | None = None, *, poll_s: float = DEFAULT_POLL_S):
        settings = get_settings()
        self.root = Path(root) if root is not None else settings.home / "locks" / "inference"
        self.slots = max(1, int(slots if slots is not None else settings.max_concurrent_inference))
        self.poll_s = float(poll_s)
        self.queue_dir = self.root / "queue"

    # -- files
    def _setup(self) -> None:
        self.queue_dir.mkdir(parents=True, exist_ok=True)

    def _guard(self):
        return _held(self.root / "queue.lock")

    def _next_sequence(self) -> int:
        """A counter kept in a file (called under the queue lock)."""
        path = self.root / "sequence"
        try:
            value = int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            value = 0
        value += 1
        tmp = path.with_name(f".sequence.{os.getpid()}.tmp")
        tmp.write_text(str(value))
        os.replace(tmp, path)
        return value

    def _live_tickets(self, mine: str | None = None) -> list[str]:
        """Ticket names in order, dropping (and deleting) those whose waiter is gone. Under the queue lock."""
        live = []
        for name in sorted(os.listdir(self.queue_dir)):
            if name.startswith("."):
                continue
            if name == mine:
                live.append(name)
                continue
            path = self.queue_dir / name
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if _try_lock(fd):  # nobody holds it: its waiter died
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    continue
            finally:
                os.close(fd)
            live.append(name)
        return live

    def _try_slot(self) -> int | None:
        """An fd holding one free slot's lock, or None when all are taken."""
        for i in range(self.slots):
            fd = os.open(self.root / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if _try_lock(fd):
                return fd
            os.close(fd)
        return None

    # -- public
    def acquire(self, *, on_wait: Callable[[int], None] | None = None, timeout: float | None = None) -> int:
        """Wait for a slot (fairly); returns the fd that holds it (give it to :meth:`release`)."""
        self._setup()
        ticket = ticket_fd = None
        try:
            with self._guard():
                if not self._live_tickets():
                    fd = self._try_slot()
                    if fd is not None:
                        return fd
                ticket = f"{self._next_sequence():012d}-{os.getpid()}-{threading.get_ident()}"
                ticket_fd = os.open(self.queue_dir / ticket, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fcntl.flock(ticket_fd, fcntl.LOCK_EX)
            deadline = None if timeout is None else time.monotonic() + timeout
            reported, last_call = None, 0.0
            while True:
                with self._guard():
                    tickets = self._live_tickets(mine=ticket)
                    place = tickets.index(ticket) + 1 if ticket in tickets else 1
                    fd = self._try_slot() if place == 1 else None
                    if fd is not None:
                        return fd
                if place != reported or time.monotonic() - last_call >= REPEAT_S:
                    reported, last_call = place, time.monotonic()
                    if on_wait is not None:
                        on_wait(place)  # may raise (a cancelled job, a Streamlit rerun): the ticket is removed
                if deadline is not None and time.monotonic() >= deadline:
                    raise SlotTimeoutError(f"No inference slot became free within {timeout:.0f} s ({self.slots} run at once).")
                time.sleep(self.poll_s)
        finally:
            if ticket is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.queue_dir / ticket).unlink()
            if ticket_fd is not None:
                os.close(ticket_fd)

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def waiting(self) -> int:
        """How many are waiting now (for status displays)."""
        self._setup()
        with self._guard():
            return len(self._live_tickets())

    def busy(self) -> int:
        """How many slots are held now."""
        self._setup()
        n = 0
        with self._guard():
            for i in range(self.slots):
                fd = os.open(self.root / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    if _try_lock(fd):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    else:
                        n += 1
                finally:
                    os.close(fd)
        return n


_local = threading.local()


@contextlib.contextmanager
def inference_slot(on_wait: Callable[[int], None] | None = None, *, timeout: float | None = None, limiter: InferenceLimiter | None = None,
                   on_unavailable: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold one of the global inference slots for the block (released on exceptions too).

    ``on_wait(place)`` is called with the 1-based place in line while waiting (``wait_message(place)``
    makes the sentence). Re-entrant on one thread. When the lock files cannot be written (a read-only
    or full ``HISTODASH_HOME``), the block runs without a slot rather than failing: the reason is logged
    and passed to ``on_unavailable(message)`` (a page can show it).
    """
    if getattr(_local, "depth", 0) > 0:
        _local.depth += 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    limiter = limiter or InferenceLimiter()
    try:
        fd = limiter.acquire(on_wait=on_wait, timeout=timeout)
    except OSError as exc:  # EROFS, ENOSPC, EACCES on the lock folder: predict anyway, without the global limit
        message = (f"The inference queue is unavailable ({os.strerror(exc.errno) if exc.errno else type(exc).__name__} in HistoDash's home "
                   "folder): this run is not limited with other users' work. Ask your administrator to check the disk.")
        log.warning(message)
        if on_unavailable is not None:
            on_unavailable(message)
        fd = None
    _local.depth = 1
    try:
        yield
    finally:
        _local.depth = 0
        if fd is not None:
            limiter.release(fd)
