"""In-domain flags and uncertainty end to end: prediction rows, heatmap tiles and exports, Grad-CAM, and the warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import domain
from engine.registry import read_card
from tests.conftest import rgb_tile


def _flagging_model(folder, *, inside: bool):
    """A tiny registered model (conv → GAP → dropout → softmax) with a detector that puts every tile inside or outside."""
    from engine.cache import sha256_file
    from engine.runtime import keras

    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((32, 32, 3))
    x = k.layers.Rescaling(1 / 255.0)(inputs)
    x = k.layers.Conv2D(4, 3, activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    x = k.layers.Dropout(0.5)(x)
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax")(x))
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    det = domain.DomainDetector(np.zeros((2, 4)), np.eye(4), 1e9 if inside else -1.0, 0.98)
    sha = det.save(folder / domain.FILE_NAME)
    card = {"id": folder.name, "task": "tile-classification", "architecture": "tiny", "classes": ["benign", "tumour"], "positive_classes": ["tumour"],
            "input_px": 32, "threshold": 0.5, "weights_file": "model.keras", "weights_sha256": sha256_file(folder / "model.keras"),
            "calibration": {"method": "temperature", "temperature": 0.7},
            "domain": {"method": domain.METHOD, "file": domain.FILE_NAME, "sha256": sha, "threshold": det.threshold},
            "uncertainty": {"method": "mc-dropout", "samples": 20, "rate": 0.5, "seed": 0}}
    (folder / "card.json").write_text(json.dumps(card))
    return read_card(folder)


@pytest.fixture
def outside(tmp_path):
    return _flagging_model(tmp_path / "models" / "tiny-outside", inside=False)


def test_prediction_rows_carry_the_flags_and_warn_when_most_are_out(outside, tmp_path):
    from engine.predict import TilePredictor

    inside = _flagging_model(tmp_path / "models" / "tiny-inside", inside=True)
    tiles = [rgb_tile(i, 40) for i in range(4)]
    out = TilePredictor(outside, cache=False).predict_arrays(tiles)
    frame = out.to_frame()
    assert (frame["in_domain"] == False).all() and frame["uncertainty"].between(0, 0.5).all() and frame["domain_score"].notna().all()  # noqa: E712
    assert out.in_domain_fraction == 0.0 and "100% of the tiles are out of domain" in out.domain_warning
    ok = TilePredictor(inside, cache=False).predict_arrays(tiles)
    assert ok.in_domain_fraction == 1.0 and ok.domain_warning is None
    # the same tiles, the same numbers whether computed or read back from the cache
    cached = TilePredictor(outside)
    first, again = cached.predict_arrays(tiles), cached.predict_arrays(tiles)
    assert again.n_cached == 4 and [p.uncertainty for p in again.predictions] == pytest.approx([p.uncertainty for p in first.predictions])
    assert [p.in_domain for p in again.predictions] == [False] * 4


def test_heatmap_tiles_exports_and_summary_warning(outside, pyramid, tmp_path):
    from engine.heatmap import HeatmapResult, HeatmapRun, TileGrid, layer_values, render_overlay
    from engine.predict import TilePredictor
    from engine.slides import open_slide

    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=2, tile_px=64)
        result = HeatmapRun(TilePredictor(outside, cache=False), min_tissue=0.0).run(slide, grid)
    assert set(result.columns) == {"in_domain", "domain_score", "uncertainty"} and not result.columns["in_domain"].any()
    summary = result.summary()
    assert summary["in_domain_fraction"] == 0.0 and "out of domain" in summary["out_of_domain_warning"]
    assert "relative" in summary["percentile_note"]
    frame = result.to_frame()
    assert {"in_domain", "domain_score", "uncertainty"} <= set(frame.columns)
    feature = result.to_geojson()["features"][0]["properties"]["measurements"]
    assert feature["in_domain"] == 0.0 and "uncertainty" in feature
    result.save(tmp_path / "out")
    back = HeatmapResult.load(tmp_path / "out")
    assert np.array_equal(back.columns["in_domain"], result.columns["in_domain"])
    assert np.allclose(back.columns["uncertainty"], result.columns["uncertainty"], atol=1e-5)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["out_of_domain_warning"]
    assert np.allclose(layer_values(result, "in_domain"), 0.0) and layer_values(result, "uncertainty").max() <= 1.0
    from engine.overlay import tiles_payload

    layers = tiles_payload(back)["columns"]  # the viewer offers each as a layer, from the reloaded files as from the run
    assert {"in_domain", "domain_score", "uncertainty"} <= set(layers) and set(layers) == set(tiles_payload(result)["columns"])
    assert render_overlay(result, None, layer="uncertainty", max_side=128).shape[2] == 3


def test_gradcam_result_has_the_flag_of_the_shared_forward_pass(outside):
    from engine.gradcam import Explainer
    from engine.predict import TilePredictor

    tile = rgb_tile(3, 40)
    res = Explainer.from_card(outside, cache=False).explain(tile)
    pred = TilePredictor(outside, cache=False).predict_arrays([tile]).predictions[0]
    assert res.in_domain is False and "OUT OF DOMAIN" in res.summary()
    assert res.probabilities == pytest.approx(pred.probabilities, abs=1e-5)  # calibrated, like prediction
    assert res.uncertainty == pytest.approx(pred.uncertainty, abs=1e-6)


def test_cohort_chunks_come_from_the_same_forward_pass(outside, pyramid, tmp_path):
    """The cohort worker scores with the predictor's forward pass: its probabilities (calibrated), flags and uncertainty
    equal the heatmap's for the same tiles, and they reach the store, the heatmap cache value and the slide result."""
    from engine.cohort.store import EmbeddingStore
    from engine.cohort.worker import ChunkJob, ModelSpec, TileWorker
    from engine.heatmap import HeatmapRun, TileGrid
    from engine.predict import TilePredictor
    from engine.slides import open_slide

    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=2, tile_px=64)
        result = HeatmapRun(TilePredictor(outside, cache=False), min_tissue=0.0).run(slide, grid)
    worker = TileWorker(ModelSpec.from_card(outside), batch_size=3)
    try:
        chunk = worker.score(ChunkJob("0:0", 0, 0, result.n_tiles, str(pyramid), grid.level, grid.read_px, result.x, result.y))
    finally:
        worker.close()
    np.testing.assert_allclose(chunk.probabilities, result.probabilities, atol=1e-5)
    assert set(chunk.extras) == {"in_domain", "domain_score", "uncertainty"} and not chunk.extras["in_domain"].any()
    for name in ("domain_score", "uncertainty"):
        np.testing.assert_allclose(chunk.extras[name], result.columns[name], rtol=1e-5, atol=1e-6)
    assert chunk.embeddings.shape == (result.n_tiles, 4)
    row = chunk.row(0)
    assert row["in_domain"] is False and row["probabilities"] == pytest.approx(list(result.probabilities[0]), abs=1e-5)
    store = EmbeddingStore(tmp_path / "store")
    key = "cd" + "0" * 62
    half = (result.n_tiles + 1) // 2  # two parts, as complete() walks them
    store.save_part(key, 0, half, chunk.probabilities[:half], chunk.embeddings[:half], **{k: v[:half] for k, v in chunk.extras.items()})
    store.save_part(key, half, result.n_tiles, chunk.probabilities[half:], chunk.embeddings[half:], **{k: v[half:] for k, v in chunk.extras.items()})
    record = store.complete(key, result.n_tiles, half)
    np.testing.assert_array_equal(record["uncertainty"], chunk.extras["uncertainty"])
    assert record["in_domain"].dtype == bool and len(record["in_domain"]) == result.n_tiles


