"""ModelRunner: one forward pass gives the model's probabilities, calibrated, with domain score and MC-dropout uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from engine import domain
from engine.forward import ModelRunner, find_head


@pytest.fixture(scope="module")
def model():
    from engine.architectures import build_model
    from engine.runtime import keras

    keras().utils.set_random_seed(3)
    return build_model("small_cnn", 32, 3, dense_units=16)


def _batch(n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


def test_probabilities_are_the_models_and_temperature_is_applied(model):
    x = _batch()
    direct = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
    out = ModelRunner(model, n_classes=3, positive=[2], mc_samples=0).forward(x)
    assert np.allclose(out.raw_probabilities, direct, atol=1e-5) and np.allclose(out.probabilities, direct, atol=1e-5)
    assert out.features.shape == (6, 16) and out.uncertainty is None and out.domain_score is None
    hot = ModelRunner(model, n_classes=3, positive=[2], temperature=0.25, mc_samples=0).forward(x)
    logp = np.log(direct) / 0.25
    expected = np.exp(logp - logp.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(hot.probabilities, expected, atol=1e-5) and np.allclose(hot.score, expected[:, 2], atol=1e-5)


def test_mc_dropout_uncertainty_is_deterministic_and_independent_of_the_batch(model):
    head, rate = find_head(model)
    assert head.name == "predictions" and rate == 0.5
    runner = ModelRunner(model, n_classes=3, positive=[1, 2], mc_samples=40, seed=1)
    x = _batch(8, 1)
    a = runner.forward(x).uncertainty
    b = np.concatenate([runner.forward(x[:3]).uncertainty, runner.forward(x[3:]).uncertainty])
    assert a.shape == (8,) and np.allclose(a, b) and (a >= 0).all() and a.max() > 0
    # the MC samples are the head on masked features: check one sample by hand
    f = runner.forward(x).features.astype(np.float64)
    w, bias = head.get_weights()
    z = (f * runner._masks[0]) @ w + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.isfinite(p).all()


def test_domain_scores_use_the_penultimate_features(model):
    x = _batch(30, 2)
    runner = ModelRunner(model, n_classes=3, positive=[2], mc_samples=0)
    f = runner.forward(x).features
    det = domain.fit(f, np.arange(30) % 3, f, pass_rate=0.9)
    out = ModelRunner(model, n_classes=3, positive=[2], detector=det, mc_samples=0).forward(x)
    assert np.allclose(out.domain_score, det.score(f), rtol=1e-4) and out.in_domain.mean() == pytest.approx(0.9, abs=0.04)
    row = out.row(0)
    assert set(row) == {"probabilities", "domain_score", "in_domain", "uncertainty"} and isinstance(row["in_domain"], bool)
    wrong = domain.DomainDetector(np.zeros((3, 5)), np.eye(5), 1.0, 0.9)
    with pytest.raises(ValueError, match="does not fit"):
        ModelRunner(model, n_classes=3, positive=[2], detector=wrong)


def test_models_without_a_dense_head_still_predict():
    from engine.runtime import keras

    k = keras()
    inputs = k.Input((16, 16, 3))
    x = k.layers.GlobalAveragePooling2D()(k.layers.Rescaling(1 / 255)(inputs))
    logits = k.layers.Dense(2)(x)
    model = k.Model(inputs, k.layers.Activation("softmax")(logits))
    runner = ModelRunner(model, n_classes=2, positive=[1], temperature=2.0)
    out = runner.forward(np.full((2, 16, 16, 3), 100, np.float32))
    assert out.features is None and out.uncertainty is None and np.allclose(out.probabilities.sum(1), 1)


def test_a_single_sigmoid_unit_gives_two_class_probabilities_and_uncertainty():
    from engine.architectures import build_model

    model = build_model("small_cnn", 32, 1, binary=True, dense_units=8)
    x = _batch(4, 5)
    out = ModelRunner(model, n_classes=2, positive=[1], temperature=1.5, mc_samples=10).forward(x)
    p = np.asarray(model.predict(x, verbose=0), np.float64)[:, 0]
    assert np.allclose(out.raw_probabilities[:, 1], p, atol=1e-5) and out.probabilities.shape == (4, 2) and out.uncertainty.shape == (4,)


def test_test_time_augmentation_averages_the_features_of_the_rotations(model):
    from engine.errors import IncompatibleModelError

    x = _batch(5, 4)
    single = ModelRunner(model, n_classes=3, positive=[2], mc_samples=0)
    rotations = [single.forward(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2)))).features.astype(np.float64) for k in range(4)]
    tta = ModelRunner(model, n_classes=3, positive=[2], mc_samples=0, tta=4)
    out = tta.forward(x)
    assert np.allclose(out.features, np.mean(rotations, axis=0), atol=1e-5)
    w, b = find_head(model)[0].get_weights()
    z = np.mean(rotations, axis=0) @ w + b
    expected = np.exp(z - z.max(1, keepdims=True))
    assert np.allclose(out.probabilities, expected / expected.sum(1, keepdims=True), atol=1e-5)
    # a tile and its rotated copy get the same score; with 8 views also its mirror image
    turned = tta.forward(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))))
    assert np.allclose(turned.probabilities, out.probabilities, atol=1e-5)
    assert not np.allclose(single.forward(x[:, :, ::-1].copy()).probabilities, single.forward(x).probabilities, atol=1e-5)
    eight = ModelRunner(model, n_classes=3, positive=[2], mc_samples=0, tta=8)
    assert np.allclose(eight.forward(x[:, :, ::-1].copy()).probabilities, eight.forward(x).probabilities, atol=1e-5)
    with pytest.raises(IncompatibleModelError, match="3 views"):
        ModelRunner(model, n_classes=3, positive=[2], tta=3)


def test_feature_blocks_are_the_pooled_depths_of_the_multiscale_model(model):
    from engine.architectures import build_model
    from engine.forward import feature_blocks

    assert feature_blocks(build_model("lung_cnn_ms", 48, 3, width=8)) == (16, 32, 64)
    assert feature_blocks(build_model("lung_cnn", 48, 3, width=8)) is None
    assert feature_blocks(model) is None  # small_cnn: a Dense layer before the dropout
