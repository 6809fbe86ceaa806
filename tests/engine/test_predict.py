"""Batched cached prediction: numbers equal a plain per-tile forward pass; cache hits; errors become rows."""


import numpy as np
import pytest
from PIL import Image

from engine.cache import ResultCache
from engine.errors import IncompatibleModelError, InvalidInputError
from engine.imageio import resize_tile
from engine.predict import TilePredictor, collect_tile_paths, probabilities_from_output
from tests.conftest import rgb_tile


@pytest.fixture
def predictor(tiny_registry, tmp_path):
    return TilePredictor(tiny_registry.get("tiny-test"), cache=ResultCache(tmp_path / "cache"), batch_size=3)


def test_batched_equals_one_by_one(predictor):
    tiles = [rgb_tile(i, 48) for i in range(7)]
    result = predictor.predict_arrays(tiles)
    model = predictor.model
    for tile, pred in zip(tiles, result.predictions):
        expected = model.predict_on_batch(resize_tile(tile, 32)[None].astype(np.float32))[0]
        np.testing.assert_allclose(pred.probabilities, expected, rtol=1e-5, atol=1e-6)
        assert pred.score == pytest.approx(expected[1], abs=1e-6)
        assert sum(pred.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_second_run_is_answered_from_cache(predictor):
    tiles = [rgb_tile(i) for i in range(5)]
    first = predictor.predict_arrays(tiles)
    second = predictor.predict_arrays(tiles, names=[f"renamed_{i}" for i in range(5)])
    assert first.n_cached == 0 and second.n_cached == 5
    assert [p.score for p in first.predictions] == [p.score for p in second.predictions]
    assert predictor.cache.stats().hits == 5


def test_cache_key_depends_on_preprocessing(predictor):
    tile = [rgb_tile(3)]
    predictor.predict_arrays(tile)

    class FakeNorm:  # a real normaliser is tested in test_stain; here only its cache key matters
        def cache_key(self):
            return "identity-v1"

        def transform_with_info(self, rgb):
            from types import SimpleNamespace

            return SimpleNamespace(image=rgb, normalized=True)

    predictor.normalizer = FakeNorm()
    again = predictor.predict_arrays(tile)
    assert again.n_cached == 0 and again.predictions[0].normalized is True


def test_unreadable_files_become_rows_and_run_continues(predictor, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(rgb_tile(1)).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "empty.jpg").write_bytes(b"")
    result = predictor.predict_paths([good, tmp_path / "broken.png", tmp_path / "empty.jpg"])
    frame = result.to_frame()
    assert list(frame.columns) == ["path", "score", "label", "predicted_class", "p_benign", "p_tumour", "in_domain", "domain_score", "uncertainty",
                                   "cached", "normalized", "error"]
    assert frame.loc[0, "error"] is None and 0 <= frame.loc[0, "score"] <= 1
    assert "broken.png" in frame.loc[1, "error"] and np.isnan(frame.loc[1, "score"])
    assert "empty" in frame.loc[2, "error"]
    assert result.n_errors == 2


def test_labels_follow_threshold(predictor):
    result = predictor.predict_arrays([rgb_tile(i) for i in range(4)])
    frame = result.to_frame(threshold=0.0)
    assert set(frame["label"]) == {"tumour"}
    frame = result.to_frame(threshold=1.01)
    assert set(frame["label"]) == {"benign"}


def test_sigmoid_model_gives_two_probabilities(tiny_registry, tmp_path):
    p = TilePredictor(tiny_registry.get("tiny-sigmoid"), cache=False)
    pred = p.predict_arrays([rgb_tile(0)]).predictions[0]
    assert len(pred.probabilities) == 2 and pred.probabilities[1] == pytest.approx(pred.score)


def test_probabilities_from_output():
    np.testing.assert_allclose(probabilities_from_output(np.array([[0.25]]), 2), [[0.75, 0.25]])
    np.testing.assert_allclose(probabilities_from_output(np.array([0.25, 0.5]), 2), [[0.75, 0.25], [0.5, 0.5]])
    np.testing.assert_allclose(probabilities_from_output(np.array([[0.2, 0.8]]), 2), [[0.2, 0.8]])
    with pytest.raises(IncompatibleModelError, match="for 3 classes"):  # one sigmoid unit cannot be three classes
        probabilities_from_output(np.array([[0.25]]), 3)
    with pytest.raises(IncompatibleModelError, match="for 2 classes"):
        probabilities_from_output(np.array([[0.2, 0.3, 0.5]]), 2)


def test_public_prepare_and_predict_batch(tiny_registry):
    p = TilePredictor(tiny_registry.get("tiny-test"), cache=False)
    prepared = p.prepare(rgb_tile(0, size=48))
    assert prepared.tensor.shape == (32, 32, 3) and prepared.tensor.dtype == np.uint8 and prepared.normalized is None
    np.testing.assert_array_equal(prepared.tensor, resize_tile(rgb_tile(0, size=48), 32))
    probs = p.predict_batch([prepared.tensor, p.prepare(rgb_tile(1)).tensor])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)


def test_names_must_match_images(predictor):
    with pytest.raises(InvalidInputError, match="2 images but 1 names"):
        predictor.predict_arrays([rgb_tile(0), rgb_tile(1)], names=["a"])


def test_collect_tile_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["a.jpg", "sub/b.TIF", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in collect_tile_paths([tmp_path])] == ["a.jpg", "b.TIF"]


def test_progress_callback_reaches_total(predictor):
    seen = []
    predictor.predict_arrays([rgb_tile(i) for i in range(5)], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5, 5) and all(t == 5 for _, t in seen)
