"""The slide viewer in a real headless Chromium (Debian's, through Playwright) against `streamlit run dashboard/server.py`.

On the real CMU-1-Small-Region slide, from the page: a heatmap job, hover shows a tile's score, a click on the
highest-scoring tile opens its view and Grad-CAM link, a mode change is redrawn in the browser with no message on
Streamlit's websocket, zooming to the deepest Deep Zoom level loads level-0 tiles that render, and opening
another slide drops the first slide's heatmap. Screenshots land in ``test-artifacts/viewer-*.png``.
"""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from tests.browser import chromium, require_browser, streamlit_server
from tests.conftest import ROOT, SHARED_DATA

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts"
CMU, TCGA = "CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"
T = 90_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    from dashboard.components import viewer

    if not viewer.installed():
        pytest.skip("OpenSeadragon is not installed (make test runs npm ci in dashboard/components/viewer/frontend)")
    if not (SHARED_DATA / "wsi" / CMU).exists():
        pytest.skip(f"shared test data not available: {SHARED_DATA / 'wsi'} is absent (set HISTODASH_SHARED_DATA)")
    if not (ROOT / "models" / "lc25000-lung-cnn" / "card.json").exists():
        pytest.skip("the default model is absent")
    root = tmp_path_factory.mktemp("viewer-browser")
    lib = root / "library"
    lib.mkdir()
    for name in (CMU, TCGA):
        shutil.copy(SHARED_DATA / "wsi" / name, lib / name)
    home = root / "home"
    env = {"HISTODASH_HOME": str(home), "HISTODASH_CACHE_DIR": str(home / "cache"), "HISTODASH_WORK_DIR": str(home / "sessions"),
           "HISTODASH_JOBS_DIR": str(home / "jobs"), "HISTODASH_MODELS_DIR": str(ROOT / "models"), "HISTODASH_DEFAULT_MODEL": "lc25000-lung-cnn",
           "HISTODASH_SLIDES_DIR": str(lib), "HISTODASH_PASSWORD_HASH": None}
    with streamlit_server(env, root / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def session(server):
    """One browser page on the CMU slide with a finished heatmap (shared by the tests, in order)."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(T)
        ws_frames: list[tuple[float, str]] = []
        page.on("websocket", lambda ws: (ws.on("framesent", lambda _: ws_frames.append((time.monotonic(), "sent"))),
                                         ws.on("framereceived", lambda _: ws_frames.append((time.monotonic(), "received")))))
        tiles: list[tuple[str, int, str]] = []
        page.on("response", lambda r: tiles.append((r.url, r.status, r.headers.get("content-type", ""))) if "/tiles/" in r.url else None)
        page.goto(f"{server}/slides?slide=lib:{CMU}", wait_until="domcontentloaded")
        page.get_by_text(re.compile(r"tissue tiles of")).first.wait_for()
        page.get_by_role("button", name="Compute heatmap").click()
        page.wait_for_url(re.compile(r"job=heatmap-"))
        page.get_by_role("heading", name="Heatmap", exact=True).wait_for(timeout=240_000)
        frame = viewer_frame(page)
        frame.wait_for_function("() => window.HD && HD.tiles && HD.tiles.n > 0 && HD.heat && HD.viewer.world.getItemCount() === 1")
        yield {"page": page, "frame": frame, "ws": ws_frames, "tiles": tiles, "url": server}
        page.close()


def viewer_frame(page, slide_id: str | None = None):
    """The viewer's iframe (the one showing ``slide_id`` when given: another slide gets a new viewer)."""
    deadline = time.time() + T / 1000
    while time.time() < deadline:
        for el in page.locator("iframe[title*='histodash_slide_viewer']").element_handles():
            try:
                f = el.content_frame()
                if f is not None and f.evaluate("(id) => !!window.HD && (!id || (HD.slideKey || '').endsWith(id))", slide_id):
                    return f
            except Exception:  # noqa: BLE001 - a frame that is being replaced
                pass
        time.sleep(0.3)
    seen = []
    for f in page.frames:
        try:
            seen.append((f.url[-60:], f.evaluate("() => window.HD ? [HD.slideKey, HD.renders] : null")))
        except Exception as exc:  # noqa: BLE001
            seen.append((f.url[-60:], repr(exc)[:80]))
    raise AssertionError(f"the slide viewer frame did not load: {seen}")


def to_page(page, frame, x: float, y: float) -> tuple[float, float]:
    """Level-0 point → coordinates in the browser window (through the viewer's own transform and the iframe's
    position), once the iframe is scrolled into view and neither it nor the viewer's animation moves any more."""
    iframe = page.locator("iframe[title*='histodash_slide_viewer']")
    iframe.scroll_into_view_if_needed()
    last = None
    for _ in range(100):
        inner = frame.evaluate("([x, y]) => HD.imageToPage(x, y)", [x, y])
        box = iframe.bounding_box()
        here = (round(box["x"] + inner["x"], 1), round(box["y"] + inner["y"], 1))
        if here == last:
            return here
        last = here
        time.sleep(0.3)
    raise AssertionError("the viewer kept moving")


def best_tile(frame) -> dict:
    return frame.evaluate("""() => { const T = HD.tiles, s = T.columns.score; let i = 0;
        for (let k = 1; k < T.n; k++) if (s[k] > s[i]) i = k;
        return {i, x: T.x[i], y: T.y[i], tile0: T.tile0, score: s[i]}; }""")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"viewer-{name}.png"), full_page=True)


