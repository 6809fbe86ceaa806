"""Every page's main path in a real headless Chromium (Debian's), against a real Streamlit server.

One server and one browser per module (a fresh browser context, i.e. a fresh Streamlit session, per test);
the login tests start their own servers. A failing test leaves a screenshot of each of its pages in
``test-artifacts/``. The Training page's browser test lives in ``test_page_training.py``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import CHROMIUM, CHROMIUM_ARGS, chromium, require_browser, streamlit_server
from tests.conftest import ROOT, rgb_tile, write_tiny_model

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts"
DEFAULT_MODEL = "lc25000-lung-cnn"
VIEWPORT = {"width": 1400, "height": 1100}
T = 60_000  # ms: one page step on a 2-core CI machine
SCORE = re.compile(r"· ([01]\.\d{3})")


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser-suite")


@pytest.fixture(scope="module")
def models_dir(suite_dir) -> Path:
    """The shipped default model plus a tiny one (fast slide heatmaps)."""
    if not (ROOT / "models" / DEFAULT_MODEL / "card.json").exists():
        pytest.skip(f"the default model models/{DEFAULT_MODEL} is absent")
    root = suite_dir / "models"
    shutil.copytree(ROOT / "models" / DEFAULT_MODEL, root / DEFAULT_MODEL)
    write_tiny_model(root / "tiny-test")
    return root


@pytest.fixture(scope="module")
def slides_dir(suite_dir) -> Path:
    from tests.conftest import make_pyramid

    root = suite_dir / "slides"
    root.mkdir()
    make_pyramid(root / "synthetic.tif", width=2048, height=1536, levels=2)
    return root


def server_env(home: Path, models: Path, **extra) -> dict:
    return {
        "HISTODASH_HOME": str(home), "HISTODASH_CACHE_DIR": str(home / "cache"), "HISTODASH_WORK_DIR": str(home / "sessions"),
        "HISTODASH_JOBS_DIR": str(home / "jobs"), "HISTODASH_MODELS_DIR": str(models), "HISTODASH_DEFAULT_MODEL": DEFAULT_MODEL,
        "HISTODASH_PASSWORD_HASH": None, **extra,
    }


@pytest.fixture(scope="module")
def server(suite_dir, models_dir, slides_dir):
    require_browser()
    env = server_env(suite_dir / "home", models_dir, HISTODASH_SLIDES_DIR=str(slides_dir))
    with streamlit_server(env, suite_dir / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with chromium() as b:
        yield b


@pytest.fixture
def new_page(browser, request):
    """``new_page()`` opens a page in a fresh browser context (a new Streamlit session); on failure every page is screenshotted."""
    contexts = []

    def make():
        ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(T)
        return page

    yield make
    failed = any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    for i, ctx in enumerate(contexts):
        for j, page in enumerate(ctx.pages):
            if failed:
                ARTIFACTS.mkdir(exist_ok=True)
                try:
                    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i}-{j}.png"), full_page=True)
                except Exception:  # noqa: BLE001 - a screenshot must not hide the test's own failure
                    pass
        ctx.close()


# ----------------------------------------------------------------------------------------------- helpers
def tile_file(folder: Path, name: str, seed: int, size: int = 144) -> Path:
    path = folder / name
    img = Image.fromarray(rgb_tile(seed, size))
    img.save(path, format="JPEG" if name.endswith((".jpg", ".jpeg")) else "PNG")
    return path


def main(page):
    return page.get_by_test_id("stMain")


def nav(page, title: str) -> None:
    """Client-side navigation through the sidebar (keeps the Streamlit session, unlike page.goto)."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=re.compile(rf"{re.escape(title)}$")).click()
    main(page).get_by_role("heading", level=1).first.wait_for()


def title(page) -> str:
    return main(page).get_by_role("heading", level=1).first.inner_text().strip()


def open_app(page, url: str, path: str = "") -> None:
    page.goto(f"{url}/{path}", wait_until="domcontentloaded")
    page.get_by_test_id("stSidebarNav").wait_for()


