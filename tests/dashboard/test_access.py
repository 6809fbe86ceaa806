"""Access by capability (issue 15 item 6): who may open a job, and results that outlive their session's workspace.

* A job on an uploaded slide (or any input inside a session workspace) opens only in the browser session that
  submitted it; a job on library slides or configured data roots opens for any signed-in user. A ``?job=`` id of
  another session gets one message (the same as a job that does not exist) and nothing of the job.
* A finished heatmap of an uploaded slide keeps its own link to (or copy of) the slide: after the workspace sweep
  its owner still opens it, and the viewer still serves its tiles.

Through the engine (``engine.jobs.get_visible``), the Slide heatmap and Training pages (AppTest, real worker
processes) and the tile server (Starlette's test client with the real session cookie).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine import jobs
from engine.errors import JobNotFoundError
from engine.jobs import JobRecord, get_visible, is_private, list_visible, visible_to
from tests.conftest import make_pyramid

A, B = "a" * 32, "b" * 32
CANNOT = "The job in the link cannot be opened here"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    work, jobs_dir = tmp_path / "sessions", tmp_path / "jobs"
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(work))
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(jobs_dir))
    monkeypatch.setenv("HISTODASH_DATA_ROOTS", str(tmp_path / "roots"))
    return work, jobs_dir


def record(params: dict, owner: str | None = A, state: str = "succeeded") -> JobRecord:
    return JobRecord(id="heatmap-x", kind="heatmap", state=state, params=params, owner=owner)


def page_as(session: str, view: str, query: dict | None = None):
    """The page ``view`` (AppTest) for browser session ``session`` with the link's ``query``."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=90)
    at.session_state["session_id"] = session  # the id the signed cookie names (AppTest sends no cookie)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page(view)
    at.run()
    assert not at.exception, at.exception
    return at


def test_who_may_see_a_job(dirs, tmp_path):
    work, _ = dirs
    upload = record({"slide_id": "up:case.svs", "slide_path": str(work / A / "slides" / "case.svs")})
    library = record({"slide_id": "lib:case.svs", "slide_path": str(tmp_path / "library" / "case.svs")})
    zipped = record({"data": str(work / A / "training" / "tiles.zip")})
    roots = record({"data": str(tmp_path / "roots" / "lc25000")})
    sneaky = record({"slide_id": "lib:x", "slide_path": str(work / A / "slides" / ".." / "slides" / "case.svs")})
    assert [is_private(r) for r in (upload, library, zipped, roots, sneaky)] == [True, False, True, False, True]
    for private in (upload, zipped, sneaky):
        assert visible_to(private, A) and not visible_to(private, B) and not visible_to(private, None) and not visible_to(private, "")
    assert not visible_to(record(upload.params, owner=None), A)  # an upload job nobody owns opens for nobody
    for public in (library, roots):
        assert visible_to(public, A) and visible_to(public, B) and visible_to(public, None)
        assert not visible_to(public, A, signed_in=False)  # library slides: signed-in users only
    damaged = JobRecord(id="heatmap-y", kind="unknown", state=jobs.DAMAGED, params={}, error="The job record is damaged (no job kind).")
    assert visible_to(damaged, B)  # listed as damaged (its id and that message only), never a crash


def test_a_job_id_of_another_session_opens_nothing(dirs, monkeypatch, tmp_path):
    work, jobs_dir = dirs
    monkeypatch.setitem(jobs.JOB_KINDS, "heatmap", "tests.jobfuncs:hold")
    runner = jobs.LocalProcessRunner(jobs_dir)
    release = tmp_path / "release"
    release.touch()  # the jobs end at once
    mine = runner.submit("heatmap", {"slide_id": "up:case.svs", "slide_path": str(work / A / "slides" / "case.svs"), "release": str(release)}, owner=A)
    shared = runner.submit("heatmap", {"slide_id": "lib:case.svs", "slide_path": str(tmp_path / "case.svs"), "release": str(release)}, owner=A)
    assert len(mine.rsplit("-", 1)[-1]) == 32  # 128 random bits
    assert get_visible(runner, mine, A).id == mine and get_visible(runner, shared, B).id == shared
    with pytest.raises(JobNotFoundError) as other:
        get_visible(runner, mine, B)
    with pytest.raises(JobNotFoundError) as missing:
        get_visible(runner, "heatmap-20250101-000000-" + "0" * 32, B)
    with pytest.raises(JobNotFoundError) as junk:
        get_visible(runner, "<a href=x>", B)
    assert str(other.value) == str(missing.value) == str(junk.value) and CANNOT in str(other.value)  # tells nothing
    assert mine not in str(other.value)
    assert [r.id for r in list_visible(runner, B, "heatmap")] == [shared]
    assert sorted(r.id for r in list_visible(runner, A, "heatmap")) == sorted([mine, shared])
    for job_id in (mine, shared):
        runner.wait(job_id, timeout=60)


