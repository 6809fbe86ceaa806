"""Architectures: build, output shapes, safe-mode .keras round trip, heads, legacy Keras-2 HDF5 import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from engine.architectures import ARCHITECTURES, DEFAULT_INPUT_PX, build_model, load_legacy_h5_by_name  # noqa: E402
from engine.errors import IncompatibleModelError, InvalidInputError  # noqa: E402

# small sizes keep the whole file fast on 2 CPU cores
SMALL_PX = {"small_cnn": 48, "lung_cnn": 64, "lung_cnn_ms": 64, "resnet50_head": 64, "inceptionv3_head": 75, "efficientnetb0_head": 64}


def _images(n: int, px: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, px, px, 3)).astype("float32")


def test_registry_complete():
    assert set(SMALL_PX) <= set(ARCHITECTURES)
    assert set(ARCHITECTURES) == set(DEFAULT_INPUT_PX)
    assert DEFAULT_INPUT_PX["inceptionv3_head"] == 299


@pytest.mark.parametrize("arch", sorted(SMALL_PX))
def test_build_multiclass_and_safe_roundtrip(arch, tmp_path):
    px = SMALL_PX[arch]
    model = build_model(arch, px, 3)
    assert model.input_shape == (None, px, px, 3)
    assert model.output_shape == (None, 3)
    x = _images(2, px)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)  # softmax
    assert not any(type(layer).__name__ == "Lambda" for layer in model._flatten_layers())
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["small_cnn", "lung_cnn", "resnet50_head"])
def test_binary_head(arch):
    px = SMALL_PX[arch]
    for model in (build_model(arch, px, 1), build_model(arch, px, 2, binary=True)):
        assert model.output_shape == (None, 1)
        assert model.layers[-1].activation.__name__ == "sigmoid"
        y = model.predict(_images(2, px), verbose=0)
        assert ((y >= 0) & (y <= 1)).all()


def test_backbone_nested_and_frozen():
    model = build_model("resnet50_head", 64, 1)
    assert "resnet50" in [layer.name for layer in model.layers]
    frozen = build_model("inceptionv3_head", 75, 2, freeze_backbone=True)
    backbone = frozen.get_layer("inception_v3")
    assert not backbone.trainable and backbone.count_params() > 0
    assert all(not w.trainable for w in backbone.weights)


def test_bad_arguments():
    with pytest.raises(InvalidInputError):
        build_model("no_such_net", 64, 2)
    with pytest.raises(InvalidInputError):
        build_model("inceptionv3_head", 64, 2)  # below InceptionV3's 75 px minimum
    with pytest.raises(InvalidInputError):
        build_model("small_cnn", 64, 0)


def _write_legacy_keras2_h5(model, path, rename=None):
    """Write ``model``'s weights the way Keras 2 ``save_weights('x.h5')`` lays them out (checked against real Keras-2 files below)."""
    rename = rename or {}
    with h5py.File(path, "w") as f:
        weighted = [layer for layer in model.layers if layer.weights]
        names = [rename.get(layer.name, layer.name) for layer in weighted]
        f.attrs["layer_names"] = [n.encode("utf8") for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.13.1"
        for layer, lname in zip(weighted, names):
            g = f.create_group(lname)
            # Keras 2 order: trainable weights first, then non-trainable (e.g. BN moving stats)
            variables = layer.trainable_weights + layer.non_trainable_weights
            wnames = [f"{lname}/{v.name}_{i}:0" for i, v in enumerate(variables)]
            g.attrs["weight_names"] = [w.encode("utf8") for w in wnames]
            for wname, v in zip(wnames, variables):
                g.create_dataset(wname, data=np.asarray(v.numpy()))


# -- files written by real Keras 2 (tf_keras 2.21; tests/fixtures/keras2_h5/README.md says how)

KERAS2 = ROOT / "tests" / "fixtures" / "keras2_h5"


def _nested_toy() -> keras.Model:
    """``nested_toy`` of make_fixture.py built with Keras 3 (the same function wrote the fixture with Keras 2)."""
    from tests.fixtures.keras2_h5.make_fixture import nested_toy

    return nested_toy(keras)


KERAS2_CASES = {  # fixture file → (Keras-3 model of the same layers, key of its Keras-2 predictions in expected.npz)
    "lung_cnn_w8.h5": (lambda: build_model("lung_cnn", 32, 2, width=8), "lung_cnn"),
    "nested_toy.h5": (_nested_toy, "nested_toy"),
}


def _h5_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """Per weighted layer of a Keras-2 HDF5 file, its arrays in the file's order (read with h5py alone)."""
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        out = {}
        for name in group.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else str(name)
            wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in group[name].attrs.get("weight_names", [])]
            if wnames:
                out[name] = [np.asarray(group[name][w]) for w in wnames]
        return out