def test_hover_shows_the_tile_score(session):
    page, frame = session["page"], session["frame"]
    tile = best_tile(frame)
    page.mouse.move(*to_page(page, frame, tile["x"] + tile["tile0"] / 2, tile["y"] + tile["tile0"] / 2))
    tip = frame.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert f"p(malignant) {tile['score']:.3f}" in text, text
    assert "p_lung_aca" in text and f"x {tile['x']}, y {tile['y']} (level 0)" in text
    shot(page, "hover")


def test_display_changes_redraw_in_the_browser_without_a_rerun(session):
    page, frame = session["page"], session["frame"]
    tile = best_tile(frame)
    cx, cy = tile["x"] + tile["tile0"] / 2, tile["y"] + tile["tile0"] / 2
    page.mouse.move(5, 5)  # off the viewer: no tooltip over the pixel read below
    time.sleep(1.0)
    mark = time.monotonic()
    timings = []
    for control, value in (("#mode", "binarise"), ("#colormap", "magma"), ("#mode", "percentiles"), ("#mode", "extreme"), ("#mode", "raw"), ("#colormap", "viridis")):
        before = frame.evaluate("() => HD.redraws")
        frame.select_option(control, value)
        frame.wait_for_function("(n) => HD.redraws > n", arg=before)
        timings.append(frame.evaluate("() => HD.lastRedrawMs"))
        if control == "#mode" and value in ("binarise", "percentiles"):
            # the highest tile: percentile 1 → the colour map's top colour; binarised → top or bottom colour at the
            # card's threshold; drawn at the viewer's opacity (0.6)
            rgba = frame.evaluate("""([x, y]) => { const p = HD.viewer.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
                const d = window.devicePixelRatio || 1; return Array.from(HD.overlay.getContext('2d').getImageData(Math.round(p.x * d), Math.round(p.y * d), 1, 1).data); }""", [cx, cy])
            cmap = frame.evaluate("() => HD.display.colormap")
            top = value == "percentiles" or tile["score"] >= frame.evaluate("() => HD.tiles.threshold")
            want = frame.evaluate("([name, top]) => Array.from(HD.luts[name].slice(top ? 765 : 0, top ? 768 : 3))", [cmap, top])
            assert abs(rgba[3] - 0.6 * 255) <= 2 and max(abs(a - b) for a, b in zip(rgba[:3], want)) <= 3, (value, rgba, want)
    frame.fill("#threshold", "0.9")
    frame.press("#threshold", "Enter")
    frame.wait_for_function("() => HD.display.threshold === 0.9")
    frame.evaluate("() => { const o = document.getElementById('opacity'); o.value = 0.3; o.dispatchEvent(new Event('input')); }")
    frame.check("#blank")
    frame.wait_for_function("() => HD.display.blank && HD.viewer.world.getItemAt(0).getOpacity() === 0")
    time.sleep(1.5)  # anything the server would send after a rerun arrives within this
    frames = [d for t, d in session["ws"] if t >= mark]
    assert frames == [], f"{len(frames)} websocket messages during display changes: {frames[:5]}"
    over = sum(1 for v in frame.evaluate("() => Array.from(HD.tiles.columns.score)") if v >= 0.9)
    assert f" {over} (" in frame.locator("#status").inner_text() and "with p(malignant) ≥ 0.9" in frame.locator("#status").inner_text()
    assert all(isinstance(t, (int, float)) and t >= 0 for t in timings), timings  # each change reported its redraw (bench/viewer.py times them)
    shot(page, "blank-canvas")
    frame.uncheck("#blank")
    frame.fill("#threshold", "")
    frame.press("#threshold", "Enter")
    frame.wait_for_function("() => HD.display.threshold === HD.tiles.threshold")  # empty: back to the card's
    from engine.registry import Registry

    assert float(frame.input_value("#threshold")) == Registry().get("lc25000-lung-cnn").threshold  # the card's
    frame.evaluate("() => { const o = document.getElementById('opacity'); o.value = 0.6; o.dispatchEvent(new Event('input')); }")