def upload_tiles(page, files: list[Path], expect: int) -> None:
    nav(page, "Upload")
    main(page).locator("input[type=file]").first.set_input_files([str(f) for f in files])
    main(page).get_by_text(f"{expect} tile(s) in this session").wait_for()


def no_exception(page) -> None:
    assert page.get_by_test_id("stException").count() == 0, page.get_by_test_id("stException").first.inner_text()
    assert page.get_by_text("Traceback").count() == 0


def gallery_scores(page, n: int) -> dict[str, float]:
    """Tile prediction's gallery captions ('**label** · 0.123' then the file name) as {name: score}."""
    main(page).get_by_role("tab", name="Gallery").click()
    captions = main(page).get_by_test_id("stCaptionContainer").filter(has_text=SCORE)
    captions.nth(n - 1).wait_for()
    out = {}
    for text in captions.all_inner_texts():
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        out[lines[-1]] = float(SCORE.search(text).group(1))
    return out


def model_picker(page):
    return page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox")


def images_loaded(imgs, n: int, timeout_s: float = 30) -> list:
    """Waits until the locator holds n images the browser has decoded; returns [(complete, naturalWidth, src)] as last seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = imgs.evaluate_all("es => es.map(i => [i.complete, i.naturalWidth, i.src])")
        if (len(state) == n and all(c and w for c, w, _ in state)) or time.monotonic() > deadline:
            return state
        time.sleep(0.25)


def all_loaded(state: list, n: int) -> bool:
    return len(state) == n and all(c and w for c, w, _ in state)


# ----------------------------------------------------------------------------------------------- pages
def test_home_disclaimer_and_links(server, new_page):
    page = new_page()
    open_app(page, server)
    assert title(page).endswith("HistoDash")
    main(page).get_by_text("Research use only").wait_for()
    assert "must not guide patient care" in main(page).inner_text()
    links = main(page).locator("[data-testid=stPageLink] a")
    pages = {"Upload": ("Upload tiles", "upload"), "Tile prediction": ("Tile prediction", "predict"), "Grad-CAM": ("Grad-CAM", "gradcam"),
             "Slide heatmap": ("Slide heatmap", "slides"), "Cohort survival": ("Cohort survival", "survival"), "Training": ("Training", "training"), "Models": ("Models", "models")}
    links.nth(len(pages) - 1).wait_for()  # page links are drawn after the text around them
    names = [re.sub(r"^\S+\s+", "", t.strip()) for t in links.all_inner_texts()]  # drop the icon ligature
    assert names == list(pages), names
    for i, (heading, path) in enumerate(pages.values()):
        if i:
            nav(page, "Home")
        main(page).locator("[data-testid=stPageLink] a").nth(i).click()
        main(page).get_by_role("heading", level=1, name=heading).wait_for()
        assert page.url.rstrip("/").endswith(f"/{path}"), page.url
        no_exception(page)


def test_upload_tiles_zip_and_a_broken_file(server, new_page, tmp_path):
    a = tile_file(tmp_path, "alpha.png", 1)
    b = tile_file(tmp_path, "beta.jpg", 2)
    zpath = tmp_path / "batch.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for name, seed in (("gamma.png", 3), ("sub/delta.png", 4)):
            buf = io.BytesIO()
            Image.fromarray(rgb_tile(seed, 96)).save(buf, format="PNG")
            z.writestr(name, buf.getvalue())
        z.writestr("notes.txt", "not a tile")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    page = new_page()
    open_app(page, server)
    upload_tiles(page, [a, b, zpath, broken], expect=4)
    for name in ("alpha.png", "beta.jpg", "batch.zip/gamma.png", "batch.zip/sub/delta.png"):  # captions under the thumbnails
        main(page).get_by_test_id("stCaptionContainer").filter(has_text=re.compile(rf"^{re.escape(name)}\s")).wait_for()
    text = main(page).inner_text()
    assert "broken.png was not loaded" in text
    assert "skipped 1 non-tile entries (notes.txt)" in text
    thumbs = images_loaded(main(page).get_by_test_id("stImage").locator("img"), 4)
    assert all_loaded(thumbs, 4), thumbs
    no_exception(page)


def test_tile_prediction_scores_and_csv_download(server, new_page, tmp_path):
    files = [tile_file(tmp_path, "one.png", 11), tile_file(tmp_path, "two.png", 12)]
    page = new_page()
    open_app(page, server)
    upload_tiles(page, files, expect=2)
    nav(page, "Tile prediction")
    main(page).get_by_text(f"Model {DEFAULT_MODEL}").wait_for()
    main(page).get_by_role("button", name="Predict 2 tile(s)").click()
    main(page).get_by_test_id("stMetric").filter(has_text="From cache").wait_for(timeout=120_000)
    scores = gallery_scores(page, 2)
    assert set(scores) == {"one.png", "two.png"}
    main(page).get_by_role("tab", name="Table").click()
    with page.expect_download() as dl:
        main(page).get_by_role("button", name="Download CSV").click()
    download = dl.value
    assert download.suggested_filename == f"histodash_predictions_{DEFAULT_MODEL}.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert {r["path"] for r in rows} == set(scores)
    for r in rows:
        assert abs(float(r["score"]) - scores[r["path"]]) < 5e-4  # the page's score is the file's, rounded
        probs = [float(r[c]) for c in ("p_lung_aca", "p_lung_n", "p_lung_scc")]
        assert abs(sum(probs) - 1) < 1e-4
        assert abs(float(r["score"]) - probs[0] - probs[2]) < 1e-4  # score = p(aca) + p(scc), the card's positives
        assert r["label"] in ("malignant", "benign") and "error" not in r  # no all-empty column
        assert r["model_id"] == DEFAULT_MODEL and 0 < float(r["threshold"]) < 1  # which model, at which threshold
    no_exception(page)


def test_gradcam_overlay_for_an_uploaded_tile(server, new_page, tmp_path):
    tile = tile_file(tmp_path, "explain-me.png", 21)
    page = new_page()
    open_app(page, server)
    nav(page, "Grad-CAM")
    main(page).get_by_text("Upload a tile").click()
    main(page).locator("input[type=file]").first.set_input_files(str(tile))
    compute = main(page).get_by_role("button", name="Compute")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMain] button')].some(b => b.innerText.trim() === 'Compute' && !b.disabled)")
    compute.click()
    main(page).get_by_role("heading", name="explain-me.png").wait_for(timeout=120_000)
    overlay = main(page).get_by_test_id("stImage").filter(has_text="Overlay")
    overlay.wait_for()
    shown = images_loaded(overlay.locator("img"), 1)
    assert all_loaded(shown, 1), shown
    assert main(page).get_by_test_id("stMetric").filter(has_text="Predicted class").count() == 1
    with page.expect_download() as dl:
        main(page).get_by_role("button", name="PNG: overlay").click()
    png = Image.open(dl.value.path())
    assert png.format == "PNG" and png.size == (144, 144)
    no_exception(page)


def test_direct_urls_show_the_sidebar_navigation(server, new_page):
    page = new_page()
    for path, heading in (("slides", "Slide heatmap"), ("survival", "Cohort survival"), ("predict", "Tile prediction")):
        open_app(page, server, path)
        main(page).get_by_role("heading", level=1, name=heading).wait_for()
        links = [t.split("\n")[-1].strip() for t in page.get_by_test_id("stSidebarNav").get_by_role("link").all_inner_texts()]
        assert {"Home", "Upload", "Tile prediction", "Grad-CAM", "Slide heatmap", "Cohort survival", "Training"} <= set(links), links
        picker = model_picker(page)
        picker.wait_for()
        assert picker.get_by_role("combobox").input_value() == DEFAULT_MODEL
        no_exception(page)


@pytest.mark.slow
def test_slide_heatmap_from_the_library(server, new_page):
    page = new_page()
    open_app(page, server, "slides")
    main(page).get_by_role("heading", level=1, name="Slide heatmap").wait_for()
    sidebar = page.get_by_test_id("stSidebar")
    model_picker(page).get_by_role("combobox").click()  # the sidebar model picker: the tiny model tiles fast
    page.get_by_role("option", name="tiny-test").click()
    sidebar.get_by_text("Tiny test model").wait_for()
    main(page).get_by_text("Slide library").click()
    main(page).get_by_text("Library folder: /").wait_for()
    main(page).get_by_role("button", name="Open slide").click()
    main(page).get_by_role("heading", name="synthetic.tif").wait_for()
    caption = main(page).get_by_text(re.compile(r"[\d,]+ tissue tiles of [\d,]+"))
    caption.wait_for()
    n_tiles = int(re.search(r"([\d,]+) tissue tiles", caption.inner_text()).group(1).replace(",", ""))
    assert n_tiles > 0
    main(page).get_by_role("button", name="Compute heatmap").click()
    page.wait_for_url(re.compile(r"job=heatmap-"))
    main(page).get_by_role("heading", name="Heatmap", exact=True).wait_for(timeout=240_000)
    viewer = page.frame_locator("iframe[title*='histodash_slide_viewer']")  # the slide viewer (tests/e2e/test_viewer.py tests it in depth)
    viewer.locator("#status").get_by_text(re.compile(rf"{n_tiles:,} tiles")).wait_for()
    metric = main(page).get_by_test_id("stMetric").filter(has_text="Tissue tiles")
    assert int(metric.get_by_test_id("stMetricValue").inner_text().replace(",", "")) == n_tiles
    assert main(page).get_by_text("The heatmap job failed").count() == 0
    no_exception(page)


def test_cohort_survival_demo_km_and_logrank(server, new_page):
    from engine import survival as sv

    page = new_page()
    open_app(page, server)
    nav(page, "Cohort survival")
    km = main(page).get_by_test_id("stPlotlyChart").first
    km.locator(".main-svg").first.wait_for(timeout=120_000)
    km.locator(".scatterlayer .trace").nth(1).wait_for()  # one step curve per sex, at least
    main(page).get_by_role("tab", name="Tests").click()
    metric = main(page).get_by_test_id("stMetric").filter(has_text="Log-rank")
    metric.wait_for()
    shown = metric.get_by_test_id("stMetricValue").inner_text().strip()
    demo = sv.DEMO_COHORTS["lung"]
    expected = sv.logrank_test(sv.prepare_cohort(sv.load_demo("lung"), demo.time, demo.event, demo.group))
    assert shown == sv.format_p(expected.p) == "p = 0.001", shown
    assert abs(expected.p - 0.00131) < 1e-5  # R: survdiff(Surv(time, status) ~ sex, lung) p = 0.00131
    no_exception(page)


@pytest.mark.skipif(not (ROOT / "dashboard" / "views" / "models.py").exists(), reason="dashboard/views/models.py is not written yet")
def test_models_page_lists_the_registry_and_imports_a_model(server, new_page, models_dir):
    page = new_page()
    open_app(page, server)
    nav(page, "Models")
    main(page).get_by_role("heading", name=re.compile(r"\d+ registered model")).wait_for()
    listed = main(page).get_by_test_id("stExpander")
    listed.filter(has_text="tiny-test").wait_for()
    listed.filter(has_text=DEFAULT_MODEL).wait_for()
    # import: the tiny model's .keras file under a new id; it is in the sidebar's picker at once
    main(page).locator("input[type=file]").first.set_input_files(str(models_dir / "tiny-test" / "model.keras"))
    main(page).get_by_role("textbox", name="Model id").fill("browser-import")
    main(page).get_by_role("textbox", name="Classes, in output order").fill("benign, tumour")
    main(page).get_by_role("spinbutton", name="Input px").fill("32")
    main(page).get_by_role("spinbutton", name="Input px").press("Tab")
    main(page).get_by_role("button", name="Import").click()
    main(page).get_by_text("Imported model browser-import").wait_for(timeout=120_000)
    assert (models_dir / "browser-import" / "card.json").exists()
    model_picker(page).get_by_role("combobox").click()
    page.get_by_role("option", name="browser-import").wait_for()
    page.keyboard.press("Escape")
    no_exception(page)


# ----------------------------------------------------------------------------------------------- concurrency
N_SESSIONS = 8


async def _one_session(browser, url: str, files: list[Path], i: int, pages: list) -> dict:
    ctx = await browser.new_context(viewport=VIEWPORT)
    page = await ctx.new_page()
    pages[i] = page
    page.set_default_timeout(240_000)  # eight sessions share two cores
    m = page.get_by_test_id("stMain")
    t0 = time.monotonic()
    await page.goto(url, wait_until="domcontentloaded")
    await page.get_by_test_id("stSidebarNav").get_by_role("link", name=re.compile("Upload$")).click()
    await m.locator("input[type=file]").first.set_input_files([str(f) for f in files])
    for f in files:  # its own thumbnails' captions
        await m.get_by_test_id("stCaptionContainer").filter(has_text=re.compile(rf"^{re.escape(f.name)}\s")).wait_for()
    text = await m.inner_text()
    uploaded = set(re.findall(r"s\d+_\w+\.png", text))
    count = re.search(r"(\d+) tile\(s\) in this session", text)
    if uploaded != {f.name for f in files} or not count or int(count.group(1)) != len(files):  # fail fast: another session's tiles
        return {"uploaded": uploaded, "predicted": {}, "tiles_metric": None, "exceptions": None, "start": t0, "end": time.monotonic()}
    await page.get_by_test_id("stSidebarNav").get_by_role("link", name=re.compile("Tile prediction$")).click()
    button = m.get_by_role("button", name=re.compile(r"^Predict \d+ tile\(s\)$"))
    if (await button.inner_text()).strip() != f"Predict {len(files)} tile(s)":  # fail fast: the page counts other tiles
        return {"uploaded": uploaded, "predicted": {}, "tiles_metric": (await button.inner_text()).strip(), "exceptions": None,
                "start": t0, "end": time.monotonic()}
    await button.click()
    await m.get_by_test_id("stMetric").filter(has_text="From cache").wait_for()
    await m.get_by_role("tab", name="Gallery").click()
    captions = m.get_by_test_id("stCaptionContainer").filter(has_text=SCORE)
    await captions.nth(len(files) - 1).wait_for()
    predicted = {t.strip().splitlines()[-1].strip(): float(SCORE.search(t).group(1)) for t in await captions.all_inner_texts()}
    tiles_metric = await m.get_by_test_id("stMetric").filter(has_text="Tiles").first.get_by_test_id("stMetricValue").inner_text()
    exceptions = await page.get_by_test_id("stException").count()
    return {"uploaded": uploaded, "predicted": predicted, "tiles_metric": tiles_metric.strip(), "exceptions": exceptions,
            "start": t0, "end": time.monotonic()}


async def _eight_sessions(url: str, files: dict[int, list[Path]], test_name: str) -> list:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pages: list = [None] * N_SESSIONS
        try:
            results = await asyncio.gather(*(_one_session(browser, url, files[i], i, pages) for i in range(N_SESSIONS)), return_exceptions=True)
            if any(isinstance(r, BaseException) for r in results):
                ARTIFACTS.mkdir(exist_ok=True)
                for i, page in enumerate(pages):
                    if page is not None:
                        try:
                            await page.screenshot(path=str(ARTIFACTS / f"{test_name}-session{i}.png"), full_page=True)
                        except Exception:  # noqa: BLE001
                            pass
            return results
        finally:
            await browser.close()


@pytest.mark.slow
def test_eight_concurrent_sessions_each_see_only_their_own_tiles(server, suite_dir, tmp_path):
    files = {}
    for i in range(N_SESSIONS):
        folder = tmp_path / f"session{i}"
        folder.mkdir()
        files[i] = [tile_file(folder, f"s{i}_{k}.png", 1000 + 10 * i + j) for j, k in enumerate(("first", "second"))]
    out: list = []
    # the async API in its own thread: this module's sync Playwright owns the main thread's event loop
    worker = threading.Thread(target=lambda: out.append(asyncio.run(_eight_sessions(server, files, "test_eight_concurrent_sessions"))))
    worker.start()
    worker.join(600)
    assert not worker.is_alive(), "the eight sessions did not finish in 10 minutes"
    results = out[0]
    errors = [f"session {i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not errors, "\n".join(errors)
    for i, r in enumerate(results):
        own = {f.name for f in files[i]}
        assert r["uploaded"] == own, (i, r["uploaded"])  # no other session's tiles on its Upload page
        assert r["tiles_metric"] == "2", (i, r)  # the Predict button and the result count its own two tiles
        assert set(r["predicted"]) == own, (i, r["predicted"])  # no other session's tiles in its prediction gallery
        assert r["exceptions"] == 0, (i, r)
        assert all(0.0 <= s <= 1.0 for s in r["predicted"].values())
    # the sessions overlapped in time (driven concurrently, not one after the other)
    assert max(r["start"] for r in results) < min(r["end"] for r in results)
    # on the server, each session's tiles (and anything derived from them) are in one workspace, with no other session's
    workspaces = [d for d in (suite_dir / "home" / "sessions").iterdir() if (d / "tiles").is_dir()]
    by_session = [{m.group(0) for p in (d / "tiles").rglob("*") if (m := re.search(r"s\d+_\w+?\.png", p.name))} for d in workspaces]
    for i in range(N_SESSIONS):
        own = {f.name for f in files[i]}
        holders = [names for names in by_session if names & own]
        assert holders == [own], (i, holders)


# ----------------------------------------------------------------------------------------------- login
def password_box(page):
    return main(page).locator('input[type=password][aria-label="Password"]')


def login_form_only(page) -> None:
    """The visitor sees the sign-in form and nothing of the app."""
    password_box(page).wait_for()
    main(page).get_by_role("button", name="Sign in").wait_for()
    page.wait_for_timeout(1000)  # anything a broken gate let through would be drawn after the form
    assert page.get_by_test_id("stSidebarNav").count() == 0
    assert model_picker(page).count() == 0
    assert page.locator("input[type=file]").count() == 0
    text = page.locator("body").inner_text()
    for app_text in ("Research use only", "Upload tiles", "tile(s) in this session", DEFAULT_MODEL, "Cache"):
        assert app_text not in text, app_text


def test_login_on_and_off(server, new_page, suite_dir, models_dir):
    from engine.auth import hash_password

    password = "browser suite passphrase"
    # off: without HISTODASH_PASSWORD_HASH the home page shows directly
    page = new_page()
    open_app(page, server)
    main(page).get_by_text("Research use only").wait_for()
    assert page.locator("input[type=password]").count() == 0
    # on
    env = server_env(suite_dir / "home-login", models_dir, HISTODASH_PASSWORD_HASH=hash_password(password))
    with streamlit_server(env, suite_dir / "streamlit-login.log") as url:
        visitor = new_page()
        for path in ("", "upload", "predict"):  # direct URLs too
            visitor.goto(f"{url}/{path}", wait_until="domcontentloaded")
            login_form_only(visitor)
            no_exception(visitor)
        box = password_box(visitor)
        box.fill("not the password")
        main(visitor).get_by_role("button", name="Sign in").click()
        error = main(visitor).get_by_text("Wrong password")
        error.wait_for()
        login_form_only(visitor)
        wait_s = int(re.search(r"Wait (\d+) s", error.inner_text()).group(1))
        time.sleep(wait_s + 0.5)  # the throttle's wait after one failure
        box.fill(password)
        main(visitor).get_by_role("button", name="Sign in").click()
        # the page asked for last before signing in (/predict) opens after it
        main(visitor).get_by_role("heading", name="Tile prediction").wait_for()
        nav(visitor, "Home")
        main(visitor).get_by_text("Research use only").wait_for()
        assert title(visitor).endswith("HistoDash")
        assert model_picker(visitor).get_by_role("combobox").input_value() == DEFAULT_MODEL
        nav(visitor, "Upload")  # signed in for the whole session
        main(visitor).locator("input[type=file]").first.wait_for(state="attached")
        no_exception(visitor)
        # another browser (a new session) still sees only the form
        other = new_page()
        other.goto(url, wait_until="domcontentloaded")
        login_form_only(other)
