"""The shipped default model (models/lc25000-lung-cnn) against its own card and issue 12's targets, on real data.

Independent of the card's numbers: the held-out groups are rebuilt from the committed configuration
(same split code and seed), read from the original JPEGs and scored here.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest

from engine.registry import Registry
from tests.conftest import ROOT, shared_path

FOLDER = ROOT / "models" / "lc25000-lung-cnn"


#: issue 12's target the committed model (run G) misses, measured on its held-out groups: three-class accuracy
#: 0.954 plain (target 0.96; re-stained 0.955 meets its 0.95). strict: a model that meets it turns this into a failure,
#: so the marker is removed with the retrained model.
MISSED = pytest.mark.xfail(strict=True, reason="run G misses issue 12's plain accuracy target, 0.954 < 0.96 (see the card)")

@pytest.fixture(scope="module")
def card():
    return Registry(ROOT / "models").get("lc25000-lung-cnn")


def test_card_files_and_targets(card):
    assert (FOLDER / "train.yaml").is_file() and card.reproduce == "python -m engine train-default"
    assert (FOLDER / card.weights_file).stat().st_size < 20e6
    assert hashlib.sha256((FOLDER / card.domain["file"]).read_bytes()).hexdigest() == card.domain["sha256"]
    assert card.quality["status"] == "passed" and card.temperature != 1.0 and card.uncertainty["method"] == "mc-dropout"
    assert card.mpp and "red blood cells" in card.mpp_method
    test, restained = card.metric("test"), card.metric("test-restained")
    assert test.auc >= 0.995 and restained.auc >= 0.995
    assert test.ece <= 0.03 and test.ece_uncalibrated is not None
    assert test.in_domain_fraction >= 0.95
    assert card.extra["training"]["cpu_time_s"] > 0  # measured and recorded (not asserted: the machine is shared)


@MISSED
def test_card_accuracy_targets(card):
    test, restained = card.metric("test"), card.metric("test-restained")
    assert test.accuracy_multiclass >= 0.96 and restained.accuracy_multiclass >= 0.95


@functools.lru_cache(maxsize=1)
def _held_out():
    """(rgb tiles, labels) of the test groups of the committed configuration."""
    from engine.imageio import read_image
    from engine.training.datasets import discover, split_holdout
    from engine.training.default import default_config

    cfg = default_config(FOLDER / "train.yaml", data=shared_path("lc25000-lung-224"))
    ds = discover(cfg.data, label_column=cfg.label_column, path_column=cfg.path_column, group_column=cfg.group_column, classes=cfg.classes)
    parts = split_holdout(ds.y, np.asarray(ds.groups, dtype=object), val=cfg.split.val, test=cfg.split.test, seed=cfg.seed, classes=ds.classes)
    idx = parts["test"]
    return [read_image(ds.paths[i]) for i in idx], ds.y[idx]


def _scores(card, tiles, normalizer):
    from engine.forward import ModelRunner
    from engine.imageio import resize_tile

    runner = ModelRunner.from_card(card)
    x = np.stack([resize_tile(normalizer.transform(t) if normalizer is not None else t, card.input_px) for t in tiles]).astype(np.float32)
    return runner.forward_all(x)


def test_held_out_groups_scored_here_match_the_card(card):
    from sklearn.metrics import roc_auc_score

    from engine.calibration import ece
    from engine.normalization import normalizer_for_card

    tiles, y = _held_out()
    out = _scores(card, tiles, normalizer_for_card(card))
    acc = float((out.probabilities.argmax(1) == y).mean())
    assert acc == pytest.approx(card.metric("test").accuracy_multiclass, abs=0.002)  # the card tells the truth
    assert roc_auc_score(np.isin(y, card.positive_indices), out.score) >= 0.995
    assert ece(out.probabilities, y) <= 0.03
    assert out.in_domain.mean() >= 0.95


def test_the_cards_normalisation_is_never_worse_than_none_or_macenko(card):
    from engine.normalization import build_normalizer, normalizer_for_card

    tiles, y = _held_out()
    accuracy = {}
    for name, normalizer in (("card", normalizer_for_card(card)), ("none", None), ("macenko", build_normalizer("macenko"))):
        out = _scores(card, tiles, normalizer)
        accuracy[name] = float((out.probabilities.argmax(1) == y).mean())
    assert accuracy["card"] >= accuracy["none"] and accuracy["card"] >= accuracy["macenko"], accuracy


@pytest.mark.parametrize("slide", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"])
def test_both_real_slides_are_mostly_out_of_domain_and_the_summary_says_so(card, slide, tmp_path):
    from engine.heatmap import compute_heatmap

    path = shared_path("wsi", slide)
    result, _ = compute_heatmap(path, model_id=card.id, models_dir=ROOT / "models", cache=False)
    if slide.startswith("CMU"):  # 0.499 µm/px known: tiled at the card's field of view
        assert result.grid.target_mpp == card.mpp and result.grid.tile0 == round(card.input_px * card.mpp / 0.499)
    summary = result.summary()
    assert result.n_tiles >= 5 and summary["in_domain_fraction"] < 0.5, summary
    assert "out of domain" in summary["out_of_domain_warning"]


def test_pcam_patches_are_mostly_out_of_domain(card):
    from engine.predict import TilePredictor

    tiles = sorted(shared_path("pcam-kaggle-unlabelled-samples", "images").glob("*.tif"))
    result = TilePredictor(card, cache=False).predict_paths(tiles)
    assert len(tiles) == 18 and result.n_errors == 0
    assert result.in_domain_fraction < 0.5 and result.domain_warning


def test_predict_page_with_macenko_shows_the_card_consistent_result_or_a_warning(card, monkeypatch):
    """Issue 12's 'done when': Macenko on the Tile prediction page never silently collapses."""
    from streamlit.testing.v1 import AppTest

    from tests.dashboard.test_pages import texts, upload

    monkeypatch.setenv("HISTODASH_MODELS_DIR", str(ROOT / "models"))
    monkeypatch.setenv("HISTODASH_DEFAULT_MODEL", card.id)
    tiles, y = _held_out()
    files = []
    for i in range(0, 60, 6):
        from engine.imageio import to_png_bytes

        files.append((f"t{i}.png", to_png_bytes(tiles[i])))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("views/upload.py")
    at.run()
    upload(at, files)
    at.switch_page("views/predict.py")
    at.run()
    at.selectbox(key="predict_normalization").set_value("macenko")
    at.run()
    at.button[0].click()
    at.run()
    assert not at.exception, at.exception
    frame = at.dataframe[0].value
    truth = {f"t{i}.png": y[i] for i in range(0, 60, 6)}
    predicted = [card.classes.index(c) for c in frame["predicted_class"]]
    accuracy = float(np.mean([p == truth[name] for p, name in zip(predicted, frame["path"])]))
    warned = "differs from this model's card" in texts(at, "warning")
    assert warned or accuracy >= 0.9, (warned, accuracy)
    assert warned == (card.normalization != "macenko")
