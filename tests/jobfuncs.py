"""Job functions for tests that need a job to be at a known point when the test acts (no timing races).

They run in real worker processes (``engine.jobs``): a test registers them with
``monkeypatch.setitem(jobs.JOB_KINDS, kind, "tests.jobfuncs:<name>")``.
"""

from __future__ import annotations

import time
from pathlib import Path

HANG_GUARD_S = 600.0  # a gate nobody opens ends the job (failed) instead of leaving a process behind


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"test gate: {what} did not happen within {HANG_GUARD_S:.0f} s")
        time.sleep(0.02)


def hold(params: dict, ctx) -> dict:
    """Report ``1 of 2``, then wait until the file ``params['release']`` exists (→ succeed) or the job is cancelled."""
    ctx.log("hold: waiting")
    ctx.progress(1, 2, "holding")
    release = Path(params["release"]) if params.get("release") else None
    wait_until(lambda: ctx.cancelled() or (release is not None and release.exists()), "release or cancel")
    ctx.raise_if_cancelled()
    ctx.progress(2, 2, "released")
    return {"released": True}


def heatmap_gated(params: dict, ctx) -> dict:
    """The heatmap job, whose inference stops after ``gate_batches`` batches and waits until the job is cancelled.

    The heatmap checks ``cancelled()`` before each batch; the check after the last allowed batch writes
    ``<workdir>/gate`` and blocks until the real cancel arrives, so exactly ``gate_batches`` batches are scored.
    """
    from engine.heatmap import run_job

    allowed = int(params.get("gate_batches", 1))
    real = ctx.cancelled
    checks = [0]

    def cancelled() -> bool:
        checks[0] += 1
        if checks[0] <= allowed:
            return real()
        (ctx.workdir / "gate").touch()
        wait_until(real, "cancel")
        return True

    ctx.cancelled = cancelled
    keys = {k: v for k, v in params.items() if k != "gate_batches"}
    return run_job(keys, ctx)