def test_the_heatmap_job_keeps_an_uploaded_slide_and_only_that(dirs, tmp_path, tiny_registry, pyramid):
    """Engine side of 'results outlive the sweep': an upload is hard-linked into the job (same inode, no space),
    a library slide is not copied, and a job that ends without a heatmap keeps nothing."""
    import shutil

    from engine.errors import InvalidInputError
    from engine.heatmap import HeatmapResult, run_job
    from engine.slides import open_slide
    from engine.workspaces import sweep_workspaces
    from tests.fakes import FakeContext

    work, _ = dirs
    upload = work / A / "slides" / "case.tif"
    upload.parent.mkdir(parents=True)
    shutil.copy(pyramid, upload)
    params = {"slide_path": str(upload), "model_id": "tiny-test", "level": 2, "tile_px": 64}
    out = run_job(params, FakeContext(tmp_path / "job1"))
    kept = Path(out["slide_path"])
    assert out["slide_kept"] and kept.parent == tmp_path / "job1" / "work" / "slide" and kept.stat().st_ino == upload.stat().st_ino
    assert A in sweep_workspaces(work, max_age_s=0.0, now=time.time() + 60) and not upload.exists()
    with open_slide(kept) as slide:
        assert slide.content_hash() == HeatmapResult.load(Path(out["out_dir"])).slide_hash  # the very slide the heatmap is of
    library = run_job({**params, "slide_path": str(pyramid)}, FakeContext(tmp_path / "job2"))
    assert not library["slide_kept"] and library["slide_path"] == str(pyramid) and not (tmp_path / "job2" / "work" / "slide").exists()
    upload.parent.mkdir(parents=True)  # the session comes back
    blank = make_pyramid(work / A / "slides" / "blank.tif", width=1024, height=768, levels=2, rects=[], noise=5)
    with pytest.raises(InvalidInputError, match="No tissue found"):
        run_job({**params, "slide_path": str(blank), "level": 1}, FakeContext(tmp_path / "job3"))
    assert list((tmp_path / "job3" / "work" / "slide").iterdir()) == []  # no heatmap: no copy of the upload kept


def test_a_cohorts_session_files_make_it_private(dirs, tmp_path, monkeypatch):
    """A cohort reads a clinical table saved in the session workspace and uploaded slides (there, or staged into
    the slide library for the cluster): its owner's alone. A cohort of library slides alone is anyone's."""
    from engine.cohort.job import STAGING

    work, _ = dirs
    library = tmp_path / "library"
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(library))
    cohort = {"slide_dir": str(library / "study"), "patient_pattern": r"^([^_.]+)", "clusters": 3}
    clinical = {**cohort, "clinical": str(work / A / "cohort" / "clinical.csv")}
    uploads = {**cohort, "slides": [str(work / A / "slides" / "case.svs")]}
    staged = {**cohort, "slides": [str(library / STAGING / "0123456789ab_case.svs")]}
    recs = [JobRecord(id="cohort-x", kind="cohort", state="succeeded", params=p, owner=A) for p in (cohort, clinical, uploads, staged)]
    assert [is_private(r) for r in recs] == [False, True, True, True]
    assert all(visible_to(r, A) for r in recs) and [visible_to(r, B) for r in recs] == [True, False, False, False]


def test_cohort_page_opens_another_sessions_cohort_job_for_nobody_else(dirs, monkeypatch, tmp_path):
    work, _ = dirs
    monkeypatch.setitem(jobs.JOB_KINDS, "cohort", "tests.jobfuncs:hold")  # held running until cancelled
    runner = jobs.get_runner()
    job_id = runner.submit("cohort", {"clinical": str(work / A / "cohort" / "clinical.csv"), "clusters": 3}, owner=A)

    try:
        other = page_as(B, "views/cohort.py", {"cohort_job": job_id})
        errors = "\n".join(e.value for e in other.error)
        assert CANNOT in errors and job_id not in errors and "cohort_job" not in other.query_params
        assert not other.get("progress")  # nothing of A's job
        owner = page_as(A, "views/cohort.py", {"cohort_job": job_id})
        assert not owner.error, [e.value for e in owner.error]
        assert owner.query_params["cohort_job"] in (job_id, [job_id]) and owner.get("progress")  # its job, running
    finally:
        runner.cancel(job_id)
        runner.wait(job_id, timeout=60)


