"""The JobRunner contract, one suite for every runner: the embedded LocalProcessRunner and the RayRunner on a real
two-node Ray cluster started on this machine (tests/ray_cluster.py; stopped by process-group id at the end).

The job functions below run in the runners' workers (a local process, or a Ray task on any node).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine import jobs
from engine.errors import JobError
from engine.jobs import JobNotFoundError, LocalProcessRunner
from tests.conftest import ROOT
from tests.engine.test_jobs import wait_for
from tests.ray_cluster import session_cluster

# ----------------------------------------------------------------------------- job functions (run in the workers)
# sleepy and boom are tests/engine/test_jobs.py's (the local runner's own suite); where() is Ray's


def where(params, ctx):
    """Which node's resources the job got (Ray), or none (local)."""
    try:
        import ray

        assigned = dict(ray.get_runtime_context().get_assigned_resources()) if ray.is_initialized() else {}
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except ImportError:
        assigned, node = {}, None
    return {"resources": sorted(assigned), "node": node}


# ----------------------------------------------------------------------------- the runners


@pytest.fixture
def ray_cluster(request):
    return session_cluster(request)


@pytest.fixture(params=["local", "ray"])
def runner(request, tmp_path, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "sleep", "tests.engine.test_jobs:sleepy")
    monkeypatch.setitem(jobs.JOB_KINDS, "boom", "tests.engine.test_jobs:boom")
    monkeypatch.setitem(jobs.JOB_KINDS, "where", "tests.engine.test_runner_contract:where")
    if request.param == "local":
        return LocalProcessRunner(tmp_path / "jobs", slots=1)
    from engine.ray_runner import RayRunner

    cluster = request.getfixturevalue("ray_cluster")
    return RayRunner(cluster.jobs_address, root=tmp_path / "jobs")


# ----------------------------------------------------------------------------- the contract


def test_a_job_runs_elsewhere_reports_and_succeeds(runner):
    job_id = runner.submit("sleep", {"steps": 4, "step_s": 0.02}, owner="alice")
    assert runner.get(job_id).state in ("queued", "running")
    rec = runner.wait(job_id, timeout=120)
    assert rec.state == "succeeded", runner.log_tail(job_id, 200)
    assert rec.result == {"steps": 4, "workdir_exists": True}
    assert rec.pid and rec.pid != os.getpid()  # the local worker, or the Ray job's driver
    assert rec.created <= rec.started <= rec.finished
    assert rec.progress["done"] == 4 and rec.progress["total"] == 4 and rec.progress["batch"] == 4
    assert [m["step"] for m in rec.metrics] == [2, 4] and rec.metrics[-1]["loss"] == 0.25
    assert rec.fraction == 1.0 and rec.owner == "alice" and rec.error is None
    log = runner.log_tail(job_id, 200)
    assert "sleepy: 4 steps" in log and "succeeded" in log
    assert [r.id for r in runner.list(kind="sleep")] == [job_id]
    assert [r.id for r in runner.list(owner="alice")] == [job_id]
    assert runner.list(owner="bob") == [] and runner.list(kind="boom") == []


def test_cancel_a_running_job_stops_it_and_keeps_its_log(runner):
    job_id = runner.submit("sleep", {"steps": 2000, "step_s": 0.05})
    wait_for(lambda: runner.get(job_id).progress.get("done", 0) >= 2)
    runner.cancel(job_id)
    assert runner.get(job_id).cancel_requested
    rec = runner.wait(job_id, timeout=60)
    assert rec.state == "cancelled", runner.log_tail(job_id, 100)
    assert rec.progress["done"] < 2000 and rec.result is None
    log = runner.log_tail(job_id, 200)
    assert "sleepy: 2000 steps" in log and "cancelled" in log
    runner.cancel(job_id)  # cancelling a finished job does nothing
    assert runner.get(job_id).state == "cancelled"


def test_cancel_right_after_submit_ends_cancelled_without_a_result(runner):
    job_id = runner.submit("sleep", {"steps": 2000, "step_s": 0.05})
    runner.cancel(job_id)
    rec = runner.wait(job_id, timeout=60)
    assert rec.state == "cancelled" and rec.result is None, runner.log_tail(job_id, 100)
    assert rec.progress.get("done", 0) < 2000