def _slide_summary_script(folder: str) -> None:
    from dashboard import slidepage
    from engine.heatmap import HeatmapResult

    result = HeatmapResult.load(folder)
    slidepage.summary(result, {"threshold": result.threshold, "mode": "percentiles", "colormap": "viridis"})


def test_the_slide_page_says_when_most_tissue_is_out_of_domain_and_that_percentiles_are_relative(outside, pyramid, tmp_path):
    from streamlit.testing.v1 import AppTest

    from engine.heatmap import HeatmapRun, TileGrid
    from engine.predict import TilePredictor
    from engine.slides import open_slide

    with open_slide(pyramid) as slide:
        result = HeatmapRun(TilePredictor(outside, cache=False), min_tissue=0.0).run(slide, TileGrid.for_slide(slide, 32, level=2, tile_px=64))
    result.save(tmp_path / "out")
    at = AppTest.from_function(_slide_summary_script, args=(str(tmp_path / "out"),), default_timeout=60).run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "out of domain" in at.error[0].value and "100%" in at.error[0].value
    assert any("relative" in c.value for c in at.caption)


def test_a_cohort_run_carries_the_flags_to_its_slide_results_and_the_slide_page_cache(outside, pyramid, tmp_path, monkeypatch):
    import shutil

    import pandas as pd

    from engine.cohort.pipeline import run_cohort
    from engine.heatmap import HeatmapResult, compute_heatmap

    monkeypatch.setenv("HISTODASH_CACHE_DIR", str(tmp_path / "cache"))
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(pyramid, slides / "P1_a.tif")
    params = {"slide_dir": str(slides), "patient_pattern": r"^(P\d+)_", "models_dir": str(outside.folder.parent), "model_id": outside.id,
              "clusters": 0, "level": 2, "tile_px": 64, "use_mpp": False, "min_tissue": 0.0, "chunk_tiles": 7}
    run_cohort(params, tmp_path / "out")
    result = HeatmapResult.load(tmp_path / "out" / "slides" / "P1_a.tif")
    assert {"in_domain", "domain_score", "uncertainty"} <= set(result.columns) and not result.columns["in_domain"].any()
    assert pd.read_csv(tmp_path / "out" / "slides.csv")["in_domain_fraction"].tolist() == [0.0]
    again, _ = compute_heatmap(slides / "P1_a.tif", model_id=outside.id, models_dir=outside.folder.parent, level=2, tile_px=64, use_mpp=False,
                               min_tissue=0.0)
    assert again.cached.all() and not again.columns["in_domain"].any()  # the Slide page reads the cohort's values, flags included
    np.testing.assert_allclose(again.columns["uncertainty"], result.columns["uncertainty"], atol=1e-5)