# ----------------------------------------------------------------------------- the Training page

def test_training_page_lists_another_sessions_upload_job_for_nobody_else(dirs, monkeypatch, tiny_registry):
    from tests.dashboard.views.test_training import page, texts

    work, jobs_dir = dirs
    monkeypatch.setitem(jobs.JOB_KINDS, "train", "tests.dashboard.views.test_training:fake_train")
    runner = jobs.LocalProcessRunner(jobs_dir)
    job_id = runner.submit("train", {"data": str(work / A / "training" / "tiles.zip"), "architecture": "small_cnn"}, owner=A)
    runner.wait(job_id, timeout=60)
    other = page({"job": job_id})
    assert "is not in this job list" in texts(other, "warning") and job_id not in texts(other, "warning")
    assert "No training jobs yet." in texts(other, "info")  # nothing of A's job
    owner = page_as(A, "views/training.py", {"job": job_id})
    assert f"Job {job_id}" in texts(owner, "subheader") and "Registered model" in "\n".join(s.value for s in owner.success)


# ----------------------------------------------------------------------------- the Slide heatmap page + the tile server

def slide_page(session: str, query: dict | None = None):
    return page_as(session, "views/slides.py", query)


def test_an_uploaded_slides_heatmap_is_its_owners_and_outlives_the_sweep(dirs, tmp_path, tiny_registry):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.testclient import TestClient

    from dashboard import tileserver, websession
    from engine.workspaces import sweep_workspaces
    from tests.dashboard.views.test_slides import texts, viewer_args, wait_for_job

    work, _ = dirs
    slide = make_pyramid(tmp_path / "Patient-1234.tif", width=2048, height=1536, levels=2)
    at = slide_page(A)
    at.file_uploader[0].set_value([(slide.name, slide.read_bytes(), "image/tiff")]).run()
    assert f"Saved '{slide.name}'" in "\n".join(s.value for s in at.success), texts(at, "error")
    at.selectbox(key="hm_level").set_value(1).run()
    at.number_input(key="hm_tile_px").set_value(128).run()
    next(b for b in at.button if b.label == "Compute heatmap").click().run()
    job_id = at.query_params["job"]
    wait_for_job(at)
    assert not at.error, texts(at, "error")
    upload = work / A / "slides" / slide.name
    rec = jobs.get_runner().get(job_id)
    kept = Path(rec.result["slide_path"])
    assert rec.result["slide_kept"] and kept.is_file() and kept != upload and kept.stat().st_ino == upload.stat().st_ino  # a hard link
    query = {"job": job_id, "slide": f"up:{slide.name}"}

    # another browser session with the link: one message, nothing of the job (no heatmap, no tiles, no slide)
    other = slide_page(B, query)
    assert CANNOT in texts(other, "error") and "No uploaded slide" in texts(other, "error"), texts(other, "error")
    assert "Heatmap" not in texts(other, "subheader") and not other.get("component_instance")
    assert job_id not in texts(other, "error")

    # the owner's workspace is swept (its session ended): the upload is gone, the finished heatmap is not
    assert A in sweep_workspaces(work, max_age_s=0.0, now=time.time() + 60)
    assert not upload.exists() and kept.is_file()
    again = slide_page(A, query)
    assert not again.error, texts(again, "error")
    assert "Heatmap" in texts(again, "subheader") and slide.name in texts(again, "subheader")
    n = int(next(m for m in again.metric if m.label == "Tissue tiles").value.replace(",", ""))
    args = viewer_args(again)
    assert args["tiles"]["n"] == n > 0 and args["tiles"]["slide_hash"] == args["slide"]["hash"]

    # and the viewer serves its tiles, to the owner's browser only
    app = Starlette(routes=tileserver.routes(), middleware=[Middleware(websession.BrowserSessionMiddleware)])
    owner, stranger = TestClient(app), TestClient(app)
    owner.cookies.set(websession.COOKIE, websession.sign(A))
    stranger.cookies.set(websession.COOKIE, websession.sign(B))
    dzi, tiles = args["slide"]["dzi"], args["slide"]["tiles"]
    assert owner.get(dzi).status_code == 200
    tile = owner.get(f"{tiles}0/0_0.jpeg")
    assert tile.status_code == 200 and tile.content.startswith(b"\xff\xd8")
    assert stranger.get(dzi).status_code == 403 and stranger.get(f"{tiles}0/0_0.jpeg").status_code == 403
    # the third browser opening B's link after all this: still nothing
    assert CANNOT in texts(slide_page(B, query), "error")