def test_keras2_fixtures_are_from_keras2():
    expected = np.load(KERAS2 / "expected.npz")
    assert str(expected["keras_version"]).startswith("2.")
    for name in KERAS2_CASES:
        with h5py.File(KERAS2 / name, "r") as f:
            assert f.attrs["keras_version"] in (b"2.21.0", "2.21.0"), name


@pytest.mark.parametrize("name", sorted(KERAS2_CASES))
def test_legacy_h5_written_by_keras2(name):
    """A file Keras 2 wrote loads by name: every weight lands in its slot and the predictions are Keras 2's."""
    build, key = KERAS2_CASES[name]
    expected = np.load(KERAS2 / "expected.npz")
    x, want = expected["x"], expected[key]
    assert np.ptp(want, axis=0).max() > 1e-4, "the reference tiles must give different predictions"
    keras.utils.set_random_seed(7)
    model = build()
    assert np.abs(model.predict(x, verbose=0) - want).max() > 1e-3, "an unloaded model must not already match"
    file_weights = _h5_weights(KERAS2 / name)
    loaded = load_legacy_h5_by_name(model, KERAS2 / name)
    assert loaded == list(file_weights), "every weighted layer of the file is matched, in the file's order"
    for layer_name, arrays in file_weights.items():
        got = model.get_layer(layer_name)
        variables = got.trainable_weights + got.non_trainable_weights  # Keras 2's order in the file
        assert len(variables) == len(arrays), layer_name
        for v, a in zip(variables, arrays):
            np.testing.assert_array_equal(np.asarray(v.numpy()), a, err_msg=f"{layer_name}/{v.name}")
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=0, atol=1e-6)


def test_legacy_h5_named_dot_weights_h5(tmp_path):
    """Keras 3 reads ``*.weights.h5`` as its own format; a Keras-2 file of that name still loads by name."""
    path = tmp_path / "study1.weights.h5"
    path.write_bytes((KERAS2 / "lung_cnn_w8.h5").read_bytes())
    model = build_model("lung_cnn", 32, 2, width=8)
    assert "predictions" in load_legacy_h5_by_name(model, path)
    expected = np.load(KERAS2 / "expected.npz")
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["lung_cnn"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(KERAS2_CASES))
def test_test_writer_lays_out_files_as_keras2_does(name, tmp_path):
    """``_write_legacy_keras2_h5`` (used by the tests below) puts the same layers, arrays and order in a file as Keras 2."""
    build, _ = KERAS2_CASES[name]
    model = build()
    load_legacy_h5_by_name(model, KERAS2 / name)
    ours = tmp_path / "ours.h5"
    _write_legacy_keras2_h5(model, ours)
    real, written = _h5_weights(KERAS2 / name), _h5_weights(ours)
    assert list(written) == list(real)
    for layer_name in real:
        assert len(written[layer_name]) == len(real[layer_name]), layer_name
        for a, b in zip(written[layer_name], real[layer_name]):
            np.testing.assert_array_equal(a, b, err_msg=layer_name)


