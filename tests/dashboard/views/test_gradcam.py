"""The Grad-CAM page headless with AppTest: every input source, panels and downloads, the gallery, and
errors shown as messages that keep the previous result."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, rgb_tile, write_tiny_model

APP = str(ROOT / "dashboard" / "app.py")
TIMEOUT = 90


def png(seed=0, size=40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_tile(seed, size)).save(buf, format="PNG")
    return buf.getvalue()


def write_noconv_model(folder):
    """A registered model with no convolutional layer (Flatten → Dense)."""
    from engine.registry import sha256_file
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((32, 32, 3))
    x = k.layers.Flatten()(k.layers.Rescaling(1 / 255.0)(inputs))
    folder.mkdir(parents=True, exist_ok=True)
    k.Model(inputs, k.layers.Dense(2, activation="softmax")(x)).save(folder / "model.keras")
    card = {
        "id": "tiny-noconv", "task": "tile-classification", "architecture": "dense", "classes": ["benign", "tumour"],
        "positive_classes": ["tumour"], "input_px": 32, "threshold": 0.5, "weights_file": "model.keras",
        "weights_sha256": sha256_file(folder / "model.keras"),
    }
    (folder / "card.json").write_text(json.dumps(card))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradcam-models")
    write_tiny_model(root / "tiny-test")
    write_noconv_model(root / "tiny-noconv")
    return root


@pytest.fixture(autouse=True)
def _env(models_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", "tiny-test")
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(tmp_path / "slides"))
    (tmp_path / "slides").mkdir()
    Image.fromarray(rgb_tile(9, 200)).save(tmp_path / "slides" / "slide.png")


def texts(at, kind) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def open_page(at: AppTest | None = None, **query) -> AppTest:
    if at is None:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        for k, v in query.items():
            at.query_params[k] = v
        at.run()
    at.switch_page("views/gradcam.py")
    at.run()
    assert not at.exception, at.exception
    return at


def upload_tiles(at: AppTest, *files) -> AppTest:
    at.switch_page("views/upload.py")
    at.run()
    at.file_uploader[0].set_value([(name, data, "image/png") for name, data in files])
    at.run()
    assert not at.exception, at.exception
    return at


def compute(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == "Compute").click()
    at.run()
    assert not at.exception, at.exception
    return at


def shown(at) -> int:
    """Number of images on the page."""
    return len(at.get("image"))


def test_page_without_tiles_explains_what_to_do():
    at = open_page()
    assert "Grad-CAM" in at.title[0].value
    assert "No tiles in this session" in texts(at, "info")
    assert any("cannot tell a clinician" in e.label for e in at.expander)
    assert not at.error


def test_session_tile_panels_then_errors_keep_the_result():
    at = upload_tiles(AppTest.from_file(APP, default_timeout=TIMEOUT), ("a.png", png(1)), ("b.png", png(2)))
    at = open_page(at)
    layer = next(s for s in at.selectbox if s.label == "Layer")
    assert layer.value == "conv2d" or layer.value.startswith("conv2d")  # the tiny model's only conv layer
    compute(at)
    result = at.session_state["gradcam_result"]["result"]
    assert result.map.shape == (40, 40) and result.method == "gradcam"
    assert shown(at) == 3  # original, map, overlay
    assert [b.label for b in at.get("download_button")][:3] == ["PNG: original", "PNG: map", "PNG: overlay"]
    assert any(m.label.startswith("p(") for m in at.metric)
    score = next(m for m in at.metric if m.label == "p(tumour)" and m.delta)
    assert score.delta in ("tumour", "benign")  # the card's label at its threshold

    # Grad-CAM++ for a named class
    next(s for s in at.selectbox if s.label == "Method").set_value("gradcam++")
    next(s for s in at.selectbox if s.label == "Class").set_value("benign")
    compute(at)
    assert at.session_state["gradcam_result"]["result"].target_class == "benign"

    # a non-image upload: a message, no traceback, the map stays
    at.radio[0].set_value("upload")
    at.run()
    at.file_uploader[0].set_value(("notes.png", b"this is not an image", "image/png"))
    at.run()
    assert not at.exception
    assert "not an image" in texts(at, "error")
    assert at.session_state["gradcam_result"]["result"].target_class == "benign"
    assert shown(at) == 3

    # a too-small tile: under the one set of tile bounds (engine.imageio.MIN_SIDE_PX = 8 px a side)
    at.file_uploader[0].set_value(("tiny.png", png(3, size=6), "image/png"))
    at.run()  # refused when read: nothing to compute
    assert next(b for b in at.button if b.label == "Compute").disabled
    assert "is 6×6 px, below the minimum of 8 px a side" in texts(at, "error")
    assert at.session_state["gradcam_result"]["result"].target_class == "benign"

    # a model without a convolutional layer: a message, the previous map stays (flagged as another model's)
    at.radio[0].set_value("session")
    at.session_state["model_id"] = "tiny-noconv"  # the sidebar's picker (AppTest does not see the sidebar after switch_page)
    at.run()
    next(s for s in at.selectbox if s.label == "Method").set_value("gradcam")
    compute(at)
    assert "no convolutional layer" in texts(at, "error")
    assert "from model 'tiny-test'" in texts(at, "warning")
    assert shown(at) == 3

    # integrated gradients needs no conv layer
    next(s for s in at.selectbox if s.label == "Method").set_value("integrated-gradients")
    compute(at)
    saved = at.session_state["gradcam_result"]
    assert saved["card_id"] == "tiny-noconv" and saved["result"].method == "integrated-gradients"


def test_slide_region_from_query_params(tmp_path):
    at = open_page(slide="lib:slide.png", x="10", y="20", size="64")
    assert at.radio[0].value == "slide"
    compute(at)
    saved = at.session_state["gradcam_result"]
    assert saved["name"].startswith("slide.png @ (10, 20) 64 px")
    assert saved["result"].map.shape == (64, 64)
    from engine.imageio import read_image

    whole = read_image(tmp_path / "slides" / "slide.png")
    np.testing.assert_array_equal(read_image(saved["path"]), whole[20:84, 10:74])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"slide": "lib:missing.svs", "x": "0", "y": "0", "size": "64"}, "does not exist"),
        ({"slide": "lib:../../etc/passwd", "x": "0", "y": "0", "size": "64"}, ""),
        ({"slide": "lib:slide.png", "x": "ten", "y": "0", "size": "64"}, "not a whole number"),
        ({"slide": "lib:slide.png", "x": "0", "y": "0", "size": "100000"}, "outside"),
        ({"slide": "lib:slide.png", "x": "9000000", "y": "0", "size": "64"}, "is outside 'slide.png', which is"),  # issue 15: no pixel of the slide
        ({"slide": "lib:slide.png", "x": "0", "y": "5000000", "size": "4096"}, "is outside 'slide.png', which is"),
        ({"slide": "lib:slide.png", "x": "150", "y": "0", "size": "64"}, "is not inside 'slide.png', which is 200×200 px"),  # partly outside
    ],
)
def test_bad_slide_links_are_messages(query, message):
    at = open_page(**query)
    errors = texts(at, "error")
    assert errors and message in errors
    assert "Traceback" not in errors
    assert next(b for b in at.button if b.label == "Compute").disabled


def test_gallery_of_top_predicted_tiles():
    at = upload_tiles(AppTest.from_file(APP, default_timeout=TIMEOUT), *[(f"t{i}.png", png(10 + i)) for i in range(3)])
    at.switch_page("views/predict.py")
    at.run()
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    at = open_page(at)
    at.radio[0].set_value("predict")
    at.run()
    compute(at)  # the highest-scoring tile
    frame = at.session_state["predict_result"]["frame"]
    assert at.session_state["gradcam_result"]["name"] == frame.sort_values("score").iloc[-1]["path"]
    next(b for b in at.button if b.label == "Compute gallery").click()
    at.run()
    assert not at.exception, at.exception
    gallery = at.session_state["gradcam_gallery"]
    assert [g["name"] for g in gallery] == list(frame.sort_values("score", ascending=False)["path"])
    assert shown(at) == 3 + 3


def test_anonymised_download_names(media_downloads):
    from engine.privacy import pseudonym

    at = upload_tiles(AppTest.from_file(APP, default_timeout=TIMEOUT), ("patient-smith.png", png(4)))
    at = open_page(at)
    compute(at)
    assert sorted(media_downloads(at)) == ["patient-smith_map.png", "patient-smith_original.png", "patient-smith_overlay.png"]
    next(t for t in at.toggle if t.label == "Anonymise names").set_value(True)
    at.run()
    assert not at.exception, at.exception
    alias = pseudonym("patient-smith.png")
    assert alias.startswith("tile-")
    assert sorted(media_downloads(at)) == [f"{alias}_map.png", f"{alias}_original.png", f"{alias}_overlay.png"]
