"""Cohorts on a real two-node Ray cluster (tests/ray_cluster.py): work pinned to node 2, node 2 killed mid-cohort,
cancel — each checked against the same cohort scored by the embedded backend."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import shared_path
from tests.ray_cluster import session_cluster

PATTERN = r"^(P\d+)_"


@pytest.fixture
def ray_cluster(request):
    return session_cluster(request)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """16 patients × one 4×4-patch slide (256 tiles), scored once on the embedded backend as the reference."""
    from engine.cohort.pipeline import run_cohort
    from engine.cohort.synthetic import load_patches, write_cohort

    root = tmp_path_factory.mktemp("ray-cohort")
    data = write_cohort(root, load_patches(shared_path("lc25000-lung-224")), 16, rows=4, cols=4, seed=5)
    params = {"slide_dir": data["slide_dir"], "patient_pattern": PATTERN, "clinical": data["clinical"], "tile_px": 224, "clusters": 4,
              "chunk_tiles": 8, "discovery": 0.5}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HISTODASH_HOME", str(root / "home"))
        mp.setenv("HISTODASH_CACHE_DIR", str(root / "local-cache"))
        run_cohort(params, root / "local")
    return {**data, "root": root, "params": params, "local": root / "local"}


@pytest.fixture
def ray_runner(ray_cluster, tmp_path):
    from engine.ray_runner import RayRunner

    return RayRunner(ray_cluster.jobs_address, root=tmp_path / "jobs")


def assert_same_results(local, remote) -> None:
    """The same patient table and, slide by slide, the same tile scores and clusters."""
    a, b = pd.read_csv(local / "patients.csv"), pd.read_csv(remote / "patients.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-7)
    for folder in sorted((local / "slides").iterdir()):
        x, y = pd.read_csv(folder / "tiles.csv"), pd.read_csv(remote / "slides" / folder.name / "tiles.csv")
        assert list(x.x) == list(y.x) and list(x.y) == list(y.y)
        np.testing.assert_allclose(x.score, y.score, atol=1e-6)
        assert (x.cluster == y.cluster).all(), folder.name


def test_a_cohort_pinned_to_node_2_is_scored_there_with_the_local_results(small_cohort, ray_runner, ray_cluster, tmp_path):
    out = tmp_path / "out"
    job_id = ray_runner.submit("cohort", dict(small_cohort["params"], pin="node2", out_dir=str(out)))
    rec = ray_runner.wait(job_id, timeout=600)
    assert rec.state == "succeeded", f"{rec.error}\n{ray_runner.log_tail(job_id, 80)}"
    manifest = pd.read_json(out / "manifest.json", typ="series")
    assert manifest["executor"]["backend"] == "ray" and set(manifest["executor"]["nodes"]) == {ray_cluster.node_id("node2")}
    assert manifest["executor"]["workers"] == 1 and rec.result["n_scored_now"] == rec.result["n_tiles"] == manifest["n_tiles"]
    assert_same_results(small_cohort["local"], out)


def test_killing_node_2_mid_cohort_costs_time_not_results(small_cohort, ray_runner, ray_cluster, tmp_path):
    node2 = ray_cluster.node_id("node2")
    out = tmp_path / "out"
    job_id = ray_runner.submit("cohort", dict(small_cohort["params"], out_dir=str(out), start_together_s=300))
    deadline = time.monotonic() + 600
    while True:  # kill as soon as node 2 has delivered work and more is left
        rec = ray_runner.get(job_id)
        p = rec.progress or {}
        if (p.get("nodes") or {}).get(node2) and p.get("done", 0) < p.get("total", 0):
            break
        assert rec.active and time.monotonic() < deadline, f"node 2 never took part: {rec.state} {p}\n{ray_runner.log_tail(job_id, 60)}"
        time.sleep(0.1)
    killed_at = p["done"]
    ray_cluster.kill_node2()
    rec = ray_runner.wait(job_id, timeout=600)
    assert rec.state == "succeeded", f"{rec.error}\n{ray_runner.log_tail(job_id, 80)}"
    assert killed_at < 256 and rec.result["requeued_chunks"] >= 1 and rec.result["lost_nodes"] == [node2]
    assert "tile worker lost" in ray_runner.log_tail(job_id, 200)
    assert_same_results(small_cohort["local"], out)


def test_cancelling_a_cohort_stops_its_remote_workers(small_cohort, ray_runner, ray_cluster, tmp_path):
    from ray.util.state import list_actors

    job_id = ray_runner.submit("cohort", dict(small_cohort["params"], chunk_tiles=4, out_dir=str(tmp_path / "out")))
    deadline = time.monotonic() + 600
    while not (ray_runner.get(job_id).progress or {}).get("done"):
        assert ray_runner.get(job_id).active and time.monotonic() < deadline, ray_runner.log_tail(job_id, 60)
        time.sleep(0.1)
    ray_runner.cancel(job_id)
    rec = ray_runner.wait(job_id, timeout=60)
    assert rec.state == "cancelled" and rec.result is None, ray_runner.log_tail(job_id, 60)
    assert rec.progress["done"] < 256

    def alive():
        return list_actors(address=ray_cluster.jobs_address, filters=[("class_name", "=", "TileWorker"), ("state", "!=", "DEAD")])

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive() == []


def test_cli_cohort_with_the_ray_backend(small_cohort, ray_cluster, tmp_path, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    p = small_cohort["params"]
    out = tmp_path / "out"
    code = main(["cohort", p["slide_dir"], "--clinical", p["clinical"], "--patient-pattern", PATTERN, "--out", str(out), "--clusters", "4",
                 "--tile-px", "224", "--chunk-tiles", "8", "--backend", "ray", "--ray-address", ray_cluster.jobs_address])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "16 patients from 16 slides" in err
    assert_same_results(small_cohort["local"], out)
