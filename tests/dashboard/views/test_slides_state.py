"""Slide heatmap page state rules (AppTest): the heatmap shown is always of the slide shown, ?slide/?job survive
navigation inside the app, the threshold defaults to the model card's everywhere, a clicked tile opens its view."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_pyramid
from tests.dashboard.views.test_slides import library, open_library_slide, page, texts, viewer_args, viewer_element, wait_for_job  # noqa: F401 - fixture


@pytest.fixture
def scored(library):  # noqa: F811 - the imported fixture
    """synthetic.tif scored with the tiny model (card threshold 0.5), 64 px tiles at level 1."""
    make_pyramid(library / "second.tif", width=1536, height=1024, levels=2, rects=[((200, 200, 1300, 900), (150, 40, 120))])
    at = open_library_slide(page(), "synthetic.tif")
    at.selectbox(key="hm_level").set_value(1).run()
    at.number_input(key="hm_tile_px").set_value(64).run()
    next(b for b in at.button if b.label == "Compute heatmap").click().run()
    wait_for_job(at)
    assert not at.error, texts(at, "error")
    return at


def test_threshold_defaults_to_the_card_everywhere(scored, media_downloads):
    at = scored.run()  # once more with the download recorder installed
    labels = [m.label for m in at.metric]
    assert "Tiles ≥ 0.5" in labels, labels  # the tiny model card's threshold, not a page constant
    assert viewer_args(at)["tiles"]["threshold"] == 0.5 and viewer_args(at)["display"]["threshold"] is None
    files = media_downloads(at)
    summary = json.loads(next(v for k, v in files.items() if k.endswith("summary.json")))
    manifest = json.loads(next(v for k, v in files.items() if k.endswith("manifest.json")))
    assert summary["threshold"] == manifest["model"]["threshold"] == 0.5
    shown = next(m for m in at.metric if m.label == "Tiles ≥ 0.5").value
    assert shown == f"{summary['fraction_over_threshold']:.1%}"


def test_switching_slides_never_shows_the_other_heatmap(scored):
    at = scored
    job = at.query_params["job"]
    first, first_key = viewer_args(at), viewer_element(at).key
    assert first["tiles"] is not None and first["tiles"]["slide_hash"] == first["slide"]["hash"]
    at.selectbox(key="lib_pick").set_value("second.tif").run()
    next(b for b in at.button if b.label == "Open slide").click().run()
    assert not at.exception, at.exception
    assert "second.tif" in texts(at, "subheader")
    assert "job" not in at.query_params  # the job of the first slide left the URL
    args = viewer_args(at)
    assert args["tiles"] is None and args["slide"]["hash"] != first["slide"]["hash"]
    assert viewer_element(at).key != first_key  # a new viewer: no click or state of the first slide carries over
    assert "Heatmap" not in texts(at, "subheader") and "Most positive tiles" not in texts(at, "subheader")
    # a URL naming one slide and another slide's job: nothing of that job is drawn
    again = page({"slide": "lib:second.tif", "job": job})
    assert "of another slide" in texts(again, "info")
    assert viewer_args(again)["tiles"] is None and "Heatmap" not in texts(again, "subheader")


def test_slide_and_job_survive_navigation_inside_the_app(scored):
    at = scored
    slide, job = at.query_params["slide"], at.query_params["job"]
    at.switch_page("views/home.py").run()
    at.query_params.clear()  # what a sidebar link does
    at.switch_page("views/slides.py").run()
    assert not at.exception, at.exception
    assert at.query_params["slide"] == slide and at.query_params["job"] == job
    assert "Heatmap" in texts(at, "subheader") and viewer_args(at)["tiles"] is not None


def test_a_clicked_tile_opens_its_view_and_gradcam_link(scored):
    at = scored
    args = viewer_args(at)
    import base64

    import numpy as np

    xs = np.frombuffer(base64.b64decode(args["tiles"]["x"]), "<i4")
    ys = np.frombuffer(base64.b64decode(args["tiles"]["y"]), "<i4")
    scores = np.frombuffer(base64.b64decode(args["tiles"]["columns"]["score"]), "<f8")
    i = int(np.argmax(scores))
    key = viewer_element(at).key
    display = {**args["display"], "threshold": 0.7, "mode": "binarise"}
    at.session_state[key] = {"event": "tile", "x": int(xs[i]), "y": int(ys[i]), "size": args["tiles"]["tile0"], "display": display, "seq": 1}
    at.run()
    assert not at.exception, at.exception
    assert f"Tile at x {xs[i]}, y {ys[i]} (level 0)" in texts(at, "subheader")
    score = next(m for m in at.metric if m.label.startswith("p("))
    assert score.value == f"{scores[i]:.3f}"
    link = next(e for e in at.get("page_link") if "Grad-CAM" in e.proto.label)
    query = dict(part.split("=", 1) for part in link.proto.query_string.split("&"))
    assert query == {"slide": "lib%3Asynthetic.tif", "x": str(xs[i]), "y": str(ys[i]), "size": str(args["tiles"]["tile0"])}, query
    # the display the viewer reported with the click is the one the summary and the downloads use
    assert "Tiles ≥ 0.7" in [m.label for m in at.metric]
    # a click at a place that is not a tile of this result is ignored
    at.session_state[key] = {"event": "tile", "x": 1, "y": 1, "size": 5, "display": display, "seq": 2}
    at.run()
    assert not any(s.startswith("Tile at") for s in texts(at, "subheader").splitlines())


def test_the_page_mints_a_token_url_without_names(library):  # noqa: F811 - the imported fixture
    from dashboard import tileserver

    at = open_library_slide(page(), "synthetic.tif")
    slide = viewer_args(at)["slide"]
    assert "synthetic" not in slide["dzi"] and "synthetic" not in slide["tiles"] and str(library) not in json.dumps(slide)
    token = slide["dzi"].rsplit("/", 1)[-1].removesuffix(".dzi")
    grant = tileserver._GRANTS[token]
    assert grant.scope == "library" and grant.session_id == at.session_state["session_id"] and grant.path.name == "synthetic.tif"
    assert slide["threshold"] == 0.5  # the card's, before any heatmap exists


def test_without_the_browser_library_the_page_says_how_to_install_it(library, monkeypatch, tmp_path):  # noqa: F811
    from dashboard.components import viewer

    monkeypatch.setattr(viewer, "OSD_JS", tmp_path / "absent.js")
    at = open_library_slide(page(), "synthetic.tif")
    assert "make run" in texts(at, "error") and "npm ci" in texts(at, "error")
    assert not at.get("component_instance")
