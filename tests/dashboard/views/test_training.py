"""The Training page headless with AppTest: form, validation messages, job list, live view, results, re-attach."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from engine import jobs
from tests.conftest import ROOT

APP = str(ROOT / "dashboard" / "app.py")
PAGE = ROOT / "dashboard" / "views" / "training.py"
TIMEOUT = 60


def fake_train(params, ctx):
    """Stands in for the training job in the worker: reports like it and 'registers' the tiny sigmoid test model."""
    ctx.log("fake training")
    for e in range(1, 3):
        ctx.metric(epoch=e, loss=1.0 / e, val_loss=1.2 / e, val_auc=0.8 + 0.05 * e)
    ctx.progress(4, 4, "done")
    metrics = [
        {"split": "test", "n": 10, "auc": 0.9, "f1": 0.8, "accuracy": 0.85, "precision": 0.8, "recall": 0.8, "threshold": 0.42,
         "confusion": [[4, 1], [1, 4]]},
        {"split": "validation", "n": 8, "auc": 0.95, "f1": 0.9, "accuracy": 0.9, "precision": 0.9, "recall": 0.9, "threshold": 0.42},
    ]
    return {"model_id": "tiny-sigmoid", "classes": ["benign", "tumour"], "positive_classes": ["tumour"], "threshold": 0.42, "metrics": metrics,
            "headline": {"split": "test", "auc": 0.9}, "roc": {"test": {"fpr": [0, 0.2, 1], "tpr": [0, 0.8, 1]}}, "cv": None, "n_tiles": 18,
            "n_skipped": 0, "epochs_run": 2, "best_epoch": 2, "wall_s": 3.0, "history": []}


def degenerate_train(params, ctx):
    """A finished job whose model the pipeline's quality check failed."""
    result = fake_train(params, ctx)
    result["quality"] = {"status": "failed", "reasons": ["it predicts one class for 100% of the test tiles"], "rule": "RULE TEXT"}
    return result


def fail_train(params, ctx):
    raise RuntimeError("out of tiles")


@pytest.fixture
def runner(tmp_path, monkeypatch, tiny_registry):
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("HISTODASH_DATA_ROOTS", str(tmp_path))  # the page trains from uploads or the data roots only
    return jobs.LocalProcessRunner(tmp_path / "jobs")


def page(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    at.run()
    at.switch_page("views/training.py")
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at, kind) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def test_form_renders_and_a_bad_path_is_an_error_not_a_crash(runner, tmp_path):
    at = page()
    assert at.title[0].value == "Training"
    assert "No training jobs yet." in texts(at, "info")
    assert {"Epochs", "Batch size", "Input px (0 = architecture default)"} <= {n.label for n in at.number_input}
    options = next(s for s in at.selectbox if s.label == "Architecture").options
    assert "Small CNN" in options and not [o for o in options if "REFERENCE" in o or "§" in o]  # no internal words on screen
    data_box = next(t for t in at.text_input if t.label.startswith("Dataset"))
    data_box.set_value(str(tmp_path / "no-such-folder"))
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, at.exception
    assert "does not exist" in texts(at, "error")
    assert runner.list() == []


def test_submitting_the_form_queues_a_job_and_shows_it(runner, monkeypatch, tmp_path):
    from tests.engine.training.test_training import make_folder_dataset

    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    data = make_folder_dataset(tmp_path / "tiles", per_class=4, patients=2)
    at = page()
    next(t for t in at.text_input if t.label.startswith("Dataset")).set_value(str(data))
    next(t for t in at.text_input if t.label.startswith("Positive classes")).set_value("tumour")
    next(n for n in at.number_input if n.label == "Epochs").set_value(2)
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, at.exception
    assert "queued: 8 tiles in 2 classes" in texts(at, "success")
    [rec] = runner.list()
    assert rec.params["epochs"] == 2 and rec.params["positive_classes"] == ["tumour"] and rec.params["data"] == str(data)
    assert at.query_params["job"] == [rec.id] or at.query_params["job"] == rec.id
    assert runner.wait(rec.id, timeout=30).state == "succeeded"


