"""Heatmaps: tiling geometry, alignment with a known pattern, streaming cached inference, modes, exports, job, CLI."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cache import ResultCache
from engine.errors import InvalidInputError
from engine.heatmap import (
    Cancelled,
    HeatmapResult,
    HeatmapRun,
    TileGrid,
    compute_heatmap,
    mode_values,
    render_overlay,
    run_job,
)
from engine.predict import TilePredictor
from engine.registry import ModelCard
from engine.slides import open_slide
from tests.conftest import COLOUR, PATTERN, make_pyramid, shared_path
from tests.fakes import FakeContext


class ColourModel:
    """A 'model' whose score is the share of pixels of the pattern's colour: the expected heatmap is known."""

    def __init__(self):
        self.calls = 0

    def predict_on_batch(self, x):
        self.calls += 1
        close = (np.abs(x - np.array(COLOUR, np.float32)) < 45).all(axis=-1)
        f = close.mean(axis=(1, 2))
        return np.stack([1 - f, f], axis=1)


def colour_predictor(cache=False, input_px=32, mpp=None, batch_size=16) -> TilePredictor:
    card = ModelCard(
        id="colour", task="tile-classification", architecture="stub", classes=("glass", "pattern"), input_px=input_px,
        threshold=0.5, weights_file="none", weights_sha256="0" * 64, mpp=mpp,
    )
    return TilePredictor(card, model=ColourModel(), cache=cache, batch_size=batch_size)


def overlap(x, y, size):
    """Share of the level-0 square [x, x+size)² inside the pattern."""
    x0, y0, x1, y1 = PATTERN
    w = np.clip(np.minimum(x + size, x1) - np.maximum(x, x0), 0, None)
    h = np.clip(np.minimum(y + size, y1) - np.maximum(y, y0), 0, None)
    return w * h / size**2


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    return make_pyramid(tmp_path_factory.mktemp("hm") / "synthetic.tif", noise=3)


def test_grid_geometry(pyramid):
    with open_slide(pyramid) as slide:
        g = TileGrid.for_slide(slide, 32, level=1, tile_px=64, stride_fraction=0.5)
        assert (g.tile0, g.stride0, g.level, g.read_px) == (128, 64, 1, 64)
        assert g.n_cols == (4096 - 128) // 64 + 1 and g.n_rows == (3072 - 128) // 64 + 1
        x, y = g.positions()
        assert len(x) == g.n_tiles and x.max() + g.tile0 <= 4096 and y.max() + g.tile0 <= 3072
        r, c = g.index_of(x, y)
        assert (r * g.n_cols + c == np.arange(g.n_tiles)).all()
        # tiling by µm/px: the model wants 1.0 µm/px, the slide has 0.5 → level 1, 2× level-0 tiles
        g2 = TileGrid.for_slide(slide, 96, model_mpp=1.0)
        assert (g2.level, g2.tile0, g2.read_px, g2.target_mpp) == (1, 192, 96, 1.0)
        g3 = TileGrid.for_slide(slide, 96, model_mpp=3.0)  # downsample 6: read at level 2 (×4), 144 px
        assert (g3.level, g3.tile0, g3.read_px) == (2, 576, 144)
        with pytest.raises(InvalidInputError, match="Stride"):
            TileGrid.for_slide(slide, 32, stride_fraction=0)
        with pytest.raises(InvalidInputError, match="Level 7"):
            TileGrid.for_slide(slide, 32, level=7)


@pytest.mark.parametrize("level,stride", [(0, 1.0), (1, 1.0), (1, 0.5), (2, 1.0), (2, 0.25)])
def test_heatmap_aligns_with_known_pattern(pyramid, level, stride):
    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=level, tile_px=64 if level else 128, stride_fraction=stride)
        result = HeatmapRun(colour_predictor(), min_tissue=0.0).run(slide, grid)
    expected = overlap(result.x, result.y, grid.tile0)
    assert result.n_tiles == grid.n_tiles
    assert np.abs(result.scores - expected).max() < 0.12, (level, stride)
    # tissue mask agrees with the pattern too (same coordinates)
    assert np.abs(result.tissue - expected).max() < 0.12
    # rendered heatmap (blank canvas, binarise): coloured exactly over the pattern, within a tile's reach
    img = render_overlay(result, None, mode="binarise", threshold=0.5, opacity=1.0, colormap="gray", max_side=512)
    scale = 4096 / img.shape[1]
    x0, y0, x1, y1 = (np.array(PATTERN) / scale).astype(int)
    tol = int(np.ceil(grid.stride0 / scale)) + 1
    white = img.mean(axis=2) > 127  # gray colour map: 1 → white, 0 → black
    assert white[y0 + tol : y1 - tol, x0 + tol : x1 - tol].all()
    assert not white[: max(y0 - tol, 0), :].any() and not white[:, x1 + tol :].any()


