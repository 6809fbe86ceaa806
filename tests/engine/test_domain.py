"""Out-of-domain detector: Mahalanobis scores against a direct computation, the validation threshold, the file."""

from __future__ import annotations

import numpy as np
import pytest

from engine import domain
from engine.errors import IncompatibleModelError


def _features(n: int, seed: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    means = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]], float)
    cov = np.diag([1.0, 2.0, 0.5, 1.5])
    f = means[y] + rng.multivariate_normal(np.zeros(4), cov, n) + shift
    return f, y


def test_scores_are_min_class_mahalanobis_and_the_threshold_passes_the_validation_share():
    f, y = _features(3000, 0)
    fv, _ = _features(1000, 1)
    det = domain.fit(f, y, fv, pass_rate=0.95)
    x = fv[:5]
    inv = np.linalg.inv(np.cov((f - det.means[y]).T, bias=True))
    direct = np.min([np.einsum("nd,de,ne->n", x - m, inv, x - m) for m in det.means], axis=0)
    assert det.score(x) == pytest.approx(direct, rel=0.05)  # shrinkage is small with 3000 samples
    assert det.in_domain(det.score(fv)).mean() == pytest.approx(0.95, abs=0.002)
    fresh, _ = _features(2000, 2)
    assert det.in_domain(det.score(fresh)).mean() == pytest.approx(0.95, abs=0.02)
    far, _ = _features(500, 3, shift=6.0)
    assert det.in_domain(det.score(far)).mean() < 0.05
    assert domain.mostly_out(det.in_domain(det.score(far))) and not domain.mostly_out(det.in_domain(det.score(fresh)))


def test_detector_file_round_trip_and_hash_check(tmp_path):
    f, y = _features(500, 0)
    det = domain.fit(f, y, f[:100])
    sha = det.save(tmp_path / domain.FILE_NAME)
    back = domain.DomainDetector.load(tmp_path / domain.FILE_NAME, sha)
    assert back.threshold == det.threshold and np.allclose(back.score(f[:20]), det.score(f[:20]), rtol=1e-5)
    with pytest.raises(IncompatibleModelError, match="does not match"):
        domain.DomainDetector.load(tmp_path / domain.FILE_NAME, "0" * 64)
    with pytest.raises(IncompatibleModelError, match="cannot be read"):
        domain.DomainDetector.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError):
        det.score(np.zeros((2, 3)))


def test_mostly_out_ignores_unknown_flags():
    assert domain.mostly_out([False, False, True]) and not domain.mostly_out([True, False, None, None])
    assert not domain.mostly_out([None, None]) and not domain.mostly_out([])


def test_non_negative_features_are_square_rooted_and_the_transform_is_saved(tmp_path):
    rng = np.random.default_rng(4)
    f = rng.gamma(0.5, 2.0, (800, 6))  # skewed, non-negative: like averaged ReLU outputs
    y = rng.integers(0, 2, 800)
    det = domain.fit(f, y, f[:200])
    assert det.transform == "sqrt" and domain.fit(f - 1, y, f[:200] - 1).transform == "none"
    direct = domain.DomainDetector(det.means, det.precision, det.threshold, det.pass_rate, transform="none").score(np.sqrt(f[:5]))
    assert np.allclose(det.score(f[:5]), direct)
    sha = det.save(tmp_path / "d.npz")
    assert domain.DomainDetector.load(tmp_path / "d.npz", sha).transform == "sqrt"
