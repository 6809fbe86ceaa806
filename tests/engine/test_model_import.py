"""Importing untrusted models: built-in Keras models go in; code, custom objects and non-Keras files are refused, leaving nothing."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from engine.errors import HistoDashError, IncompatibleModelError
from engine.registry import Registry, import_model, inspect_keras_archive, sha256_file

FIELDS = {"id": "imported-cnn", "classes": "benign, tumour", "positive_classes": "tumour", "input_px": 32, "threshold": 0.4, "mpp": 0.5}


def _keras_bytes(tmp_path, *, lambda_layer=False, px=32, units=2) -> bytes:
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((px, px, 3))
    x = k.layers.Rescaling(1 / 255.0)(inputs)
    if lambda_layer:
        x = k.layers.Lambda(lambda t: t * 2)(x)
    x = k.layers.Conv2D(3, 3, activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    outputs = k.layers.Dense(units, activation="softmax")(x)
    path = tmp_path / ("lambda.keras" if lambda_layer else f"ok{px}.keras")
    k.Model(inputs, outputs).save(path)
    return path.read_bytes()


def _rewrite_config(raw: bytes, edit) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            dst.writestr(info.filename, data)
    return out.getvalue()


def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_normal_model_imports_and_predicts(tmp_path):
    from engine.predict import TilePredictor

    models = tmp_path / "models"
    raw = _keras_bytes(tmp_path)
    card = import_model(raw, FIELDS, models, file_name="my_model.keras")
    assert card.id == "imported-cnn" and card.classes == ("benign", "tumour") and card.positive_classes == ("tumour",)
    assert card.input_px == 32 and card.threshold == 0.4 and card.mpp == 0.5
    assert sha256_file(card.weights_path) == card.weights_sha256
    assert Registry(models).ids() == ["imported-cnn"]  # listed (the sidebar scans the registry on every run)
    result = TilePredictor(Registry(models).get("imported-cnn"), cache=False).predict_arrays([np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)])
    assert 0.0 <= result.predictions[0].score <= 1.0
    # the same id twice is refused
    with pytest.raises(HistoDashError, match="already registered"):
        import_model(raw, FIELDS, models)


def test_lambda_layer_is_refused_and_nothing_written(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    raw = _keras_bytes(tmp_path, lambda_layer=True)
    with pytest.raises(IncompatibleModelError, match="Lambda layer"):
        import_model(raw, FIELDS, models, file_name="evil.keras")
    assert _snapshot(models) == []


def test_unknown_module_or_class_is_refused(tmp_path):
    models = tmp_path / "models"
    raw = _keras_bytes(tmp_path)

    def custom_module(cfg):
        cfg["config"]["layers"][1]["module"] = "evilpkg.layers"
        return cfg

    def unknown_class(cfg):
        cfg["config"]["layers"][1]["class_name"] = "DefinitelyNotALayer"
        return cfg

    def registered(cfg):
        cfg["config"]["layers"][1]["registered_name"] = "my_package>MyLayer"
        return cfg

    for edit, message in ((custom_module, "custom or unknown object 'evilpkg.layers"), (unknown_class, "unknown class 'keras.layers.DefinitelyNotALayer'"), (registered, "custom registered object")):
        with pytest.raises(IncompatibleModelError, match=message):
            import_model(_rewrite_config(raw, edit), FIELDS, models, file_name="custom.keras")
    assert _snapshot(models) == []


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.keras", b"", "is empty"),
        ("notes.keras", b"just some text renamed to .keras\n", "not a Keras model file"),
        ("archive.keras", None, "not a Keras 3 model file"),
        ("legacy.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64, "legacy Keras 2 HDF5"),
        ("model.pkl", pickle.dumps({"a": 1}), "pickled model"),
        ("saved.zip", None, "SavedModel"),
        ("broken.keras", b"PK\x03\x04" + b"\0" * 40, "not a Keras model file|damaged"),
    ],
)
def test_non_keras_files_are_refused(tmp_path, name, data, message):
    if data is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            if name == "saved.zip":
                zf.writestr("export/saved_model.pb", b"x")
                zf.writestr("export/variables/variables.index", b"x")
            else:
                zf.writestr("readme.txt", b"hello")
        data = buf.getvalue()
    models = tmp_path / "models"
    with pytest.raises(IncompatibleModelError, match=message):
        import_model(data, FIELDS, models, file_name=name)
    assert _snapshot(models) == []


def test_declared_input_size_must_match(tmp_path):
    models = tmp_path / "models"
    raw = _keras_bytes(tmp_path, px=48)
    with pytest.raises(IncompatibleModelError, match="48×48 tiles but its card says 32 px"):
        import_model(raw, FIELDS, models, file_name="m.keras")
    with pytest.raises(IncompatibleModelError, match="outputs 2 values but its card lists 3 classes"):
        import_model(raw, {**FIELDS, "input_px": 48, "classes": "a, b, tumour"}, models, file_name="m.keras")
    assert not any(p.name != ".incoming" and not p.name.startswith(".") for p in models.iterdir())
    assert _snapshot(models) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"id": "../escape"}, "not a valid model id"), ({"classes": "only-one"}, "at least two classes"), ({"positive_classes": "nope"}, "not among its classes"),
     ({"threshold": 2}, "threshold"), ({"mpp": "abc"}, "not a number")],
)
def test_bad_card_fields_are_refused(tmp_path, fields, message):
    models = tmp_path / "models"
    with pytest.raises(HistoDashError, match=message):
        import_model(_keras_bytes(tmp_path), {**FIELDS, **fields}, models)
    assert _snapshot(models) == []


def test_inspection_accepts_builtin_models(tmp_path):
    config = inspect_keras_archive(_keras_bytes(tmp_path), "ok.keras")
    assert config["class_name"] == "Functional"
