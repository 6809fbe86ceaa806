"""Issue 13 in a real headless Chromium: work bound to the browser (refresh, new tab, server restart), isolation
between browsers, the sign-in kept by the cookie, a deep link opened after signing in, Enter not submitting."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.browser import chromium, require_browser, streamlit_server
from tests.conftest import ROOT, write_tiny_model
from tests.test_browser_suite import (
    ARTIFACTS,
    DEFAULT_MODEL,
    VIEWPORT,
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


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser-state")


@pytest.fixture(scope="module")
def models_dir(root) -> Path:
    if not (ROOT / "models" / DEFAULT_MODEL / "card.json").exists():
        pytest.skip(f"the default model models/{DEFAULT_MODEL} is absent")
    out = root / "models"
    shutil.copytree(ROOT / "models" / DEFAULT_MODEL, out / DEFAULT_MODEL)
    write_tiny_model(out / "tiny-test")
    return out


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with chromium() as b:
        yield b


@pytest.fixture
def contexts(browser, request):
    made = []

    def make():
        ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        made.append(ctx)
        return ctx

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for i, ctx in enumerate(made):
        for j, page in enumerate(ctx.pages):
            if failed:
                ARTIFACTS.mkdir(exist_ok=True)
                try:
                    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i}-{j}.png"), full_page=True)
                except Exception:  # noqa: BLE001
                    pass
        ctx.close()


def new_page(ctx):
    page = ctx.new_page()
    page.set_default_timeout(T)
    return page


def tiles_shown(page, n: int) -> None:
    main(page).get_by_text(f"{n} tile(s) in this session").wait_for()


def prediction_shown(page, names: set[str], timeout_ms: int = T) -> dict[str, float]:
    main(page).get_by_test_id("stMetric").filter(has_text="From cache").wait_for(timeout=timeout_ms)
    scores = gallery_scores(page, len(names))
    assert set(scores) == names, scores
    return scores


def test_tiles_and_predictions_survive_refresh_new_tab_and_restart_and_stay_private(root, models_dir, contexts, tmp_path):
    files = [tile_file(tmp_path, "kept-one.png", 31), tile_file(tmp_path, "kept-two.png", 32)]
    names = {f.name for f in files}
    home = root / "home-persist"
    env = server_env(home, models_dir)
    ctx = contexts()
    with streamlit_server(env, root / "persist-1.log") as url:
        page = new_page(ctx)
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
        tab = new_page(ctx)
        open_app(tab, url, "predict")
        assert prediction_shown(tab, names) == scores
        # another browser sees none of it
        stranger = new_page(contexts())
        open_app(stranger, url, "upload")
        tiles_shown(stranger, 0)
        open_app(stranger, url, "predict")
        main(stranger).get_by_text("No tiles yet").wait_for()
        no_exception(page)
        no_exception(tab)
    # the server restarts (same home, new process and port): the browser's cookie opens the same workspace
    with streamlit_server(env, root / "persist-2.log") as url:
        page = new_page(ctx)
        open_app(page, url, "predict")
        assert prediction_shown(page, names) == scores
        nav(page, "Upload")
        tiles_shown(page, 2)
        # one tile removed: gone in this browser, the other stays
        main(page).get_by_test_id("stButton").filter(has_text=re.compile(r"Remove\s*$")).first.click()
        tiles_shown(page, 1)
        no_exception(page)


def test_sign_in_is_kept_by_the_cookie_and_a_deep_link_opens_after_it(root, models_dir, contexts):
    from engine.auth import hash_password

    password = "kept by the cookie"
    env = server_env(root / "home-login", models_dir, HISTODASH_PASSWORD_HASH=hash_password(password))
    with streamlit_server(env, root / "login.log") as url:
        ctx = contexts()
        page = new_page(ctx)
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
        tab = new_page(ctx)
        open_app(tab, url)
        main(tab).get_by_text("Research use only").wait_for()
        # another browser is not
        other = new_page(contexts())
        other.goto(url, wait_until="domcontentloaded")
        other.locator('input[type=password][aria-label="Password"]').wait_for()
        # sign out: this browser sees the form again, in every tab, and its next sign-in starts afresh
        page.get_by_test_id("stSidebar").get_by_role("button", name=re.compile("Sign out")).click()
        main(page).locator('input[type=password][aria-label="Password"]').wait_for()
        tab.reload(wait_until="domcontentloaded")
        main(tab).locator('input[type=password][aria-label="Password"]').wait_for()
        no_exception(page)


def test_enter_in_a_training_field_does_not_start_a_job(root, models_dir, contexts):
    env = server_env(root / "home-train", models_dir)
    with streamlit_server(env, root / "train.log") as url:
        page = new_page(contexts())
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
