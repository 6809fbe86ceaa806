"""Calibration: temperature scaling and the top-label ECE, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

from engine.calibration import apply_temperature, ece, fit_temperature, nll, reliability


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _synthetic(t_true: float, n: int = 4000, seed: int = 0):
    """Labels drawn from softmax(z / t_true); the "model" reports softmax(z): mis-calibrated by t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, 3))
    p_true = _softmax(z / t_true)
    y = np.array([rng.choice(3, p=p) for p in p_true])
    return _softmax(z), y


@pytest.mark.parametrize("t_true", [0.6, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(t_true):
    probs, y = _synthetic(t_true)
    t = fit_temperature(probs, y)
    assert t == pytest.approx(t_true, rel=0.12)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 400))  # brute force over T agrees with the optimiser
    best = grid[int(np.argmin([nll(apply_temperature(probs, g), y) for g in grid]))]
    assert t == pytest.approx(best, rel=0.03)
    assert nll(apply_temperature(probs, t), y) <= nll(probs, y) + 1e-9


def test_temperature_keeps_the_predicted_class_and_sums_to_one():
    probs, _ = _synthetic(2.0, n=200)
    for t in (0.3, 1.0, 4.0):
        q = apply_temperature(probs, t)
        assert np.allclose(q.sum(1), 1) and (q.argmax(1) == probs.argmax(1)).all()
    assert np.allclose(apply_temperature(probs, 1.0), probs)
    assert (apply_temperature(probs, 3.0).max(1) < probs.max(1) + 1e-12).all()  # T > 1 softens


def test_ece_matches_a_direct_computation_and_improves_after_scaling():
    probs, y = _synthetic(2.5, n=3000, seed=1)
    conf, correct = probs.max(1), probs.argmax(1) == y
    direct = 0.0
    for lo in np.arange(10) / 10:
        m = (conf > lo) & (conf <= lo + 0.1) if lo > 0 else (conf <= 0.1)
        if m.any():
            direct += m.sum() / len(y) * abs(correct[m].mean() - conf[m].mean())
    assert ece(probs, y) == pytest.approx(direct, abs=2e-3)  # bin edges: [lo, hi) here vs (lo, hi] above; same on continuous data
    table = reliability(probs, y)
    assert sum(b["n"] for b in table["bins"]) == len(y) and len(table["bins"]) == 10
    after = ece(apply_temperature(probs, fit_temperature(probs, y)), y)
    assert table["ece"] > 0.1 and after < 0.035  # sampling noise of 3000 tiles is about 0.015


def test_perfectly_calibrated_and_degenerate_inputs():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]] * 50)
    assert ece(probs, np.array([0, 1] * 50)) == 0.0
    with pytest.raises(ValueError):
        apply_temperature(np.array([0.2, 0.8]), 2.0)
    assert fit_temperature(np.empty((0, 3)), np.empty(0)) == 1.0