def test_a_job_that_raises_is_failed_with_its_traceback_in_the_log(runner):
    job_id = runner.submit("boom", {})
    rec = runner.wait(job_id, timeout=120)
    assert rec.state == "failed"
    assert rec.error == "ValueError: boom: deliberate failure"
    log = runner.log_tail(job_id, 200)
    assert "about to fail" in log and "Traceback (most recent call last)" in log and 'raise ValueError("boom' in log


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


def test_a_new_runner_on_the_same_records_sees_the_same_jobs(runner):
    done = runner.submit("sleep", {"steps": 1, "step_s": 0.01})
    runner.wait(done, timeout=120)
    long = runner.submit("sleep", {"steps": 2000, "step_s": 0.05})
    wait_for(lambda: runner.get(long).state == "running")
    fresh = type(runner)(*([runner.address] if hasattr(runner, "address") else []), root=runner.root)  # the dashboard restarted
    states = {r.id: r.state for r in fresh.list()}
    assert states == {done: "succeeded", long: "running"}
    assert fresh.get(done).result["steps"] == 1
    fresh.cancel(long)
    assert fresh.wait(long, timeout=60).state == "cancelled"


# ----------------------------------------------------------------------------- Ray only


def test_ray_task_pinned_by_a_custom_resource_runs_on_that_node(ray_cluster, tmp_path, monkeypatch):
    from engine.ray_runner import RayRunner

    monkeypatch.setitem(jobs.JOB_KINDS, "where", "tests.engine.test_runner_contract:where")
    runner = RayRunner(ray_cluster.jobs_address, root=tmp_path / "jobs")
    ids = {name: runner.submit("where", {"resources": {name: 0.5}, "num_cpus": 0}) for name in ("node2", "head")}
    recs = {name: runner.wait(job_id, timeout=120) for name, job_id in ids.items()}
    for name, rec in recs.items():
        assert rec.state == "succeeded", f"{rec.error}\n{runner.log_tail(rec.id, 100)}"
        assert name in rec.result["resources"]
    assert recs["node2"].result["node"] != recs["head"].result["node"]


def test_an_unreachable_cluster_is_a_clear_message(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from engine.ray_runner import RayRunner, RayUnavailableError
    from tests.ray_cluster import free_ports

    monkeypatch.setitem(jobs.JOB_KINDS, "sleep", "tests.engine.test_jobs:sleepy")
    runner = RayRunner(f"http://127.0.0.1:{free_ports(1)[0]}", root=tmp_path / "jobs")
    with pytest.raises(RayUnavailableError, match="cannot be reached") as err:
        runner.submit("sleep", {})
    assert "HISTODASH_RAY_ADDRESS" in err.value.hint
    assert runner.list() == []


def test_the_local_runner_never_imports_ray():
    code = ("import sys; from engine.jobs import get_runner, LocalProcessRunner; r = get_runner(); r.list(); "
            "import engine.ray_runner; assert isinstance(r, LocalProcessRunner); print('ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("HISTODASH_RUNNER", "HISTODASH_RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_remote_context_of_a_ray_task_has_the_job_context_surface():
    import inspect

    from engine.jobs import JobContext
    from engine.ray_runner import DriverContext, RemoteContext

    def public(cls):
        return {n: inspect.signature(f) for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}

    real, remote = public(JobContext), public(RemoteContext)
    assert set(remote) == set(real)
    for name, sig in real.items():
        assert list(remote[name].parameters) == list(sig.parameters), name
    assert issubclass(DriverContext, JobContext) and DriverContext.backend == "ray"


def test_get_runner_follows_the_settings(monkeypatch, tmp_path):
    from engine.errors import InvalidInputError

    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "j"))
    monkeypatch.delenv("HISTODASH_RUNNER", raising=False)
    assert isinstance(jobs.get_runner(), LocalProcessRunner)
    pytest.importorskip("ray")
    from engine.ray_runner import RayRunner

    monkeypatch.setenv("HISTODASH_RUNNER", "ray")
    monkeypatch.setenv("HISTODASH_RAY_ADDRESS", "http://head.example:8265")
    runner = jobs.get_runner()
    assert isinstance(runner, RayRunner) and runner.address == "http://head.example:8265" and runner.root == tmp_path / "j" / "ray"
    monkeypatch.setenv("HISTODASH_RUNNER", "dask")
    with pytest.raises(InvalidInputError, match="HISTODASH_RUNNER='dask' is not a job runner"):
        jobs.get_runner()