def test_min_tissue_selects_pattern_tiles(pyramid):
    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=2, tile_px=64)
        run = HeatmapRun(colour_predictor(), min_tissue=0.5)
        x, y, frac = run.select_tiles(slide, grid)
    expected = overlap(x, y, grid.tile0)
    assert len(x) == 16 and (expected >= 0.5).all() and (frac >= 0.5).all()


def test_streaming_is_bounded_cached_and_resumable(pyramid, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=1, tile_px=32)
        predictor = colour_predictor(cache=cache, batch_size=8)
        run = HeatmapRun(predictor, min_tissue=0.5, queue_batches=2, readers=2)
        seen = []

        def progress(done, total, message=""):
            seen.append((done, total))

        calls = {"n": 0}

        def cancel_after_some():
            calls["n"] += 1
            return calls["n"] > 4

        with pytest.raises(Cancelled):
            run.run(slide, grid, progress=progress, cancelled=cancel_after_some)
        assert cache.stats().entries >= 8  # the batches scored before the cancel are kept
        assert run.peak_queue <= 3  # queue of 2 batches (+ the one being taken)
        resumed = run.run(slide, grid, progress=progress)
        assert 0 < resumed.cached.sum() < resumed.n_tiles
        warm = colour_predictor(cache=cache)
        again = HeatmapRun(warm, min_tissue=0.5).run(slide, grid)
        assert again.cached.all() and warm.model.calls == 0  # served from the cache: the model never ran
        uncached = HeatmapRun(colour_predictor(cache=False), min_tissue=0.5).run(slide, grid)
    np.testing.assert_allclose(resumed.scores, uncached.scores, atol=1e-6)
    np.testing.assert_allclose(again.scores, uncached.scores, atol=1e-6)
    assert seen[-1][0] == seen[-1][1]


def test_modes():
    s = np.array([0.1, 0.5, 0.65, 0.9])
    assert mode_values(s, "raw").tolist() == s.tolist()
    assert mode_values(s, "percentiles").tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert mode_values(s, "binarise").tolist() == [0, 0, 1, 1]  # default threshold 0.6
    ext = mode_values(s, "extreme")
    assert ext[0] == 0.1 and np.isnan(ext[1]) and np.isnan(ext[2]) and ext[3] == 0.9
    with pytest.raises(InvalidInputError, match="Unknown heatmap mode"):
        mode_values(s, "fancy")