def test_click_on_the_highest_tile_opens_its_view(session):
    page, frame = session["page"], session["frame"]
    tile = best_tile(frame)
    page.mouse.click(*to_page(page, frame, tile["x"] + tile["tile0"] / 2, tile["y"] + tile["tile0"] / 2))
    heading = page.get_by_role("heading", name=f"Tile at x {tile['x']}, y {tile['y']} (level 0)")
    heading.wait_for()
    link = page.get_by_role("link", name=re.compile("Open in Grad-CAM"))
    href = link.get_attribute("href")
    assert f"x={tile['x']}" in href and f"y={tile['y']}" in href and f"size={tile['tile0']}" in href and "slide=lib" in href, href
    metric = page.get_by_test_id("stMetric").filter(has_text="p(malignant)").get_by_test_id("stMetricValue")
    assert metric.inner_text().strip() == f"{tile['score']:.3f}"
    # the viewer survived the page run: same slide, same heatmap, the tile marked
    frame = viewer_frame(page)
    assert frame.evaluate("() => HD.selected") == tile["i"] and frame.evaluate("() => HD.renders") >= 2
    heading.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "viewer-tile-view.png"))


def test_wheel_keyboard_zoom_and_full_screen(session):
    page = session["page"]
    frame = viewer_frame(page)
    tile = best_tile(frame)
    zoom = lambda: frame.evaluate("() => HD.viewer.viewport.getZoom(true)")  # noqa: E731
    home = zoom()
    page.mouse.move(*to_page(page, frame, tile["x"], tile["y"]))
    page.mouse.wheel(0, -400)
    frame.wait_for_function("(z) => HD.viewer.viewport.getZoom(true) > z * 1.1", arg=home)  # one wheel step: ×1.2
    frame.evaluate("() => HD.viewer.viewport.goHome(true)")
    canvas = frame.evaluate_handle("() => HD.viewer.canvas").as_element()  # the main canvas (the navigator has one too)
    before = zoom()
    for _ in range(3):
        # ElementHandle.press focuses the canvas through the browser (a script focus() inside the
        # iframe does not move the page's focus there after a Streamlit widget took it)
        canvas.press("Equal")  # OpenSeadragon's keyboard zoom ('=' / '+')
    frame.wait_for_function("(z) => HD.viewer.viewport.getZoom(true) > z * 1.1", arg=before)
    frame.evaluate("() => HD.viewer.viewport.goHome(true)")
    frame.click("#fullscreen")
    frame.wait_for_function("() => document.fullscreenElement && document.fullscreenElement.id === 'app'")
    frame.evaluate("() => document.exitFullscreen()")
    frame.wait_for_function("() => !document.fullscreenElement")
    assert frame.evaluate("() => HD.viewer.navigator !== null && HD.viewer.navigator !== undefined")


