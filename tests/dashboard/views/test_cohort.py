"""The Cohort page headless (AppTest): generated slides + both real slides → a background cohort job (embedded runner,
then the two-node Ray cluster) → patient table, charts, gallery → "Open in Cohort survival" with the features chosen."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.jobs import get_runner
from tests.conftest import ROOT, shared_path
from tests.ray_cluster import session_cluster

APP = str(ROOT / "dashboard" / "app.py")
PATTERN = r"^(P\d+|CMU-1|TCGA-\w\w-\d{4})"


@pytest.fixture
def library(tmp_path, monkeypatch):
    from engine.cohort.synthetic import load_patches, write_cohort

    data = write_cohort(tmp_path / "gen", load_patches(shared_path("lc25000-lung-224")), 4, rows=3, cols=3, seed=11)
    root = tmp_path / "library"
    shutil.copytree(data["slide_dir"], root / "study")
    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"):
        shutil.copy(shared_path("wsi", name), root / "study" / name)
    clinical = pd.concat([pd.read_csv(data["clinical"]), pd.DataFrame({"patient_id": ["CMU-1", "TCGA-CR-7395"], "time": [400, 900], "event": [1, 0],
                                                                        "age": [60, 70]})])
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(root))
    return {"root": root, "clinical": clinical.to_csv(index=False).encode()}


def start(at: AppTest, library, **widgets) -> AppTest:
    at.run()
    at.switch_page("views/cohort.py")
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="cohort_folder").set_value("study")
    next(w for w in at.get("file_uploader") if w.label.startswith("Clinical table")).set_value(("clinical.csv", library["clinical"], "text/csv"))
    at.run()
    at.text_input(key="cohort_pattern").set_value(widgets.get("pattern", PATTERN))
    at.number_input(key="cohort_k").set_value(3)
    at.number_input(key="cohort_tile").set_value(224)
    at.run()
    next(b for b in at.button if b.label == "Start the cohort job").click().run()
    assert not at.exception, at.exception
    return at


def wait_result(at: AppTest, timeout: float = 900) -> AppTest:
    deadline = time.monotonic() + timeout
    while not any(s.value == "Patient table" for s in at.subheader):
        assert not at.error, [e.value for e in at.error]
        assert time.monotonic() < deadline, "the cohort job did not finish"
        time.sleep(2)
        at.run()
        assert not at.exception, at.exception
    return at


def check_result_and_hand_off(at: AppTest, backend: str) -> None:
    table = at.dataframe[0].value
    assert sorted(table.patient_id) == ["CMU-1", "P000", "P001", "P002", "P003", "TCGA-CR-7395"]
    assert {"mean_score", "cluster_0", "cluster_2", "time", "event"} <= set(table.columns)
    assert {b.label for b in at.get("download_button")} >= {"patients.csv", "patients.parquet"}
    assert len(at.get("plotly_chart")) == 1 and len(at.get("image")) >= 1  # composition bars, gallery tiles
    job_id = at.query_params["cohort_job"][0] if isinstance(at.query_params["cohort_job"], list) else at.query_params["cohort_job"]
    assert get_runner().get(job_id).result["backend"] == backend
    open_slide_in_viewer(at, job_id)
    next(b for b in at.button if b.label == "Open in Cohort survival").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Cohort survival"
    assert any("cohort " in c.value and "6 rows" in c.value for c in at.caption)
    assert next(s for s in at.selectbox if s.label == "Time").value == "time"
    assert next(s for s in at.selectbox if s.label == "Event").value == "event"
    at.switch_page("views/survival.py")  # AppTest keeps its own page: follow the page's st.switch_page for the next runs
    next(b for b in at.button if b.label == "Analyse").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert next(m for m in at.multiselect if m.label == "Features").value == ["cluster_0", "cluster_1", "cluster_2"]


def open_slide_in_viewer(at: AppTest, job_id: str) -> None:
    """"Open in Slide heatmap" on a real slide of the cohort: the viewer gets that slide's tiles with their cluster layer."""
    import base64
    import json


    at.selectbox(key="cohort_view_slide").set_value("CMU-1-Small-Region.svs").run()
    next(b for b in at.button if b.label == "Open in Slide heatmap").click().run()
    assert not at.exception, at.exception
    first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
    assert at.title[0].value == "Slide heatmap"
    assert first(at.query_params["job"]) == job_id and first(at.query_params["slide"]) == "lib:study/CMU-1-Small-Region.svs"
    viewer = next(e for e in at.get("component_instance") if "histodash_slide_viewer" in e.proto.component_name)
    tiles = json.loads(viewer.proto.json_args)["tiles"]
    assert tiles is not None and "cluster" in tiles["columns"], tiles and sorted(tiles["columns"])
    cluster = np.frombuffer(base64.b64decode(tiles["columns"]["cluster"]), "<f8")
    xs = np.frombuffer(base64.b64decode(tiles["x"]), "<i4")
    assert len(cluster) == len(xs) > 0 and set(np.unique(cluster)) <= {0.0, 1.0, 2.0}  # K = 3
    at.switch_page("views/cohort.py")  # back to the cohort page (the browser's Back: its address had the job) for the hand-off
    at.query_params.clear()
    at.query_params["cohort_job"] = job_id
    at.run()


def test_cohort_page_on_the_embedded_runner_hands_its_table_to_survival(library):
    at = wait_result(start(AppTest.from_file(APP, default_timeout=120), library))
    check_result_and_hand_off(at, "local")


def test_cohort_page_on_the_two_node_ray_cluster(library, request, monkeypatch):
    cluster = session_cluster(request)
    monkeypatch.setenv("HISTODASH_RUNNER", "ray")
    monkeypatch.setenv("HISTODASH_RAY_ADDRESS", cluster.jobs_address)
    at = wait_result(start(AppTest.from_file(APP, default_timeout=120), library))
    check_result_and_hand_off(at, "ray")


def test_a_pattern_without_a_group_is_a_message_and_no_job(library):
    at = start(AppTest.from_file(APP, default_timeout=120), library, pattern=r"P\d+")
    assert any("has no group" in e.value for e in at.error) and "cohort_job" not in at.query_params