def test_exports_round_trip(pyramid, tmp_path):
    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=2, tile_px=64)
        result = HeatmapRun(colour_predictor(), min_tissue=0.5).run(slide, grid)
        thumb, _ = slide.get_thumbnail(256)
    paths = result.save(tmp_path / "out", thumbnail=thumb)
    frame = pd.read_csv(paths["tiles.csv"])
    assert list(frame.columns[:7]) == ["x", "y", "width", "height", "score", "p_glass", "p_pattern"]
    assert (frame["width"] == 256).all() and len(frame) == result.n_tiles
    geo = json.loads(paths["tiles.geojson"].read_text())
    feat = geo["features"][0]
    assert geo["type"] == "FeatureCollection" and feat["properties"]["objectType"] == "detection"
    ring = feat["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and ring[2][0] - ring[0][0] == 256
    assert set(feat["properties"]["measurements"]) >= {"score", "p_pattern", "tissue_fraction"}
    manifest = json.loads(paths["manifest.json"].read_text())
    assert manifest["slide"]["hash"] == result.slide_hash and manifest["model"]["sha256"] == "0" * 64
    assert "inference_s" in manifest["timings"] and "numpy" in manifest["versions"]
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["n_tiles"] == 16 and summary["fraction_over_threshold"] == 1.0
    from PIL import Image

    assert Image.open(paths["heatmap.png"]).size == (256, 192)
    back = HeatmapResult.load(tmp_path / "out")
    np.testing.assert_allclose(back.scores, result.scores, rtol=1e-5)
    assert back.grid == result.grid and back.summary()["top_k_mean"] == pytest.approx(result.summary()["top_k_mean"], rel=1e-5)
    from engine.heatmap import heatmap_figure

    fig = heatmap_figure(result, thumb, mode="percentiles", blur_sigma=100)
    assert [t.type for t in fig.data] == ["image", "heatmap"] and "level 0" in fig.data[1].hovertemplate


def test_run_job_writes_exports(tiny_registry, pyramid, tmp_path):
    ctx = FakeContext(tmp_path / "job")
    params = {"slide_path": str(pyramid), "model_id": "tiny-test", "level": 2, "tile_px": 64, "batch_size": 8}
    result = run_job(params, ctx)
    assert result["n_tiles"] == 16 and Path(result["files"]["tiles.csv"]).exists()
    assert (ctx.workdir / "thumbnail.png").exists() and json.dumps(result)
    last = ctx.recorded.progress[-1]
    assert last[0] == last[1] == 16 and "mean_score" in ctx.recorded.last_metrics
    assert "16 tissue tiles to score" in ctx.recorded.statuses  # the message channel, not progress(0, 0, text)
    assert all(total in (0, 16) for _, total, _, _ in ctx.recorded.progress)
    again = run_job(params, FakeContext(tmp_path / "job2"))
    assert again["n_cached"] == 16


def test_no_tissue_slide_gives_message(tmp_path, tiny_registry):
    blank = make_pyramid(tmp_path / "blank.tif", width=1024, height=768, levels=2, rects=[], noise=5)
    with pytest.raises(InvalidInputError, match="No tissue found in 'blank.tif'"):
        compute_heatmap(blank, model_id="tiny-test", level=1, tile_px=64)


def test_cli_heatmap_on_real_slides(tiny_registry, tmp_path):
    from engine.cli import main

    cmu = shared_path("wsi", "CMU-1-Small-Region.svs")
    tcga = shared_path("wsi", "TCGA-CR-7395-01A-01-TS1.svs")
    assert main(["heatmap", str(cmu), "--model", "tiny-test", "--tile-px", "256", "--out", str(tmp_path / "cmu"), "-q"]) == 0
    assert main(["heatmap", str(tcga), "--level", "1", "--tile-px", "128", "--out", str(tmp_path / "tcga"), "-q"]) == 0
    for name, tile in (("cmu", 256), ("tcga", 256)):
        out = tmp_path / name
        assert {p.name for p in out.iterdir()} >= {"tiles.csv", "heatmap.png", "tiles.geojson", "summary.json", "manifest.json"}
        frame = pd.read_csv(out / "tiles.csv")
        assert len(frame) > 10 and (frame["width"] == tile).all() and frame["score"].between(0, 1).all()
    manifest = json.loads((tmp_path / "tcga" / "manifest.json").read_text())
    assert manifest["grid"]["level"] == 1 and manifest["params"]["mpp_source"] is None


def test_cli_cohort_scores(tiny_registry, pyramid, tmp_path, capsys):
    from engine.cli import main

    folder = tmp_path / "cohort"
    folder.mkdir()
    shutil.copy(pyramid, folder / "a.tif")
    shutil.copy(pyramid, folder / "b.tif")
    (folder / "broken.svs").write_text("not a slide")
    out = tmp_path / "slides.csv"
    assert main(["cohort-scores", str(folder), "--out", str(out), "--level", "2", "--tile-px", "64", "-q"]) == 0
    frame = pd.read_csv(out)
    assert frame["slide"].tolist() == ["a.tif", "b.tif", "broken.svs"]
    assert frame.loc[0, "n_tiles"] == 16 and frame.loc[0, "mean_score"] == pytest.approx(frame.loc[1, "mean_score"])
    assert "broken.svs" in frame.loc[2, "error"]
    assert main(["heatmap", str(folder / "broken.svs"), "-q"]) == 2
    assert "broken.svs" in capsys.readouterr().err


def test_real_runner_cancel_then_resume(tiny_registry, tmp_path, monkeypatch):
    """Through engine.jobs: a running heatmap job is cancelled, its finished tiles stay cached, a re-run resumes.

    No race with the job finishing first: the gated job (tests/jobfuncs.py) scores exactly two batches, then
    waits inside its cancellation check until the test has cancelled it.
    """
    from engine import jobs

    monkeypatch.setitem(jobs.JOB_KINDS, "heatmap-gated", "tests.jobfuncs:heatmap_gated")
    slide = make_pyramid(tmp_path / "big.tif", width=1024, height=1024, levels=2, rects=[((0, 0, 1024, 1024), COLOUR), ((0, 0, 512, 1024), (120, 40, 150))])  # two stains: one flat colour is no tissue
    runner = jobs.get_runner()
    params = {"slide_path": str(slide), "model_id": "tiny-test", "level": 0, "tile_px": 32, "batch_size": 4, "min_tissue": 0.5}
    job = runner.submit("heatmap-gated", {**params, "gate_batches": 2})
    gate = Path(runner.get(job).log_path).parent / "work" / "gate"
    deadline = time.monotonic() + 300  # a hang guard, not a speed requirement
    while not gate.exists() and runner.get(job).active and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gate.exists(), (runner.get(job).state, runner.log_tail(job))
    runner.cancel(job)
    rec = runner.wait(job, timeout=300)
    assert rec.state == "cancelled", (rec.state, rec.error, runner.log_tail(job))
    assert rec.progress["total"] == 1024 and rec.progress["done"] < 1024
    again = runner.submit("heatmap", params)
    second = runner.wait(again, timeout=600)
    assert second.state == "succeeded", (second.error, runner.log_tail(again))
    assert second.result["n_cached"] == 8 and second.result["n_tiles"] == 1024  # the two batches scored before the cancel


def test_result_is_truly_frozen(pyramid):
    import pickle
    from dataclasses import FrozenInstanceError, replace

    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=2, tile_px=64)
        result = HeatmapRun(colour_predictor(), min_tissue=0.5).run(slide, grid)
    with pytest.raises(FrozenInstanceError):
        result.threshold = 0.1
    for name in ("x", "y", "tissue", "probabilities", "scores", "cached"):
        with pytest.raises(ValueError):
            getattr(result, name)[0] = 0
    with pytest.raises(TypeError, match="read-only"):
        result.params["min_tissue"] = 0.0
    with pytest.raises(TypeError, match="read-only"):
        result.timings.update(wall_s=0)
    back = pickle.loads(pickle.dumps(result))  # jobs and caches can still carry it
    np.testing.assert_array_equal(back.scores, result.scores)
    assert back.params == result.params and isinstance(back.params, type(result.params))
    changed = replace(result, slide_name="other.tif")
    assert changed.slide_name == "other.tif" and result.slide_name == "synthetic.tif"
    with pytest.raises(ValueError, match="entries for"):
        replace(result, scores=result.scores[:-1])


