"""Shared fixtures: an isolated HistoDash home per test session, the shared data folder, a tiny model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import get_settings  # noqa: E402 - after the sys.path line above

#: the shared real-data folder, read through Settings like every HISTODASH_* variable (HISTODASH_SHARED_DATA)
SHARED_DATA = get_settings().shared_data


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data (``settings.shared_data``); the calling test is skipped with a reason when it is absent."""
    path = get_settings().shared_data.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not available: {path} is absent (set HISTODASH_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, tmp_path, monkeypatch):
    """Every test writes its sessions and jobs under a temporary HistoDash home, and has a cache of its own
    (a test that expects a first run to miss must not depend on which other tests predicted the same tiles)."""
    home = tmp_path_factory.getbasetemp() / "histodash-home"
    monkeypatch.setenv("HISTODASH_HOME", str(home))
    monkeypatch.setenv("HISTODASH_CACHE_DIR", str(tmp_path / "histodash-cache"))
    monkeypatch.setenv("HISTODASH_WORK_DIR", str(home / "sessions"))
    monkeypatch.setenv("HISTODASH_JOBS_DIR", str(home / "jobs"))
    yield


def write_tiny_model(folder: Path, *, model_id: str = "tiny-test", input_px: int = 32, classes=("benign", "tumour"), seed: int = 0, sigmoid: bool = False) -> Path:
    """A small real Keras CNN saved as a registry folder (random weights: for plumbing tests, not accuracy)."""
    from engine.registry import sha256_file
    from engine.runtime import keras

    k = keras()
    k.utils.set_random_seed(seed)
    inputs = k.Input((input_px, input_px, 3))
    x = k.layers.Rescaling(1 / 255.0)(inputs)
    x = k.layers.Conv2D(4, 3, activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    outputs = k.layers.Dense(1, activation="sigmoid")(x) if sigmoid else k.layers.Dense(len(classes), activation="softmax")(x)
    model = k.Model(inputs, outputs)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    card = {
        "id": model_id,
        "name": "Tiny test model",
        "task": "tile-classification",
        "architecture": "tiny",
        "classes": list(classes),
        "positive_classes": [classes[-1]],
        "score_name": f"p({classes[-1]})",
        "input_px": input_px,
        "mpp": None,
        "normalization": "none",
        "threshold": 0.5,
        "threshold_method": "fixed for tests",
        "metrics": [],
        "weights_file": "model.keras",
        "weights_sha256": sha256_file(folder / "model.keras"),
        "labels": {"positive": "tumour", "negative": "benign"},
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return folder


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_model(root / "tiny-test")
    write_tiny_model(root / "tiny-sigmoid", model_id="tiny-sigmoid", sigmoid=True, seed=1)
    return root


@pytest.fixture
def tiny_registry(tiny_models_dir, monkeypatch):
    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(tiny_models_dir))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", "tiny-test")
    from engine.registry import Registry

    return Registry(tiny_models_dir)


# ----------------------------------------------------------------------------- synthetic slides

PATTERN = (1024, 512, 2048, 1536)  # level-0 rectangle of "tissue" in the synthetic slide
COLOUR = (170, 60, 140)


def make_pyramid(path: Path, width=4096, height=3072, levels=3, mpp=0.5, rects=None, noise=0) -> Path:
    """A tifffile pyramid (the recipe OpenSlide reads as multi-level, :mod:`engine.synthetic`) with a known tissue rectangle."""
    from engine.synthetic import rect_painter, write_pyramid_tiff

    rects = [(PATTERN, COLOUR)] if rects is None else rects
    return write_pyramid_tiff(path, width, height, rect_painter(rects, noise=noise), levels=levels, mpp=mpp)


@pytest.fixture(scope="session")
def pyramid(tmp_path_factory) -> Path:
    """The 4096×3072 synthetic slide, 3 levels, 0.5 µm/px, :data:`PATTERN` in :data:`COLOUR` (written once)."""
    return make_pyramid(tmp_path_factory.mktemp("pyr") / "synthetic.tif")


@pytest.fixture
def slide_library(tmp_path, monkeypatch, pyramid):
    """A configured slide library with a slide inside, a text file, a symlink out of it and one inside it."""
    import shutil

    from engine.slides import SlideLibrary

    root = tmp_path / "library"
    (root / "cases" / "a").mkdir(parents=True)
    shutil.copy(pyramid, root / "cases" / "a" / "one.tif")
    (root / "cases" / "readme.txt").write_text("x")
    outside = tmp_path / "secret.svs"
    shutil.copy(pyramid, outside)
    os.symlink(outside, root / "cases" / "escape.svs")
    os.symlink(tmp_path, root / "up")
    os.symlink(root / "cases" / "a" / "one.tif", root / "inside-link.tif")
    monkeypatch.setenv("HISTODASH_SLIDES_DIR", str(root))
    return SlideLibrary(root)


def rgb_tile(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``item.rep_call.failed``): browser fixtures screenshot failed tests."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def media_downloads(monkeypatch):
    """``downloads(at) -> {file name: bytes}`` for every download button on an AppTest page.

    AppTest's media storage is discarded after each run, so what download buttons store is recorded here.
    """
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    captured: dict[str, tuple[str, bytes]] = {}

    class Recording(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            if isinstance(path_or_data, (bytes, bytearray)):
                captured[file_id] = (filename or "", bytes(path_or_data))
            return file_id

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)

    def downloads(at) -> dict[str, bytes]:
        out = {}
        for el in at.get("download_button"):
            name, data = captured[el.proto.url.rsplit("/", 1)[-1].split(".")[0]]
            out[name] = data
        return out

    return downloads
