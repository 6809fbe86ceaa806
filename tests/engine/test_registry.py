"""Model registry: cards are checked against their weights (sha256, shapes); unsafe models are refused."""

import json

import pytest

from engine.errors import IncompatibleModelError, ModelNotFoundError
from engine.registry import ModelCard, Registry, load_keras_file, read_card, sha256_file
from tests.conftest import ROOT, write_tiny_model


def test_lists_cards_and_default(tiny_registry):
    assert tiny_registry.ids() == ["tiny-sigmoid", "tiny-test"]
    assert tiny_registry.get().id == "tiny-test"
    with pytest.raises(ModelNotFoundError, match="No model with id 'nope'"):
        tiny_registry.get("nope")


def test_load_checks_and_returns_model(tiny_registry):
    card, model = tiny_registry.load("tiny-test")
    assert model.input_shape == (None, 32, 32, 3)
    assert card.positive_indices == (1,)


def test_sha256_mismatch_is_refused(tmp_path):
    folder = write_tiny_model(tmp_path / "m", model_id="m")
    card = json.loads((folder / "card.json").read_text())
    card["weights_sha256"] = "0" * 64
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(IncompatibleModelError, match="do not match their card"):
        Registry(tmp_path).load("m")


def test_input_shape_mismatch_is_refused(tmp_path):
    folder = write_tiny_model(tmp_path / "m", model_id="m", input_px=32)
    card = json.loads((folder / "card.json").read_text())
    card["input_px"] = 64
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(IncompatibleModelError, match="32×32 tiles but its card says 64 px"):
        Registry(tmp_path).load("m")


def test_class_count_mismatch_is_refused(tmp_path):
    folder = write_tiny_model(tmp_path / "m", model_id="m")
    card = json.loads((folder / "card.json").read_text())
    card["classes"] = ["a", "b", "c"]
    card["positive_classes"] = ["c"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(IncompatibleModelError, match="outputs 2 values but its card lists 3 classes"):
        Registry(tmp_path).load("m")


def test_broken_card_is_reported_not_fatal(tmp_path):
    write_tiny_model(tmp_path / "good", model_id="good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "card.json").write_text("{not json")
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "card.json").write_text('{"id": "x"}')
    reg = Registry(tmp_path)
    assert reg.ids() == ["good"]
    problems = reg.problems()
    assert "not valid JSON" in problems["bad"] and "lacks" in problems["incomplete"]


def test_card_validation():
    base = dict(id="x", task="t", architecture="a", classes=["a", "b"], input_px=32, threshold=0.5, weights_file="m.keras", weights_sha256="0")
    ModelCard.from_dict(base)
    with pytest.raises(IncompatibleModelError, match="not among its classes"):
        ModelCard.from_dict({**base, "positive_classes": ["c"]})
    with pytest.raises(IncompatibleModelError, match="threshold"):
        ModelCard.from_dict({**base, "threshold": 1.5})
    assert ModelCard.from_dict(base).tta_views == 1 and ModelCard.from_dict({**base, "tta": {"views": 4}}).tta_views == 4
    with pytest.raises(IncompatibleModelError, match="test-time augmentation with 5 views"):
        ModelCard.from_dict({**base, "tta": {"views": 5}})


def test_lambda_layer_model_is_refused(tmp_path):
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    outputs = k.layers.Lambda(lambda t: t * 2)(inputs)
    k.Model(inputs, outputs).save(tmp_path / "evil.keras")
    with pytest.raises(IncompatibleModelError, match="refused for safety"):
        load_keras_file(tmp_path / "evil.keras")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"not a zip at all"])
def test_garbage_keras_file_is_refused(tmp_path, content):
    path = tmp_path / "broken.keras"
    path.write_bytes(content)
    with pytest.raises(IncompatibleModelError, match="broken.keras"):
        load_keras_file(path)


def test_non_keras_suffix_is_refused(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(IncompatibleModelError, match="not a .keras model file"):
        load_keras_file(tmp_path / "model.h5")


# -- every committed model: its card matches its weights ------------------------------------------

COMMITTED = sorted(p for p in (ROOT / "models").iterdir() if (p / "card.json").exists()) if (ROOT / "models").is_dir() else []


def test_a_default_model_is_committed():
    assert COMMITTED, "models/ holds no model folder with a card.json"


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_card_matches_weights(folder):
    card = read_card(folder)
    assert card.weights_path.exists()
    assert sha256_file(card.weights_path) == card.weights_sha256
    assert card.weights_path.stat().st_size < 20 * 1024 * 1024
    for key in ("training_data", "reproduce", "threshold_method"):
        assert getattr(card, key), f"card of {folder.name} lacks {key}"
    assert card.metrics and any(m.get("split") == "test" for m in card.metrics)
    _, model = Registry(folder.parent).load(card.id)  # sha256 and shapes checked on load
    assert model.input_shape[1:] == (card.input_px, card.input_px, 3)


def test_keras_load_errors_name_the_file_not_the_server_path(tmp_path):
    from engine.errors import IncompatibleModelError
    from engine.registry import load_keras_file

    path = tmp_path / "secret-folder" / "bad.keras"
    path.parent.mkdir()
    path.write_text("not a zip")
    with pytest.raises(IncompatibleModelError) as info:
        load_keras_file(path)
    assert "bad.keras" in info.value.message
    assert "secret-folder" not in info.value.message and str(tmp_path) not in info.value.message