def test_finished_job_is_listed_with_metrics_and_can_be_used(runner, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    job_id = runner.submit("train", {"data": "x", "architecture": "small_cnn"})
    assert runner.wait(job_id, timeout=30).state == "succeeded"
    at = page({"job": job_id})
    assert job_id in at.dataframe[0].value["job"].tolist()
    assert "Registered model **tiny-sigmoid**" in texts(at, "success")
    metrics = at.dataframe[1].value
    assert metrics["split"].tolist() == ["test", "validation"] and metrics["auc"].tolist() == [0.9, 0.95]
    use = next(b for b in at.button if b.label == "Use this model")
    use.click()
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["model_id"] == "tiny-sigmoid"
    assert "is the selected model on every page" in texts(at, "info")


def test_a_job_that_failed_the_quality_check_is_red_without_a_success_box(runner, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:degenerate_train")
    job_id = runner.submit("train", {"data": "x", "architecture": "small_cnn"})
    assert runner.wait(job_id, timeout=30).state == "succeeded"
    at = page({"job": job_id})
    assert not at.success
    assert "Failed quality check: it predicts one class for 100% of the test tiles" in texts(at, "error") and "RULE TEXT" in texts(at, "error")
    assert at.dataframe[0].value["quality"].tolist() == ["failed"]
    assert not any(b.label == "Use this model" for b in at.button) and any(b.label == "Use this model anyway" for b in at.button)


def test_failed_and_running_jobs_reattach_from_the_query_string(runner, monkeypatch):
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fail_train")
    failed = runner.submit("train", {"data": "x"})
    assert runner.wait(failed, timeout=30).state == "failed"
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.jobfuncs:hold")  # runs until cancelled: no race with its end
    running = runner.submit("train", {})
    deadline = time.monotonic() + 20
    while not runner.get(running).progress and time.monotonic() < deadline:
        time.sleep(0.1)

    at = page({"job": failed})  # a refresh with ?job=… comes back to the same job
    assert "The job failed: RuntimeError: out of tiles" in texts(at, "error")
    assert "Traceback" in "\n".join(c.value for c in at.code)

    at = page({"job": running})
    assert any(b.label == "Cancel job" for b in at.button)
    assert "holding" in " ".join(p.proto.text for p in at.get("progress"))
    next(b for b in at.button if b.label == "Cancel job").click()
    at.run()
    assert runner.wait(running, timeout=120).state == "cancelled"

    at = page({"job": "train-nope"})
    assert "is not in this job list" in texts(at, "warning") and "train-nope" not in texts(at, "warning")


def test_page_never_imports_tensorflow():
    tree = ast.parse(PAGE.read_text())
    modules = sorted({n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} |
                     {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names})
    engine_modules = [m for m in modules if m.startswith(("engine", "dashboard"))]
    code = ("import sys, importlib\n"
            f"for m in {engine_modules!r}: importlib.import_module(m)\n"
            "import json; print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.browser
@pytest.mark.slow
def test_browser_train_on_demo_data_survives_refresh_and_restart_then_predicts(tmp_path):
    """Done-when of issue 7 in a real Chromium: page defaults on the demo data, refresh, dashboard restart, use, predict."""
    import re

    from tests.browser import chromium, require_browser, streamlit_server
    from tests.conftest import shared_path

    require_browser()
    demo = shared_path("lc25000-lung-224")
    env = {"HISTODASH_HOME": str(tmp_path / "home"), "HISTODASH_MODELS_DIR": str(tmp_path / "models"), "HISTODASH_JOBS_DIR": str(tmp_path / "home" / "jobs")}
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        try:
            with streamlit_server(env, tmp_path / "streamlit-a.log") as url:
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("link", name=re.compile("^Training$")).first.click()
                page.get_by_role("button", name="Start training").click()  # the form's defaults
                page.get_by_text(re.compile(r"queued: \d+ tiles in 3 classes")).first.wait_for(timeout=60_000)
                page.wait_for_url(re.compile(r"job=train-"), timeout=30_000)
                job_id = re.search(r"job=([\w-]+)", page.url).group(1)
                page.reload(wait_until="domcontentloaded")  # a browser refresh re-attaches through ?job=
                page.get_by_text(f"Job {job_id}").first.wait_for(timeout=60_000)
                page.get_by_text(re.compile(r"epoch \d+/\d+")).first.wait_for(timeout=120_000)
            with streamlit_server(env, tmp_path / "streamlit-b.log") as url:  # the dashboard restarted; the job went on
                page.goto(f"{url}/training?job={job_id}", wait_until="domcontentloaded")
                page.get_by_text(f"Job {job_id}").first.wait_for(timeout=60_000)
                done = page.get_by_text("Registered model").first
                done.wait_for(timeout=300_000)
                model_id = re.search(r"Registered model (\S+)", done.inner_text()).group(1)
                assert model_id in [p.name for p in (tmp_path / "models").iterdir()]
                use = page.get_by_role("button", name=re.compile("Use this model"))
                if use.count():  # the only model in this registry is already the sidebar's pick
                    use.click()
                page.get_by_text("is the selected model on every page").first.wait_for(timeout=30_000)
                page.get_by_role("link", name=re.compile("^upload$", re.I)).first.click()
                page.locator("input[type=file]").first.set_input_files(str(sorted((demo / "images").glob("lungaca*.jpeg"))[0]))
                page.get_by_text("1 tile(s) in this session").wait_for(timeout=60_000)
                page.get_by_role("link", name=re.compile("^(predict|Tile prediction)$", re.I)).first.click()
                page.get_by_text(model_id).first.wait_for(timeout=60_000)
                page.get_by_role("button", name=re.compile(r"Predict 1 tile")).click()
                page.get_by_role("tab", name="Gallery").click(timeout=120_000)
                page.get_by_text(re.compile(r"· [01]\.\d{3}")).first.wait_for(timeout=60_000)
                assert page.get_by_text("Traceback").count() == 0
        except Exception:
            out = ROOT / "test-artifacts"
            out.mkdir(exist_ok=True)
            page.screenshot(path=str(out / "browser_training_failure.png"), full_page=True)
            raise


def test_a_taken_model_id_is_refused_at_submit(runner, monkeypatch, tmp_path):
    """Issue 15: a model id already registered was refused only after training."""
    from tests.engine.training.test_training import make_folder_dataset

    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    data = make_folder_dataset(tmp_path / "tiles", per_class=4, patients=2)
    at = page()
    next(t for t in at.text_input if t.label.startswith("Dataset")).set_value(str(data))
    next(t for t in at.text_input if t.label.startswith("Model id")).set_value("tiny-test")  # registered by tiny_registry
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception
    assert "A model 'tiny-test' is already registered." in texts(at, "error") and runner.list() == []