def test_legacy_h5_by_name_roundtrip(tmp_path):
    keras.utils.set_random_seed(1)
    source = build_model("small_cnn", 32, 1)
    path = tmp_path / "study1.h5"
    _write_legacy_keras2_h5(source, path)
    keras.utils.set_random_seed(2)
    target = build_model("small_cnn", 32, 1)
    assert not np.allclose(target.get_layer("fc").get_weights()[0], source.get_layer("fc").get_weights()[0])
    loaded = load_legacy_h5_by_name(target, path)
    assert "block1_conv" in loaded and "predictions" in loaded
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _images(2, 32)
    np.testing.assert_allclose(target.predict(x, verbose=0), source.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_legacy_h5_nested_backbone(tmp_path):
    """A nested backbone (one layer ``resnet50``) loads as one unit, like study 1's models."""
    keras.utils.set_random_seed(3)
    source = build_model("resnet50_head", 32, 1)
    path = tmp_path / "risk.hdf5"
    _write_legacy_keras2_h5(source, path)
    target = build_model("resnet50_head", 32, 1)
    load_legacy_h5_by_name(target, path)
    np.testing.assert_array_equal(source.get_layer("resnet50").get_weights()[0], target.get_layer("resnet50").get_weights()[0])
    np.testing.assert_array_equal(source.get_layer("predictions").get_weights()[0], target.get_layer("predictions").get_weights()[0])


def test_legacy_h5_errors(tmp_path):
    target = build_model("small_cnn", 32, 1)
    # nothing matches by name
    other = build_model("small_cnn", 32, 1)
    nomatch = tmp_path / "nomatch.h5"
    _write_legacy_keras2_h5(other, nomatch, rename={layer.name: f"x_{layer.name}" for layer in other.layers})
    with pytest.raises(IncompatibleModelError, match="matches"):
        load_legacy_h5_by_name(target, nomatch)
    # names match but shapes do not (3-class head into a 1-unit head)
    multi = build_model("small_cnn", 32, 3)
    mismatch = tmp_path / "mismatch.h5"
    _write_legacy_keras2_h5(multi, mismatch)
    with pytest.raises(IncompatibleModelError, match="do not fit"):
        load_legacy_h5_by_name(target, mismatch)
    # not HDF5 at all
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(IncompatibleModelError, match="not an HDF5"):
        load_legacy_h5_by_name(target, junk)
    # HDF5 but not Keras weights
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(IncompatibleModelError):
        load_legacy_h5_by_name(target, plain)
    with pytest.raises(IncompatibleModelError, match="does not exist"):
        load_legacy_h5_by_name(target, tmp_path / "missing.h5")


# ----------------------------------------------------------------------------- ensembles


def _randomised(model, seed: int):
    """``model`` with every weight drawn at random (BN variances positive), so members differ clearly."""
    rng = np.random.default_rng(seed)
    values = []
    for w, v in zip(model.weights, model.get_weights()):
        name = w.path if hasattr(w, "path") else w.name
        values.append(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype) if "variance" in name or "gamma" in name
                      else rng.normal(0, 0.3, v.shape).astype(v.dtype))
    model.set_weights(values)
    return model


def _logits(model, x):
    head = model.layers[-1]
    features = keras.Model(model.inputs[0], head.input).predict(x, verbose=0)
    w, b = head.get_weights()
    return features.astype(np.float64) @ w + b


@pytest.mark.parametrize("arch", ["lung_cnn", "lung_cnn_ms"])
def test_ensemble_logits_are_the_mean_of_its_members(arch, tmp_path):
    from engine.architectures import member_prefix, merge_members
    from engine.forward import feature_blocks

    members = [_randomised(build_model(arch, 48, 3, width=8), seed) for seed in (1, 2)]
    ensemble = merge_members(build_model(arch, 48, 3, width=8, members=2), members)
    assert member_prefix(ensemble) == ["m1_", "m2_"] and member_prefix(members[0]) == []
    assert ensemble.count_params() == sum(m.count_params() for m in members) - 3  # every weight of both, one head bias for the two
    x = _images(3, 48, seed=5)
    za, zb = (_logits(m, x) for m in members)
    assert np.abs(za - zb).max() > 0.1  # the members disagree, so the check below means something
    z = _logits(ensemble, x)
    np.testing.assert_allclose(z, (za + zb) / 2, rtol=1e-4, atol=1e-4)
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), p / p.sum(1, keepdims=True), atol=1e-5)
    assert feature_blocks(ensemble) == ((16, 32, 64, 16, 32, 64) if arch == "lung_cnn_ms" else (64, 64))
    ensemble.save(tmp_path / "e.keras")  # one ordinary functional model: loads in safe mode like any other
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "e.keras", safe_mode=True).predict(x, verbose=0), ensemble.predict(x, verbose=0), atol=1e-6)


def test_ensemble_errors():
    from engine.architectures import merge_members

    three = [build_model("lung_cnn_ms", 48, 3, width=8) for _ in range(3)]
    with pytest.raises(IncompatibleModelError, match="do not fit the ensemble"):
        merge_members(build_model("lung_cnn_ms", 48, 3, width=8, members=2), three)
    with pytest.raises(InvalidInputError, match="cannot be built as an ensemble"):
        build_model("small_cnn", 48, 3, members=2)
    with pytest.raises(InvalidInputError, match="members must be between 1 and 8"):
        build_model("lung_cnn_ms", 48, 3, members=9)
