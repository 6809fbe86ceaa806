"""The global inference limit, with real processes: at most N inside, a fair queue, dead holders free their slot."""

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from engine.errors import SlotTimeoutError
from engine.limits import InferenceLimiter, inference_slot, ordinal, wait_message

CTX = mp.get_context("spawn")  # no inherited locks or threads: each worker is a fresh process


def _worker(root: str, slots: int, name: str, hold_s: float, log: str, places: str, go: str | None = None) -> None:
    limiter = InferenceLimiter(root, slots, poll_s=0.02)
    if go:  # all workers start contending at once, however slowly each process started
        Path(f"{go}.{name}").touch()
        while not Path(go).exists():
            time.sleep(0.01)

    def on_wait(place: int) -> None:
        with open(places, "a") as fh:
            fh.write(f"{name} {place}\n")

    with inference_slot(on_wait=on_wait, limiter=limiter):
        with open(log, "a") as fh:
            fh.write(f"{time.monotonic():.6f} in {name}\n")
        time.sleep(hold_s)
        with open(log, "a") as fh:
            fh.write(f"{time.monotonic():.6f} out {name}\n")


def _holder(root: str, ready: str) -> None:
    limiter = InferenceLimiter(root, 1, poll_s=0.02)
    with inference_slot(limiter=limiter):
        Path(ready).write_text("held")
        time.sleep(600)


def _max_inside(log: Path) -> int:
    events = sorted((float(t), kind) for t, kind, _ in (line.split() for line in log.read_text().splitlines()))
    inside = peak = 0
    for _, kind in events:
        inside += 1 if kind == "in" else -1
        peak = max(peak, inside)
    return peak


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
    assert wait_message(2) == "waiting for a free inference slot: 2nd in line"


def test_at_most_two_of_four_processes_inside(tmp_path):
    log, places = tmp_path / "log.txt", tmp_path / "places.txt"
    log.touch()
    places.touch()
    go = tmp_path / "go"
    procs = [CTX.Process(target=_worker, args=(str(tmp_path / "locks"), 2, f"w{i}", 0.6, str(log), str(places), str(go))) for i in range(4)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.w{i}").exists() for i in range(4)):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.02)
    go.touch()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    assert sum(" in " in line for line in lines) == 4
    assert _max_inside(log) == 2
    # two had to wait, and each was told its place in line (1st or 2nd)
    reported = [line.split() for line in places.read_text().splitlines()]
    assert len({name for name, _ in reported}) >= 2
    assert {int(place) for _, place in reported} <= {1, 2} and any(int(place) == 2 for _, place in reported)


def test_queue_is_first_come_first_served(tmp_path):
    root = str(tmp_path / "locks")
    limiter = InferenceLimiter(root, 1, poll_s=0.02)
    log, places = tmp_path / "log.txt", tmp_path / "places.txt"
    log.touch()
    places.touch()
    fd = limiter.acquire()  # this test process holds the only slot
    procs = []
    try:
        for i in range(3):  # they queue in this order
            p = CTX.Process(target=_worker, args=(root, 1, f"w{i}", 0.05, str(log), str(places)))
            p.start()
            procs.append(p)
            deadline = time.monotonic() + 30
            while limiter.waiting() < i + 1:
                assert time.monotonic() < deadline, "worker did not queue"
                time.sleep(0.02)
        deadline = time.monotonic() + 30
        while True:  # each waiter reports its place just after it queued
            first_places = {}
            for name, place in (line.split() for line in places.read_text().splitlines()):
                first_places.setdefault(name, int(place))
            if len(first_places) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert first_places == {"w0": 1, "w1": 2, "w2": 3}
    finally:
        limiter.release(fd)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    order = [line.split()[2] for line in log.read_text().splitlines() if " in " in line]
    assert order == ["w0", "w1", "w2"]


def test_killed_holder_frees_its_slot(tmp_path):
    root = str(tmp_path / "locks")
    ready = tmp_path / "ready"
    holder = CTX.Process(target=_holder, args=(root, str(ready)))
    holder.start()
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    limiter = InferenceLimiter(root, 1, poll_s=0.02)
    assert limiter.busy() == 1
    with pytest.raises(SlotTimeoutError):
        with inference_slot(limiter=limiter, timeout=0.3):
            pass
    assert limiter.waiting() == 0  # the timed-out waiter left the queue
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    with inference_slot(limiter=limiter, timeout=5):
        assert limiter.busy() == 1
    assert limiter.busy() == 0


def test_dead_waiter_leaves_the_queue(tmp_path):
    root = str(tmp_path / "locks")
    limiter = InferenceLimiter(root, 1, poll_s=0.02)
    fd = limiter.acquire()
    log, places = tmp_path / "log.txt", tmp_path / "places.txt"
    waiter = CTX.Process(target=_worker, args=(root, 1, "w", 0.0, str(log), str(places)))
    waiter.start()
    deadline = time.monotonic() + 30
    while limiter.waiting() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(waiter.pid, signal.SIGKILL)
    waiter.join(10)
    assert limiter.waiting() == 0  # its ticket is recognised as dead and removed
    limiter.release(fd)
    with inference_slot(limiter=limiter, timeout=2):
        pass


def test_released_on_exception_and_reentrant(tmp_path):
    limiter = InferenceLimiter(tmp_path / "locks", 1)
    with pytest.raises(RuntimeError):
        with inference_slot(limiter=limiter):
            with inference_slot(limiter=limiter, timeout=0.5):  # nested: no second slot, no deadlock
                assert limiter.busy() == 1
            raise RuntimeError("boom")
    assert limiter.busy() == 0
    with inference_slot(limiter=limiter, timeout=1):
        pass


def test_default_slots_come_from_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("HISTODASH_HOME", str(tmp_path))
    monkeypatch.setenv("HISTODASH_MAX_CONCURRENT_INFERENCE", "3")
    limiter = InferenceLimiter()
    assert limiter.slots == 3 and limiter.root == tmp_path / "locks" / "inference"


def test_a_callback_that_raises_abandons_the_wait(tmp_path):
    limiter = InferenceLimiter(tmp_path / "locks", 1, poll_s=0.02)
    fd = limiter.acquire()
    seen = []

    def on_wait(place):
        seen.append(place)
        raise KeyboardInterrupt("user left the page")

    with pytest.raises(KeyboardInterrupt):
        with inference_slot(on_wait=on_wait, limiter=limiter):
            pass
    assert seen == [1] and limiter.waiting() == 0
    limiter.release(fd)
    assert limiter.busy() == 0


def test_a_read_only_home_does_not_stop_prediction(tmp_path, caplog):
    """Issue 15: a read-only HISTODASH_HOME broke prediction with an OSError traceback (the lock folder could not be made)."""
    import os
    import stat

    from engine.limits import InferenceLimiter, inference_slot

    home = tmp_path / "ro"
    home.mkdir()
    os.chmod(home, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(home, os.W_OK):  # root ignores permission bits: make the folder unusable another way
            home.rmdir()
            home.write_text("a file where the lock folder should be")
        said = []
        ran = False
        with inference_slot(limiter=InferenceLimiter(home / "locks"), on_unavailable=said.append):
            ran = True
        assert ran and len(said) == 1 and "The inference queue is unavailable" in said[0]
        assert "not limited with other users' work" in caplog.text
    finally:
        if home.is_dir():
            os.chmod(home, stat.S_IRWXU)
