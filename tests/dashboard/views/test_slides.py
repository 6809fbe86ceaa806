"""The Slide heatmap page headless (AppTest): library and upload, broken slides as messages, a real background job."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, SHARED_DATA, make_pyramid

APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture
def library(tmp_path, monkeypatch, tiny_registry):
    root = tmp_path / "library"
    root.mkdir()
    make_pyramid(root / "synthetic.tif", width=2048, height=1536, levels=2)
    (root / "broken.svs").write_text("not a slide")
    (root / "zero.svs").write_bytes(b"")
    data = (root / "synthetic.tif").read_bytes()
    (root / "cut.tif").write_bytes(data[: len(data) // 2])
    import numpy as np
    import tifffile

    tifffile.imwrite(root / "huge.tif", np.full((256, 256, 3), 200, np.uint8), photometric="rgb", tile=(256, 256))
    with tifffile.TiffFile(root / "huge.tif", mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(4_000_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(4_000_000_000)
    from tests.corpus import sparse_bigtiff

    sparse_bigtiff(root / "million.tif")  # issue 15: a valid BigTIFF declaring 10⁶ × 10⁶ px (1 MB on disk)
    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"):
        if (SHARED_DATA / "wsi" / name).exists():
            shutil.copy(SHARED_DATA / "wsi" / name, root / name)
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(root))
    return root


def page(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/slides.py")
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at, kind) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def viewer_element(at: AppTest):
    return next(e for e in at.get("component_instance") if "histodash_slide_viewer" in e.proto.component_name)


def viewer_args(at: AppTest) -> dict:
    """What the page sent the slide viewer this run (its JSON arguments)."""
    return json.loads(viewer_element(at).proto.json_args)


def open_library_slide(at: AppTest, name: str) -> AppTest:
    at.radio(key="slide_source").set_value("Slide library").run()
    at.selectbox(key="lib_pick").set_value(name).run()
    next(b for b in at.button if b.label == "Open slide").click().run()
    assert not at.exception, at.exception
    return at


def wait_for_job(at: AppTest, timeout: float = 150) -> AppTest:
    start = time.time()
    while time.time() - start < timeout:
        time.sleep(1.5)
        at.run()
        assert not at.exception, at.exception
        if "Heatmap" in texts(at, "subheader") or at.error:
            return at
    raise AssertionError(f"job did not finish: {texts(at, 'error')} {texts(at, 'warning')}")


def test_no_slide_yet(library):
    at = page()
    assert "Slide heatmap" in at.title[0].value
    assert "Upload a slide" in texts(at, "info")


def test_library_slide_job_result_and_reattach(library):
    at = open_library_slide(page(), "synthetic.tif")
    assert "synthetic.tif" in texts(at, "subheader")
    assert "tissue tiles of" in "\n".join(c.value for c in at.caption)
    # tile by level 1, 64 px tiles (128 level-0 px): a 16 × 12 grid
    at.selectbox(key="hm_level").set_value(1).run()
    at.number_input(key="hm_tile_px").set_value(64).run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Compute heatmap").click().run()
    assert at.query_params["job"].startswith("heatmap-")
    wait_for_job(at)
    assert not at.error, texts(at, "error")
    labels = [m.label for m in at.metric]
    assert "Tissue tiles" in labels and "Mean score" in labels
    # the viewer gets the result's per-tile arrays (display changes happen in the browser, tested there)
    args = viewer_args(at)
    assert args["tiles"]["n"] == int(next(m for m in at.metric if m.label == "Tissue tiles").value.replace(",", ""))
    assert len([e for e in at.get("download_button")]) == 5
    # a refreshed browser (new session) re-attaches through the URL
    job_id = at.query_params["job"]
    again = page({"job": job_id, "slide": "lib:synthetic.tif"})
    assert "Heatmap" in texts(again, "subheader")
    assert again.selectbox(key="hm_level").value == 1 and again.number_input(key="hm_tile_px").value == 64  # the job's settings
    assert "Session State" not in texts(again, "warning")
    # computing again with the same settings: every tile comes from the cache
    next(b for b in again.button if b.label == "Compute heatmap").click().run()
    wait_for_job(again)
    cached = next(m for m in again.metric if m.label == "From cache").value
    done, total = cached.split("/")
    assert done == total == "64"  # the pattern: 8 × 8 tiles of 128 level-0 px


def test_broken_upload_keeps_current_slide(library):
    at = open_library_slide(page(), "synthetic.tif")
    at.radio(key="slide_source").set_value("Upload").run()
    at.file_uploader[0].set_value([("renamed.svs", b"just text", "application/octet-stream")]).run()
    assert not at.exception, at.exception
    assert "renamed.svs" in texts(at, "error")
    assert "synthetic.tif" in texts(at, "subheader")  # what the user had stays


BROKEN = [("broken.svs", "not a slide"), ("zero.svs", "is empty"), ("cut.tif", "cut.tif"), ("huge.tif", "huge.tif"),
          ("million.tif", "no pyramid level small enough for an overview")]


def test_broken_library_slides_are_messages(library):
    at = open_library_slide(page(), "synthetic.tif")
    for name, message in BROKEN:
        at.selectbox(key="lib_pick").set_value(name).run()
        next(b for b in at.button if b.label == "Open slide").click().run()
        assert not at.exception, at.exception
        assert message in texts(at, "error"), (name, texts(at, "error"))
        assert str(library) not in texts(at, "error")  # no server paths in messages
    # the page still works: back to the good slide
    at.selectbox(key="lib_pick").set_value("synthetic.tif").run()
    next(b for b in at.button if b.label == "Open slide").click().run()
    assert not at.error and "synthetic.tif" in texts(at, "subheader")


def test_tcga_without_mpp_asks_for_it(library):
    if not (library / "TCGA-CR-7395-01A-01-TS1.svs").exists():
        pytest.skip("shared slides absent")
    at = open_library_slide(page(), "TCGA-CR-7395-01A-01-TS1.svs")
    assert any("Microns per pixel" in n.label for n in at.number_input)
    assert "µm/px unknown" in "\n".join(c.value for c in at.caption)
    assert viewer_args(at)["slide"]["mpp"] is None  # no scale bar until the user enters a value
    at.number_input(key="user_mpp::lib:TCGA-CR-7395-01A-01-TS1.svs").set_value(0.25).run()
    assert viewer_args(at)["slide"]["mpp"] == pytest.approx(0.25)


def test_query_params_cannot_escape(library):
    at = page({"slide": "lib:../../etc/passwd"})
    assert "leaves the slide library" in texts(at, "error")
    at = page({"slide": "up:someone-elses.svs"})
    assert "No uploaded slide" in texts(at, "error")


def test_real_slides_from_the_page(library):
    """Done-when: heatmaps of the CMU and TCGA slides produced from the page (coarse tiles to stay quick)."""
    for name, level, tile in (("CMU-1-Small-Region.svs", 0, 256), ("TCGA-CR-7395-01A-01-TS1.svs", 1, 128)):
        if not (library / name).exists():
            pytest.skip("shared slides absent")
        at = open_library_slide(page(), name)
        at.selectbox(key="hm_level").set_value(level).run()
        at.number_input(key="hm_tile_px").set_value(tile).run()
        next(b for b in at.button if b.label == "Compute heatmap").click().run()
        wait_for_job(at)
        assert not at.error, texts(at, "error")
        n = int(next(m for m in at.metric if m.label == "Tissue tiles").value.replace(",", ""))
        assert n > 10, (name, n)
