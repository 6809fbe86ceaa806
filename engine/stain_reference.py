"""Plain, slow Macenko normalisation: an oracle for tests and benchmarks. NOT for production.

This module restates, step by step and without any optimisation, the Macenko normalisation of
reference study 1 (SCCNet's ``Normalizer`` in its ``utils.py``, itself the classic StainTools-1 /
``normalizeStaining`` Macenko): brightness standardisation, optical density, stain vectors from the
angular percentiles in the plane of the two main eigenvectors, **one** ``scipy.optimize.nnls`` call
per pixel for the concentrations, 99th-percentile scaling and recombination. It exists so that
:mod:`engine.stain` (fast, vectorised) can be checked against code that is obviously right, and so
that the benchmark can time the per-pixel approach. A 512 × 512 tile takes about 1.5–2 s here.

It also holds :func:`normalize_vectorized`, the same method written the plain vectorised NumPy
way (float64 arrays of every pixel, ``np.percentile``, ``np.cov``, ``np.arctan2``, the exact
two-stain NNLS in closed form over all pixels at once): the honest baseline that the benchmark
compares :mod:`engine.stain` with, and a second oracle for the tests (it agrees with the per-pixel
:func:`normalize` to rounding).

Every step must use the same definitions as :mod:`engine.stain` (see its module docstring); they are
written out again here on purpose, independently, and must stay plain.

Stain matrices are ``(3, 2)``: one column per stain (haematoxylin first), rows R, G, B.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def standardize_brightness(rgb: np.ndarray, percentile: float = 90) -> np.ndarray:
    """Rescale so that the given percentile of all channel values becomes 255 (clipped, truncated to uint8)."""
    p = np.percentile(rgb, percentile)
    return np.clip(rgb * 255.0 / p, 0, 255).astype(np.uint8)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``-ln(I / 255)`` per channel, with 0 replaced by 1 first so that the logarithm is finite."""
    return -np.log(np.maximum(rgb, 1) / 255)


def stain_matrix(rgb: np.ndarray, beta: float = 0.15, alpha: float = 1) -> np.ndarray:
    """Macenko stain vectors of a brightness-standardised uint8 RGB image, as a ``(3, 2)`` matrix (H, E)."""
    od = optical_density(rgb).reshape((-1, 3))
    od = od[(od > beta).any(axis=1)]  # tissue: some channel above beta
    _, eigenvectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = eigenvectors[:, [2, 1]]  # the two largest, largest first
    for k in range(2):
        if plane[0, k] < 0:
            plane[:, k] *= -1
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low = np.percentile(angles, alpha)
    high = np.percentile(angles, 100 - alpha)
    v_low = plane @ np.array([np.cos(low), np.sin(low)])
    v_high = plane @ np.array([np.cos(high), np.sin(high)])
    if v_low[0] > v_high[0]:  # haematoxylin: the vector with more red optical density
        h, e = v_low, v_high
    else:
        h, e = v_high, v_low
    matrix = np.stack([h, e], axis=1)
    return matrix / np.linalg.norm(matrix, axis=0)


def concentrations(rgb: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Per-pixel non-negative least squares ``min ||stains @ c - od||, c >= 0``: an ``(n_pixels, 2)`` array."""
    od = optical_density(rgb).reshape((-1, 3))
    result = np.zeros((od.shape[0], stains.shape[1]))
    for i in range(od.shape[0]):
        result[i], _ = nnls(stains, od[i])
    return result


def concentrations_vectorized(rgb: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """The same exact NNLS as :func:`concentrations`, for all pixels at once: an ``(n_pixels, 2)`` array.

    The optimum of ``min ||stains @ c - od||, c >= 0`` with two stains is the unconstrained
    least-squares solution when both of its coefficients are >= 0; otherwise it has a zero
    coefficient, so it is the better (smaller residual) of the two one-stain non-negative fits.
    """
    od = optical_density(rgb).reshape((-1, 3))
    unconstrained = od @ np.linalg.pinv(stains).T  # (n, 2)
    best = unconstrained.copy()
    infeasible = (unconstrained < 0).any(axis=1)
    y = od[infeasible]
    candidates, residuals = [], []
    for k in range(2):
        s = stains[:, k]
        ck = np.maximum(y @ s, 0) / (s @ s)  # non-negative fit on stain k alone
        c = np.zeros((y.shape[0], 2))
        c[:, k] = ck
        candidates.append(c)
        residuals.append(np.linalg.norm(y - c @ stains.T, axis=1))
    best[infeasible] = np.where((residuals[0] <= residuals[1])[:, None], candidates[0], candidates[1])
    return best


def fit(reference_rgb: np.ndarray, beta: float = 0.15, alpha: float = 1) -> tuple[np.ndarray, np.ndarray]:
    """Target stain matrix ``(3, 2)`` and 99th-percentile concentrations ``(2,)`` of a reference tile."""
    rgb = standardize_brightness(reference_rgb)
    stains = stain_matrix(rgb, beta, alpha)
    return stains, np.percentile(concentrations(rgb, stains), 99, axis=0)


def normalize(
    rgb: np.ndarray,
    target_stains: np.ndarray,
    target_max_concentrations: np.ndarray,
    beta: float = 0.15,
    alpha: float = 1,
    solve=concentrations,
) -> np.ndarray:
    """Macenko-normalise a uint8 RGB tile to the given target: uint8 RGB of the same shape.

    ``solve`` computes the concentrations: :func:`concentrations` (per pixel, the default) or
    :func:`concentrations_vectorized`.
    """
    standardized = standardize_brightness(rgb)
    stains = stain_matrix(standardized, beta, alpha)
    c = solve(standardized, stains)
    c *= target_max_concentrations / np.percentile(c, 99, axis=0)
    return (255 * np.exp(-(c @ target_stains.T))).reshape(rgb.shape).astype(np.uint8)


def normalize_vectorized(
    rgb: np.ndarray, target_stains: np.ndarray, target_max_concentrations: np.ndarray, beta: float = 0.15, alpha: float = 1
) -> np.ndarray:
    """:func:`normalize` with :func:`concentrations_vectorized`: the plain vectorised NumPy baseline."""
    return normalize(rgb, target_stains, target_max_concentrations, beta, alpha, solve=concentrations_vectorized)
