"""Issue 13 in a real headless Chromium: work bound to the browser (refresh, new tab, server restart), isolation
between browsers, the sign-in kept by the cookie, a deep link opened after signing in, Enter not submitting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import streamlit_server
from tests.conftest import ROOT
from tests.e2e import test_suite as suite
from tests.e2e.test_suite import (
    T,
    gallery_scores,
    main,
    nav,
    no_exception,
    open_app,
    server_env,
    tile_file,
    upload_tiles,
)

pytestmark = pytest.mark.browser
# the suite's fixtures: a module folder, the default model plus the tiny one, one Chromium, a screenshot of every page on failure
suite_dir, models_dir, browser, new_page = suite.suite_dir, suite.models_dir, suite.browser, suite.new_page


@pytest.fixture(scope="module")
def root(suite_dir) -> Path:
    return suite_dir


def fresh_tab(page):
    """A second tab of the same browser (same cookies)."""
    tab = page.context.new_page()
    tab.set_default_timeout(T)
    return tab


def tiles_shown(page, n: int) -> None:
    main(page).get_by_text(f"{n} tile(s) in this session").wait_for()


def prediction_shown(page, names: set[str], timeout_ms: int = T) -> dict[str, float]:
    main(page).get_by_test_id("stMetric").filter(has_text="From cache").wait_for(timeout=timeout_ms)
    scores = gallery_scores(page, len(names))
    assert set(scores) == names, scores
    return scores


def test_tiles_and_predictions_survive_refresh_new_tab_and_restart_and_stay_private(root, models_dir, new_page, tmp_path):
    files = [tile_file(tmp_path, "kept-one.png", 31), tile_file(tmp_path, "kept-two.png", 32)]
    names = {f.name for f in files}
    home = root / "home-persist"
    env = server_env(home, models_dir)
    with streamlit_server(env, root / "persist-1.log") as url:
        page = first = new_page()
        open_app(page, url)
        upload_tiles(page, files, expect=2)
        nav(page, "Tile prediction")
        main(page).get_by_role("button", name="Predict 2 tile(s)").click()
        main(page).get_by_text("Predicting 2 tile(s)").wait_for()  # in the background, with progress
        scores = prediction_shown(page, names, timeout_ms=300_000)  # the first prediction imports TensorFlow
        # refresh: a new websocket (a new Streamlit session), the same browser
        page.reload(wait_until="domcontentloaded")
        assert prediction_shown(page, names) == scores  # shown again without pressing Predict
        nav(page, "Upload")
        tiles_shown(page, 2)
        # a second tab of the same browser
        tab = fresh_tab(page)
        open_app(tab, url, "predict")
        assert prediction_shown(tab, names) == scores
        # another browser sees none of it
        stranger = new_page()
        open_app(stranger, url, "upload")
        tiles_shown(stranger, 0)
        open_app(stranger, url, "predict")
        main(stranger).get_by_text("No tiles yet").wait_for()
        no_exception(page)
        no_exception(tab)
    # the server restarts (same home, new process and port): the browser's cookie opens the same workspace
    with streamlit_server(env, root / "persist-2.log") as url:
        page = fresh_tab(first)
        open_app(page, url, "predict")
        assert prediction_shown(page, names) == scores
        nav(page, "Upload")
        tiles_shown(page, 2)
        # one tile removed: gone in this browser, the other stays
        main(page).get_by_test_id("stButton").filter(has_text=re.compile(r"Remove\s*$")).first.click()
        tiles_shown(page, 1)
        no_exception(page)


def test_sign_in_is_kept_by_the_cookie_and_a_deep_link_opens_after_it(root, models_dir, new_page):
    from engine.auth import hash_password

    password = "kept by the cookie"
    env = server_env(root / "home-login", models_dir, HISTODASH_PASSWORD_HASH=hash_password(password))
    with streamlit_server(env, root / "login.log") as url:
        page = new_page()
        page.goto(f"{url}/training?job=not-a-job", wait_until="domcontentloaded")  # a deep link, before signing in
        box = main(page).locator('input[type=password][aria-label="Password"]')
        box.wait_for()
        assert page.get_by_test_id("stSidebarNav").count() == 0
        box.fill(password)
        box.press("Enter")
        main(page).get_by_role("heading", level=1, name="Training").wait_for()  # the page asked for, not Home
        assert "/training" in page.url and "job=not-a-job" in page.url, page.url
        # refresh and a new tab: still signed in
        page.reload(wait_until="domcontentloaded")
        main(page).get_by_role("heading", level=1, name="Training").wait_for()
        tab = fresh_tab(page)
        open_app(tab, url)
        main(tab).get_by_text("Research use only").wait_for()
        # another browser is not
        other = new_page()
        other.goto(url, wait_until="domcontentloaded")
        other.locator('input[type=password][aria-label="Password"]').wait_for()
        # sign out: this browser sees the form again, in every tab, and its next sign-in starts afresh
        page.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("Sign out")).click()
        main(page).locator('input[type=password][aria-label="Password"]').wait_for()
        tab.reload(wait_until="domcontentloaded")
        main(tab).locator('input[type=password][aria-label="Password"]').wait_for()
        no_exception(page)


def test_enter_in_a_training_field_does_not_start_a_job(root, models_dir, new_page):
    env = server_env(root / "home-train", models_dir)
    with streamlit_server(env, root / "train.log") as url:
        page = new_page()
        open_app(page, url, "training")
        main(page).get_by_text("No training jobs yet.").wait_for()
        for label in ("Epochs", "Batch size", "Learning rate"):
            field = main(page).get_by_label(label, exact=True)
            field.fill("3" if label != "Learning rate" else "0.01")
            field.press("Enter")
        page.wait_for_timeout(3000)  # a submission would have queued a job and redrawn the page by now
        assert main(page).get_by_text("No training jobs yet.").count() == 1
        assert main(page).get_by_text(re.compile(r"Job \*?\*?train-")).count() == 0
        jobs_dir = root / "home-train" / "jobs"
        assert not jobs_dir.exists() or not any(p.is_dir() for p in jobs_dir.iterdir())
        no_exception(page)


SURVIVAL_PAGE = ROOT / "dashboard" / "views" / "survival.py"


@pytest.mark.skipif("state.put(" not in SURVIVAL_PAGE.read_text(), reason="the Cohort survival page does not keep its results with "
                    "dashboard.state yet (branch hardening rewrites it with that API: /work/notes/state-api.md)")
def test_survival_result_survives_a_refresh(root, models_dir, new_page):
    env = server_env(root / "home-survival", models_dir)
    with streamlit_server(env, root / "survival.log") as url:
        page = new_page()
        open_app(page, url, "survival")
        main(page).get_by_role("button", name="Analyse").wait_for()
        strata = main(page).get_by_test_id("stSelectbox").filter(has_text="Strata")
        strata.click()
        page.get_by_role("option", name="median split").click()
        main(page).get_by_role("button", name="Analyse").click()
        main(page).get_by_text(re.compile(r"low \(≤ \d")).first.wait_for()  # the median split's groups: low (≤ 63), high (> 63)
        before = main(page).get_by_test_id("stMetric").first.inner_text()
        page.reload(wait_until="domcontentloaded")
        main(page).get_by_text(re.compile(r"low \(≤ \d")).first.wait_for()  # without pressing Analyse again
        main(page).get_by_test_id("stMetric").first.wait_for(state="attached")  # (in the Tests tab: attached, not shown)
        assert main(page).get_by_test_id("stMetric").first.inner_text() == before  # the analysis, not the default one
        no_exception(page)
