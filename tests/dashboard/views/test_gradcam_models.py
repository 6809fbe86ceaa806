"""Grad-CAM page with real registry models: the shipped default model and a ResNet50-head model.

The ResNet50 backbone is nested as one layer inside the functional model (as ``build_resnet50_head``
makes it); the page must find its last convolutional feature map by walking the graph and show the
three panels for a real LC25000 tile (or a generated tile when the shared data is absent).
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, rgb_tile, shared_path

APP = str(ROOT / "dashboard" / "app.py")
DEFAULT = ROOT / "models" / "lc25000-lung-cnn"


def tile_png() -> tuple[str, bytes]:
    try:
        folder = shared_path("lc25000-lung-224", "images")
        path = sorted(folder.glob("lungscc*.jpeg"))[0]
        img = Image.open(path).convert("RGB")
        name = path.name
    except pytest.skip.Exception:
        img, name = Image.fromarray(rgb_tile(5, 224)), "generated.png"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return name, buf.getvalue()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from engine.architectures import build_model
    from engine.registry import sha256_file

    root = tmp_path_factory.mktemp("gradcam-real-models")
    if not (DEFAULT / "model.keras").exists():
        pytest.skip("the default model is missing from models/")
    shutil.copytree(DEFAULT, root / DEFAULT.name)
    folder = root / "resnet50-head"
    folder.mkdir()
    model = build_model("resnet50_head", 64, 1, binary=True)
    model.save(folder / "model.keras")
    card = {
        "id": "resnet50-head", "task": "tile-classification", "architecture": "resnet50_head",
        "classes": ["normal", "tumour"], "positive_classes": ["tumour"], "input_px": 64, "threshold": 0.5,
        "weights_file": "model.keras", "weights_sha256": sha256_file(folder / "model.keras"),
    }
    (folder / "card.json").write_text(json.dumps(card))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model_id, backbone", [("lc25000-lung-cnn", None), ("resnet50-head", "resnet50")])
def test_gradcam_page_with_real_models(models_dir, monkeypatch, model_id, backbone):
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", model_id)
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    name, data = tile_png()
    at.file_uploader[0].set_value([(name, data, "image/png")])
    at.run()
    at.switch_page("views/gradcam.py")
    at.run()
    assert not at.exception, at.exception
    layer = next(s for s in at.selectbox if s.label == "Layer")
    if backbone:  # the nested backbone's last feature map, found by walking the graph
        assert layer.value.startswith(f"{backbone}/"), layer.value
    next(b for b in at.button if b.label == "Compute").click()
    at.run()
    assert not at.exception, at.exception
    saved = at.session_state["gradcam_result"]
    assert saved["card_id"] == model_id
    cam = saved["result"].map
    assert cam.shape == Image.open(io.BytesIO(data)).size[::-1]
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert len(at.get("image")) == 3  # original, map, overlay
    assert not [e for e in at.error]
