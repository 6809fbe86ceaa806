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


def _two_part_features(n: int, seed: int, shift_small: float = 0.0):
    """A 2-d part and an 8-d part (like lung_cnn_ms's pooled depths), three classes; ``shift_small`` moves only the small part."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    means = np.zeros((3, 10))
    means[1, 0] = means[2, 2] = 4.0
    scales = np.array([1.0, 0.5, 2.0, 1.0, 1.0, 0.7, 1.3, 1.0, 0.8, 1.1])
    f = means[y] + rng.normal(size=(n, 10)) * scales
    f[:, :2] += shift_small
    return f, y


def test_block_detector_is_the_sum_of_per_part_distances_divided_by_their_size():
    f, y = _two_part_features(4000, 0)
    fv, _ = _two_part_features(1000, 1)
    det = domain.fit(f, y, fv, pass_rate=0.95, blocks=(2, 8))
    assert det.method == domain.BLOCK_METHOD and det.precision[:2, 2:].max() == 0 and det.precision[2:, :2].max() == 0
    x = fv[:7]
    centred = f - det.means[y]
    direct = np.full(len(x), np.inf)
    for m in det.means:  # plain: per class, each part's Mahalanobis distance over its dimension, added; nearest class
        total = 0.0
        for lo, hi in ((0, 2), (2, 10)):
            inv = np.linalg.inv(np.cov(centred[:, lo:hi].T, bias=True))
            d = x[:, lo:hi] - m[lo:hi]
            total = total + np.einsum("nd,de,ne->n", d, inv, d) / (hi - lo)
        direct = np.minimum(direct, total)
    assert det.score(x) == pytest.approx(direct, rel=0.05)
    assert det.in_domain(det.score(fv)).mean() == pytest.approx(0.95, abs=0.002)
    with pytest.raises(ValueError, match="do not add up"):
        domain.fit(f, y, fv, blocks=(2, 7))


def test_block_detector_catches_a_shift_in_the_small_part_that_one_covariance_dilutes(tmp_path):
    f, y = _two_part_features(4000, 0)
    fv, _ = _two_part_features(1000, 1)
    shifted, _ = _two_part_features(1000, 2, shift_small=1.5)
    full = domain.fit(f, y, fv, pass_rate=0.95)
    parts = domain.fit(f, y, fv, pass_rate=0.95, blocks=(2, 8))
    caught_full = 1 - full.in_domain(full.score(shifted)).mean()
    caught_parts = 1 - parts.in_domain(parts.score(shifted)).mean()
    assert caught_parts > caught_full + 0.2, (caught_full, caught_parts)  # measured: 0.49 vs 0.82
    parts.save(tmp_path / "d.npz")
    back = domain.DomainDetector.load(tmp_path / "d.npz")
    assert back.method == domain.BLOCK_METHOD and np.allclose(back.score(shifted), parts.score(shifted), rtol=1e-5)
    assert parts.blocks == back.blocks == (2, 8) and full.blocks is None  # the card's `blocks` are read from the detector
