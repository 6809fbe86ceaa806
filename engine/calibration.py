"""Probability calibration: temperature scaling and the top-label expected calibration error.

Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"): the class
probabilities become ``softmax(log p / T)`` with one scalar ``T > 0`` fitted on the validation
tiles by minimising the negative log-likelihood. ``log p`` differs from the network's logits only by
a per-tile constant, which the softmax cancels, so the saved model need not change: the card stores
``T`` and prediction applies it (:func:`apply_temperature`). ``T > 1`` softens over-confident
models, ``T < 1`` sharpens under-confident ones (e.g. after label smoothing). The arg-max class and
the ranking of tiles by one class's probability are unchanged; the positive score (a sum of
probabilities) can change rank only for three or more classes.

ECE (top-label, ``n_bins`` equal-width bins of the top probability): ``sum_b |B_b|/N · |acc(B_b) − conf(B_b)|``.
No TensorFlow here.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12
T_RANGE = (0.05, 20.0)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (N, classes >= 2), got shape {p.shape}")
    return np.log(np.clip(p, EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (``T == 1`` returns the input, renormalised)."""
    z = _log_probs(probs) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(int)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of ``apply_temperature(probs, T)`` on labels ``y`` (bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    z = _log_probs(probs)
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        return float(np.mean(lse - s[np.arange(len(y)), y]))

    res = minimize_scalar(loss, bounds=(np.log(T_RANGE[0]), np.log(T_RANGE[1])), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict:
    """Top-label reliability table and ECE.

    Returns ``{"ece", "n_bins", "bins": [{"lo", "hi", "n", "confidence", "accuracy"}, ...]}`` (empty bins have
    ``n == 0`` and None for the means). The last bin includes 1.0.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(int)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        if n:
            acc, cf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += n / len(y) * abs(acc - cf)
        else:
            acc = cf = None
        bins.append({"lo": round(float(edges[b]), 3), "hi": round(float(edges[b + 1]), 3), "n": n,
                     "confidence": None if cf is None else round(cf, 4), "accuracy": None if acc is None else round(acc, 4)})
    return {"ece": round(float(ece), 4), "n_bins": n_bins, "bins": bins}


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins."""
    return reliability(probs, y, n_bins)["ece"]


def reliability_figure(tables: dict, *, title: str = "Reliability (top label)"):
    """A plotly reliability diagram: accuracy against confidence per bin, before and after calibration.

    Args:
        tables: ``{"before": reliability(...), "after": reliability(...)}`` (either may be missing).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="perfect calibration")
    for key, name in (("before", "before calibration"), ("after", "after calibration")):
        table = tables.get(key)
        if not table:
            continue
        bins = [b for b in table["bins"] if b["n"]]
        fig.add_scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                        name=f"{name} (ECE {table['ece']:.3f})", text=[f"{b['n']} tiles" for b in bins],
                        hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{text}<extra></extra>")
    fig.update_layout(title=title, xaxis_title="confidence (top probability)", yaxis_title="accuracy", height=320,
                      xaxis=dict(range=[0, 1.02]), yaxis=dict(range=[0, 1.02]), margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h"))
    return fig
