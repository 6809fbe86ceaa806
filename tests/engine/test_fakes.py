"""The test doubles keep to the contracts they stand in for; the progress contract of JobContext."""

from __future__ import annotations

import inspect
import json
import time

import pytest

from engine.errors import Cancelled
from engine.jobs import JobContext
from engine.progress import Progress, Status
from tests.fakes import FakeContext


def _public_methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def test_fake_context_has_the_job_context_surface(tmp_path):
    real, fake = _public_methods(JobContext), _public_methods(FakeContext)
    assert set(fake) == set(real)
    for name, sig in real.items():
        assert fake[name] == sig, (name, fake[name], sig)
    attrs = lambda obj: {k for k in vars(obj) if not k.startswith("_")}  # noqa: E731
    a, b = JobContext(tmp_path / "a"), FakeContext(tmp_path / "b")
    assert attrs(a) <= attrs(b) and attrs(b) - attrs(a) == {"recorded", "cancel_event"}
    assert a.workdir == tmp_path / "a" / "work" and b.workdir == tmp_path / "b" / "work" and b.workdir.is_dir()


@pytest.mark.parametrize("make", [JobContext, FakeContext], ids=["JobContext", "FakeContext"])
def test_both_contexts_are_progress_and_status_callbacks(tmp_path, make):
    ctx = make(tmp_path / "j")
    assert isinstance(ctx.progress, Progress) and isinstance(ctx.status, Status)
    ctx.progress(3, 10)
    assert not ctx.cancelled()
    (tmp_path / "j" / "cancel").touch()  # the real context's flag file; the fake is told directly
    if isinstance(ctx, FakeContext):
        ctx.cancel_event.set()
    time.sleep(0.06)  # the real context looks at its flag file at most every 50 ms
    with pytest.raises(Cancelled):
        ctx.raise_if_cancelled()


def test_status_keeps_done_and_total_and_progress_keeps_the_message(tmp_path):
    ctx = JobContext(tmp_path / "j", throttle_s=0)
    ctx.progress(4, 10, epoch=2)
    ctx.status("waiting for a free inference slot: 2nd in line")
    p = json.loads((tmp_path / "j" / "progress.json").read_text())
    assert (p["done"], p["total"], p["epoch"]) == (4, 10, 2) and p["message"].endswith("2nd in line")
    ctx.progress(5, 10)
    p = json.loads((tmp_path / "j" / "progress.json").read_text())
    assert p["done"] == 5 and p["message"].endswith("2nd in line")
    fake = FakeContext(tmp_path / "f")
    fake.progress(4, 10)
    fake.status("hello")
    fake.progress(5, 10)
    assert fake.recorded.statuses == ["hello"] and fake.recorded.progress[-1] == (5, 10, "hello", {})