def test_png_and_figure_use_the_render_colour_table(pyramid):
    from engine.render import colour_lut, plotly_colorscale

    with open_slide(pyramid) as slide:
        grid = TileGrid.for_slide(slide, 32, level=2, tile_px=64)
        result = HeatmapRun(colour_predictor(), min_tissue=0.5).run(slide, grid)
    img = render_overlay(result, None, mode="binarise", threshold=0.5, opacity=1.0, colormap="plasma", max_side=256)
    x0, y0, x1, y1 = (np.array(PATTERN) / 16).astype(int)  # 4096 px → 256 px
    assert (img[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] == colour_lut("plasma")[255]).all()  # every scored tile is 1 → last entry
    from engine.heatmap import heatmap_figure

    assert list(heatmap_figure(result, colormap="plasma").data[-1].colorscale[-1]) == plotly_colorscale("plasma")[-1]


# ----------------------------------------------------------------------------- issue 15: a grid is bounded before it is allocated

def test_an_absurd_slide_mpp_is_refused_naming_its_cause(tmp_path):
    from engine.errors import InvalidInputError as Invalid
    from engine.heatmap.grid import TileGrid
    from engine.slides import open_slide

    path = make_pyramid(tmp_path / "s.tif", width=2048, height=2048, levels=2, mpp=50, rects=[((0, 0, 1024, 1024), COLOUR)])
    with open_slide(path) as slide:  # the file says 50 µm/px: 96-px model tiles at 0.5 µm/px would span 1 slide pixel
        with pytest.raises(Invalid, match=r"with the slide's 50 µm/px and the model's 0.5 µm/px .* a tile spans only 1 slide pixel"):
            TileGrid.for_slide(slide, 96, model_mpp=0.5)
    unknown = make_pyramid(tmp_path / "u.tif", width=2048, height=2048, levels=2, mpp=None, rects=[((0, 0, 1024, 1024), COLOUR)])
    with open_slide(unknown, user_mpp=500.0) as slide:  # typed by a user
        with pytest.raises(Invalid, match=r"the slide's 500 µm/px is not a plausible resolution"):
            TileGrid.for_slide(slide, 96, model_mpp=0.5)


def test_a_grid_of_millions_of_tiles_is_refused_before_allocating(tmp_path):
    from engine.errors import TooLargeError
    from engine.heatmap.grid import MAX_TILES, TileGrid
    from engine.slides import open_slide

    path = make_pyramid(tmp_path / "s.tif", width=2048, height=2048, levels=2, rects=[((0, 0, 1024, 1024), COLOUR)])
    with open_slide(path) as slide:
        with pytest.raises(TooLargeError, match=rf"with 8-px tiles at level 0 \(8 level-0 px\) and stride 1 gives 4,165,681 tiles, over the limit of {MAX_TILES:,}"):
            TileGrid.for_slide(slide, 8, tile_px=8, stride_fraction=0.05)
        assert TileGrid.for_slide(slide, 32, tile_px=32).n_tiles == 64 * 64  # an ordinary grid is unchanged


def test_heatmap_cli_refuses_an_absurd_grid_in_one_line(tmp_path, tiny_registry, capsys):
    from engine.cli import main

    path = make_pyramid(tmp_path / "s.tif", width=2048, height=2048, levels=2, rects=[((0, 0, 1024, 1024), COLOUR)])
    rc = main(["heatmap", str(path), "--tile-px", "8", "--stride", "0.05", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "4,165,681 tiles, over the limit" in err, err
