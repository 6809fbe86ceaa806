"""End to end in a real headless Chromium: upload a tile, predict, read the score off the page."""

import re

import pytest
from PIL import Image

from tests.browser import chromium, require_browser, streamlit_server
from tests.conftest import ROOT, rgb_tile

pytestmark = pytest.mark.browser


@pytest.fixture
def artifacts(tmp_path):
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    return out


def test_upload_and_predict_in_browser(tmp_path, artifacts):
    require_browser()
    tile = tmp_path / "tile.png"
    Image.fromarray(rgb_tile(7, 224)).save(tile)
    env = {"HISTODASH_HOME": str(tmp_path / "home")}
    with streamlit_server(env, tmp_path / "streamlit.log") as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("Research use only").first.wait_for(timeout=60_000)
            page.get_by_role("link", name=re.compile("Upload")).first.click()
            page.locator("input[type=file]").first.set_input_files(str(tile))
            page.get_by_text("1 tile(s) in this session").wait_for(timeout=60_000)
            page.get_by_role("link", name=re.compile("Tile prediction")).first.click()
            page.get_by_role("button", name=re.compile(r"Predict 1 tile")).click()
            page.get_by_role("tab", name="Gallery").click(timeout=120_000)
            caption = page.get_by_text(re.compile(r"· [01]\.\d{3}")).first
            caption.wait_for(timeout=60_000)
            score = float(re.search(r"· ([01]\.\d{3})", caption.inner_text()).group(1))
            assert 0.0 <= score <= 1.0
            assert page.get_by_text("Traceback").count() == 0
        except Exception:
            page.screenshot(path=str(artifacts / "browser_predict_failure.png"), full_page=True)
            raise
