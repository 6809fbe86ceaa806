"""The job system: real worker processes running small job functions defined below."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from engine import jobs
from engine.errors import Cancelled, JobError, JobNotFoundError
from engine.jobs import JobContext, LocalProcessRunner

# ----------------------------------------------------------------------------- job functions (run in the workers)


def sleepy(params, ctx):
    """``steps`` steps of ``step_s`` seconds, reporting progress and metrics, stopping on cancel."""
    n = int(params.get("steps", 5))
    ctx.log(f"sleepy: {n} steps")
    for i in range(n):
        ctx.raise_if_cancelled()
        time.sleep(float(params.get("step_s", 0.05)))
        ctx.progress(i + 1, n, f"step {i + 1}/{n}", batch=i + 1)
        if (i + 1) % 2 == 0:
            ctx.metric(step=i + 1, loss=1.0 / (i + 1))
    return {"steps": n, "workdir_exists": ctx.workdir.is_dir()}


def boom(params, ctx):
    ctx.log("about to fail")
    raise ValueError("boom: deliberate failure")


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "sleep", "tests.engine.test_jobs:sleepy")
    monkeypatch.setitem(jobs.JOB_KINDS, "boom", "tests.engine.test_jobs:boom")
    monkeypatch.setitem(jobs.JOB_KINDS, "hold", "tests.jobfuncs:hold")  # runs until released or cancelled: no race with its end
    return LocalProcessRunner(tmp_path / "jobs", slots=1)


HANG_S = 120.0  # how long a test waits for something that must happen: a guard against hangs, not a speed requirement


def wait_for(predicate, timeout=HANG_S, poll=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout} s")


# ----------------------------------------------------------------------------- tests


def test_job_runs_in_its_own_process_and_succeeds(runner):
    job_id = runner.submit("sleep", {"steps": 4, "step_s": 0.02}, owner="alice")
    rec = runner.wait(job_id, timeout=HANG_S)
    assert rec.state == "succeeded", runner.log_tail(job_id)
    assert rec.result == {"steps": 4, "workdir_exists": True}
    assert rec.pid and rec.pid != os.getpid()
    assert rec.created <= rec.started <= rec.finished
    assert rec.progress["done"] == 4 and rec.progress["total"] == 4 and rec.progress["batch"] == 4
    assert [m["step"] for m in rec.metrics] == [2, 4]
    assert rec.fraction == 1.0 and rec.owner == "alice" and rec.error is None
    log = runner.log_tail(job_id)
    assert "sleepy: 4 steps" in log and "succeeded" in log
    assert [r.id for r in runner.list(kind="sleep")] == [job_id]
    assert runner.list(owner="bob") == []


def test_queue_with_one_slot_runs_jobs_one_after_the_other(runner, tmp_path):
    release = tmp_path / "release-first"
    first = runner.submit("hold", {"release": str(release)})
    second = runner.submit("sleep", {"steps": 1, "step_s": 0.01})
    assert runner.get(first).state == "running"
    assert runner.get(second).state == "queued"  # the first holds its slot until released
    release.touch()
    # the first worker starts the second when it ends: no dashboard call needed in between
    a = runner.wait(first, timeout=HANG_S)
    # read the raw record (no scheduling call): the finished worker itself launched the next job
    wait_for(lambda: jobs._read_json(runner.root / second / "state.json")["state"] != "queued")
    b = runner.wait(second, timeout=HANG_S)
    assert a.state == b.state == "succeeded"
    assert b.started >= a.finished - 0.01


def test_cancel_a_running_job_stops_it_and_keeps_its_log(runner):
    job_id = runner.submit("hold", {})
    wait_for(lambda: runner.get(job_id).progress.get("done", 0) >= 1)
    runner.cancel(job_id)
    rec = runner.wait(job_id, timeout=HANG_S)
    assert rec.state == "cancelled" and rec.cancel_requested
    assert rec.progress["done"] == 1 and rec.result is None
    log = runner.log_tail(job_id)
    assert "hold: waiting" in log and "cancelled" in log


def test_cancel_a_queued_job_never_starts_it(runner):
    first = runner.submit("hold", {})
    second = runner.submit("sleep", {"steps": 1})
    runner.cancel(second)
    assert runner.get(second).state == "cancelled"
    runner.cancel(first)
    assert runner.wait(first, timeout=HANG_S).state == "cancelled"
    assert runner.get(second).started is None
    runner.cancel(first)  # cancelling a finished job does nothing
    assert runner.get(first).state == "cancelled"


def test_worker_killed_from_outside_is_marked_failed_when_next_read(runner):
    job_id = runner.submit("hold", {})
    rec = wait_for(lambda: (r := runner.get(job_id)).progress.get("done") and r)
    os.kill(rec.pid, signal.SIGKILL)
    failed = wait_for(lambda: (r := runner.get(job_id)).state == "failed" and r)  # as soon as the process is gone
    assert "gone" in failed.error and str(rec.pid) in failed.error
    assert "FAILED" in runner.log_tail(job_id)


def test_a_job_that_raises_is_failed_with_its_traceback_in_the_log(runner):
    job_id = runner.submit("boom", {})
    rec = runner.wait(job_id, timeout=HANG_S)
    assert rec.state == "failed"
    assert rec.error == "ValueError: boom: deliberate failure"
    log = runner.log_tail(job_id, 100)
    assert "about to fail" in log and "Traceback (most recent call last)" in log and 'raise ValueError("boom' in log


def test_restart_recovery_a_new_runner_sees_the_right_states(runner, tmp_path):
    done = runner.submit("sleep", {"steps": 1, "step_s": 0.01})
    runner.wait(done, timeout=HANG_S)
    long = runner.submit("hold", {})
    queued = runner.submit("sleep", {"steps": 1, "step_s": 0.01})
    # a record left "running" by a worker that died with the machine (pid that no longer exists)
    ghost = tmp_path / "jobs" / "sleep-20000101-000000-abcdef"
    ghost.mkdir()
    (ghost / "job.json").write_text(json.dumps({"id": ghost.name, "kind": "sleep", "params": {}, "created": 1.0}))
    (ghost / "state.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345, "started": 2.0}))

    # …and one whose pid was reused by another process (this one) after a reboot
    reused = tmp_path / "jobs" / "sleep-20000101-000001-abcdef"
    reused.mkdir()
    (reused / "job.json").write_text(json.dumps({"id": reused.name, "kind": "sleep", "params": {}, "created": 1.5}))
    (reused / "state.json").write_text(json.dumps({"state": "running", "pid": os.getpid(), "pid_start": "1", "started": 2.0}))

    fresh = LocalProcessRunner(tmp_path / "jobs", slots=1)  # the dashboard restarted
    states = {r.id: r.state for r in fresh.list()}
    assert states[done] == "succeeded"
    assert states[long] == "running"
    assert states[queued] == "queued"
    assert states[ghost.name] == "failed" and "gone" in fresh.get(ghost.name).error
    assert states[reused.name] == "failed"
    assert fresh.get(done).result == {"steps": 1, "workdir_exists": True}
    fresh.cancel(long)
    assert fresh.wait(long, timeout=HANG_S).state == "cancelled"
    assert fresh.wait(queued, timeout=HANG_S).state == "succeeded"


def test_bad_submissions_and_ids_give_messages(runner):
    with pytest.raises(JobError, match="Unknown job kind 'nope'"):
        runner.submit("nope", {})
    with pytest.raises(JobError, match="plain JSON"):
        runner.submit("sleep", {"x": object()})
    with pytest.raises(JobNotFoundError, match="not a job id"):
        runner.get("../etc")
    with pytest.raises(JobNotFoundError, match="No job"):
        runner.get("sleep-19990101-000000-000000")
    with pytest.raises(JobNotFoundError, match="No job"):
        runner.cancel("sleep-19990101-000000-000000")


def test_context_progress_is_throttled_and_has_an_eta(tmp_path):
    ctx = JobContext(tmp_path / "job-x", {}, throttle_s=60)
    ctx.progress(1, 10, "step")
    first = json.loads((tmp_path / "job-x" / "progress.json").read_text())
    ctx.progress(2, 10, "step")  # throttled: same message, not done
    assert json.loads((tmp_path / "job-x" / "progress.json").read_text()) == first
    time.sleep(0.05)
    ctx.progress(5, 10, "other", epoch=1)  # a new message is written at once, with an ETA
    p = json.loads((tmp_path / "job-x" / "progress.json").read_text())
    assert p["done"] == 5 and p["message"] == "other" and p["epoch"] == 1 and p["eta_s"] > 0
    assert not ctx.cancelled()
    (tmp_path / "job-x" / "cancel").touch()
    time.sleep(0.06)
    with pytest.raises(Cancelled):
        ctx.raise_if_cancelled()


def test_get_runner_uses_settings_and_slots(monkeypatch, tmp_path):
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "j"))
    monkeypatch.setenv("HISTODASH_JOB_SLOTS", "3")
    r = jobs.get_runner()
    assert isinstance(r, LocalProcessRunner) and r.root == tmp_path / "j" and r.slots == 3
    assert r.list() == []


def test_cli_jobs_list_show_cancel(runner, capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(runner.root))
    job_id = runner.submit("hold", {})
    try:
        wait_for(lambda: runner.get(job_id).progress.get("done"))
    except AssertionError:
        raise AssertionError(f"{runner.get(job_id)}\n{runner.log_tail(job_id)}") from None
    assert main(["jobs", "list"]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "show", job_id]) == 0
    out = capsys.readouterr().out
    assert "state:    running" in out and "hold: waiting" in out
    assert main(["jobs", "cancel", job_id]) == 0
    assert runner.wait(job_id, timeout=HANG_S).state == "cancelled"
    assert main(["jobs", "show", "sleep-19990101-000000-000000"]) == 2
    assert "No job" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 15: job records are untrusted files

def _damaged_jobs(root):
    """Job folders a crash, a full disk or a hostile user could leave: each must list as damaged/unknown, never crash."""
    import json as _json

    def job(name, job_json, state_json='{"state": "running", "pid": 12345}'):
        d = root / name
        d.mkdir(parents=True)
        (d / "job.json").write_text(job_json)
        if state_json is not None:
            (d / "state.json").write_text(state_json)

    job("train-nokind", _json.dumps({"id": "train-nokind", "params": {}, "created": 1.0}))
    job("train-list", _json.dumps([1, 2, 3]))
    job("train-badparams", _json.dumps({"id": "x", "kind": "train", "params": [1], "created": 2.0}))
    job("train-textpid", _json.dumps({"id": "train-textpid", "kind": "train", "params": {}, "created": 3.0}), '{"state": "running", "pid": "12; rm -rf /"}')
    job("train-garbledstate", _json.dumps({"id": "train-garbledstate", "kind": "train", "params": {}, "created": 4.0}), "{not json")
    job("train-nostate", _json.dumps({"id": "train-nostate", "kind": "train", "params": {}, "created": 5.0}), None)
    job("train-liststate", _json.dumps({"id": "train-liststate", "kind": "train", "params": {}, "created": 6.0}), "[]")
    job("train-badprogress", _json.dumps({"id": "train-badprogress", "kind": "train", "params": {}, "created": 7.0}),
        '{"state": "succeeded", "result": "not a dict"}')
    (root / "train-badprogress" / "progress.json").write_text('{"done": "many", "total": [1]}')
    return {
        "train-nokind": "damaged", "train-list": "damaged", "train-badparams": "damaged", "train-textpid": "unknown",
        "train-garbledstate": "unknown", "train-nostate": "unknown", "train-liststate": "unknown", "train-badprogress": "succeeded",
    }


def test_damaged_job_records_are_listed_never_crash(tmp_path):
    expected = _damaged_jobs(tmp_path / "jobs")
    runner = jobs.LocalProcessRunner(tmp_path / "jobs")
    records = {r.id: r for r in runner.list()}
    assert {i: r.state for i, r in records.items()} == expected
    assert {r.id for r in runner.list(kind="train")} == set(expected)  # damaged records of unknown kind show in every listing
    for rec in records.values():
        assert not rec.active and isinstance(rec.params, dict)
        jobs.describe_progress(rec), jobs.format_duration(rec.elapsed_s), rec.fraction  # noqa: B018 - what pages call
    assert "damaged (no job kind)" in records["train-nokind"].error
    assert records["train-garbledstate"].error == "The job's state file cannot be read: its state is unknown."
    assert records["train-badprogress"].result is None and records["train-badprogress"].progress == {}
    assert runner.get("train-list").state == "damaged"


def test_jobs_cli_lists_damaged_records(tmp_path, monkeypatch, capsys):
    from engine.cli import main

    expected = _damaged_jobs(tmp_path / "jobs")
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    for job_id, state in expected.items():
        assert f"{job_id}\t{state}" in out


def test_training_page_shows_damaged_jobs(tmp_path, monkeypatch, tiny_registry):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    _damaged_jobs(tmp_path / "jobs")
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    for query in ({}, {"job": "train-list"}, {"job": "train-garbledstate"}):
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
        at.query_params.update(query)
        at.run()
        at.switch_page("views/training.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert {"damaged", "unknown"} <= set(at.dataframe[0].value["state"])


def test_job_ids_carry_128_random_bits(tmp_path, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    runner = jobs.LocalProcessRunner(tmp_path / "jobs")
    ids = [runner.submit("train", {"epochs": 1}) for _ in range(2)]
    for job_id in ids:
        random_part = job_id.rsplit("-", 1)[1]
        assert len(random_part) == 32 and int(random_part, 16) >= 0  # 32 hex digits = 128 bits
    assert ids[0].rsplit("-", 1)[1] != ids[1].rsplit("-", 1)[1]
    for job_id in ids:
        runner.wait(job_id, timeout=60)