def zoom_to_level0(session, frame, x: float, y: float, name: str) -> None:
    """Zoom to 2× level 0 at (x, y): deepest-level tiles load (HTTP 200, JPEG) and the view shows sharp detail."""
    page = session["page"]
    deepest = frame.evaluate("() => HD.viewer.world.getItemAt(0).source.maxLevel")
    frame.evaluate("""([x, y]) => { const v = HD.viewer, item = v.world.getItemAt(0);
        v.viewport.zoomTo(item.imageToViewportZoom(2.0), item.imageToViewportCoordinates(x, y), true);
        v.viewport.panTo(item.imageToViewportCoordinates(x, y), true); }""", [x, y])
    frame.wait_for_function("(l) => (HD.loadedLevels[l] || 0) > 0 && HD.viewer.world.getItemAt(0).getFullyLoaded()", arg=deepest, timeout=T)
    token = frame.evaluate("() => HD.slide.dzi").rsplit("/", 1)[-1][: -len(".dzi")]
    ok = [u for u, status, kind in session["tiles"] if f"{token}_files/{deepest}/" in u and status == 200 and kind == "image/jpeg"]
    assert ok, session["tiles"][-5:]
    assert not [u for u, status, _ in session["tiles"] if status != 200]
    assert frame.evaluate("() => HD.failedTiles") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"viewer-level0-{name}.png"
    page.locator("iframe[title*='histodash_slide_viewer']").screenshot(path=str(path))
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(float)
    middle = rgb[rgb.shape[0] // 3 : 2 * rgb.shape[0] // 3, rgb.shape[1] // 4 : 3 * rgb.shape[1] // 4]
    assert middle.std() > 20, middle.std()  # real texture, not a blank or a flat colour
    edges = np.abs(np.diff(middle.mean(2), axis=1)).mean()
    assert edges > 2, edges  # sharp detail at the pixel scale (a 2× enlarged level-0 view)
    frame.evaluate("() => HD.viewer.viewport.goHome(true)")


def test_zoom_to_level0_loads_and_renders_level0_tiles(session):
    frame = viewer_frame(session["page"])
    tile = best_tile(frame)
    zoom_to_level0(session, frame, tile["x"] + tile["tile0"] / 2, tile["y"] + tile["tile0"] / 2, "cmu")
    assert "µm" in frame.evaluate("() => HD.scaleBarLabel")


def test_opening_another_slide_drops_the_first_heatmap(session):
    page = session["page"]
    page.get_by_text("Slide library").click()
    page.get_by_test_id("stSelectbox").filter(has_text="Slides").click()
    page.get_by_role("option", name=TCGA).click()
    page.get_by_role("button", name="Open slide").click()
    page.get_by_role("heading", name=TCGA).wait_for()
    assert "job=" not in page.url
    frame = viewer_frame(page, f"lib:{TCGA}")
    frame.wait_for_function("() => HD.viewer.world.getItemCount() === 1 && (HD.loadedLevels[HD.viewer.world.getItemAt(0).source.maxLevel - 3] || 0) > 0")
    assert page.locator("iframe[title*='histodash_slide_viewer']").count() == 1  # the first slide's viewer is gone
    assert frame.evaluate("() => HD.tiles === null && HD.heat === null")
    assert page.get_by_role("heading", name="Heatmap", exact=True).count() == 0
    assert "No heatmap of this slide yet" in frame.locator("#status").inner_text()
    shot(page, "second-slide")
    # the second real slide: cells at level 0, then its own heatmap and a click on its highest tile
    zoom_to_level0(session, frame, 2200, 1800, "tcga")
    page.get_by_role("button", name="Compute heatmap").click()
    page.wait_for_url(re.compile(r"job=heatmap-"))
    page.get_by_role("heading", name="Heatmap", exact=True).wait_for(timeout=240_000)
    frame = viewer_frame(page, f"lib:{TCGA}")
    frame.wait_for_function("() => HD.tiles && HD.heat && HD.tiles.slide_hash === HD.slide.hash")
    tile = best_tile(frame)
    page.mouse.click(*to_page(page, frame, tile["x"] + tile["tile0"] / 2, tile["y"] + tile["tile0"] / 2))
    page.get_by_role("heading", name=f"Tile at x {tile['x']}, y {tile['y']} (level 0)").wait_for()
    assert f"x={tile['x']}" in page.get_by_role("link", name=re.compile("Open in Grad-CAM")).get_attribute("href")


def test_geojson_annotations_are_a_layer(session, tmp_path):
    import json

    page = session["page"]
    frame = viewer_frame(page, f"lib:{TCGA}")
    tile = best_tile(frame)
    x, y, t = tile["x"], tile["y"], tile["tile0"]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 3 * t, y], [x + 3 * t, y + 3 * t], [x, y + 3 * t], [x, y]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [255, 0, 255]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x + t, y + t]}, "properties": {"name": "cell"}}]}
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    page.get_by_test_id("stFileUploader").filter(has_text="Annotations").locator("input[type=file]").set_input_files(str(path))
    frame.wait_for_function("() => HD.annotations.length === 2")
    frame.uncheck("#show-heatmap")
    frame.uncheck("#show-mask")
    frame.uncheck("#show-grid")
    page.mouse.move(5, 5)
    # the polygon's left edge is drawn in its QuPath class colour
    rgba = frame.evaluate("""([x, y]) => { const p = HD.viewer.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
        const d = window.devicePixelRatio || 1; return Array.from(HD.overlay.getContext('2d').getImageData(Math.round(p.x * d), Math.round(p.y * d), 1, 1).data); }""",
        [x, y + 1.5 * t])
    assert rgba[0] > 200 and rgba[1] < 60 and rgba[2] > 200 and rgba[3] > 100, rgba  # (a 2 px line, anti-aliased)
    frame.uncheck("#show-annotations")
    frame.wait_for_function("() => !HD.display.show.annotations")
    gone = frame.evaluate("""([x, y]) => { const p = HD.viewer.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
        const d = window.devicePixelRatio || 1; return HD.overlay.getContext('2d').getImageData(Math.round(p.x * d), Math.round(p.y * d), 1, 1).data[3]; }""",
        [x, y + 1.5 * t])
    assert gone == 0
    frame.check("#show-annotations")
    shot(page, "annotations")
