"""Out-of-domain detection from a model's own penultimate features (Mahalanobis distance).

Lee et al. 2018 ("A simple unified framework for detecting out-of-distribution samples"): fit the
class means ``mu_c`` and one shared (within-class) covariance ``S`` of the penultimate features of the
*training* tiles (not augmented); a tile's domain score is ``min_c (f - mu_c)^T S^-1 (f - mu_c)``,
the squared Mahalanobis distance to the nearest class mean. Non-negative features (ReLU outputs,
averaged) are first square-rooted, a variance-stabilising transform that makes their skewed,
count-like distributions closer to the Gaussian the distance assumes (on the default model it cut
the share of foreign-tissue tiles counted in domain several-fold at the same validation pass rate).
The covariance is shrunk towards a
multiple of the identity (Ledoit-Wolf) so that it is invertible for any number of tiles. The
threshold is the ``pass_rate`` quantile of the scores of the *validation* tiles (in-domain tiles the
fit never saw), so that that share of in-domain tiles pass; a tile is ``in_domain`` when its score is
at most the threshold.

With ``blocks`` (the sizes of the parts the features are concatenated from, e.g. the average-pooled
outputs of three depths of ``lung_cnn_ms``: 64 + 128 + 256) the covariance is fitted per part and
each part's squared distance is divided by its dimension before they are added
(``sum_b d_b^2 / dim_b``): a part of D features contributes about 1 per in-domain tile whatever D,
so the 64 texture-level features weigh as much as the 256 deepest ones. With one covariance over
all 448, the deepest block (trained only to separate three classes) dominates the distance, and on
the default model PatchCamelyon lymph-node patches and foreign-tissue slide tiles then scored as
in-domain more often (engine.domain's tests; the card's numbers).

The fitted detector is a small ``.npz`` file in the model folder (``domain.npz``; its sha256 is on
the card). No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.errors import IncompatibleModelError

FILE_NAME = "domain.npz"
METHOD = "mahalanobis-min-class-shared-covariance"
BLOCK_METHOD = "mahalanobis-min-class-block-diagonal-covariance"
TRANSFORMS = ("none", "sqrt")


@dataclass(frozen=True)
class DomainDetector:
    """Class means ``(C, D)``, precision matrix ``(D, D)``, threshold on the squared distance."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    pass_rate: float
    method: str = METHOD
    transform: str = "none"
    blocks: tuple[int, ...] | None = None  # part sizes of a block-diagonal precision (BLOCK_METHOD)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def transformed(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {f.shape}")
        return np.sqrt(np.maximum(f, 0.0)) if self.transform == "sqrt" else f

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``features`` ``(N, D)`` (transformed) to its nearest class mean."""
        f = self.transformed(features)
        out = np.full(len(f), np.inf)
        for mu in self.means:
            d = f - mu
            out = np.minimum(out, np.einsum("nd,de,ne->n", d, self.precision, d))
        return out

    def in_domain(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    # -- file
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, means=self.means.astype(np.float32), precision=self.precision.astype(np.float32),
                 threshold=np.float64(self.threshold), pass_rate=np.float64(self.pass_rate), method=np.array(self.method),
                 transform=np.array(self.transform), **({"blocks": np.asarray(self.blocks, np.int64)} if self.blocks else {}))
        return buf.getvalue()

    def save(self, path: Path | str) -> str:
        """Write the detector; returns its sha256."""
        raw = self.to_bytes()
        Path(path).write_bytes(raw)
        return hashlib.sha256(raw).hexdigest()

    @classmethod
    def load(cls, path: Path | str, sha256: str | None = None) -> DomainDetector:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IncompatibleModelError(f"The out-of-domain file '{path.name}' of model '{path.parent.name}' cannot be read.", path=str(path)) from exc
        if sha256 and hashlib.sha256(raw).hexdigest() != sha256:
            raise IncompatibleModelError(f"The out-of-domain file '{path.name}' of model '{path.parent.name}' does not match its card (sha256).",
                                         "Restore the file or retrain the model.", path=str(path))
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return cls(np.asarray(z["means"], np.float64), np.asarray(z["precision"], np.float64), float(z["threshold"]),
                       float(z["pass_rate"]), str(z["method"]), str(z["transform"]) if "transform" in z.files else "none",
                       tuple(int(b) for b in z["blocks"]) if "blocks" in z.files else None)


def fit(features: np.ndarray, y: np.ndarray, val_features: np.ndarray, *, pass_rate: float = 0.98, transform: str = "auto",
        blocks: tuple[int, ...] | None = None) -> DomainDetector:
    """Fit class means and the shrunk shared covariance on training features; threshold on validation features.

    ``transform``: ``"sqrt"``, ``"none"`` or ``"auto"`` (sqrt when every training feature is non-negative).
    ``blocks``: part sizes adding up to the feature dimension: a block-diagonal covariance, each part's
    distance divided by its size (see the module docstring); None: one covariance over all features.
    """
    from sklearn.covariance import LedoitWolf

    raw = np.asarray(features, dtype=np.float64)
    if transform == "auto":
        transform = "sqrt" if raw.size and raw.min() >= 0 else "none"
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}")
    f = np.sqrt(np.maximum(raw, 0.0)) if transform == "sqrt" else raw
    y = np.asarray(y).astype(int)
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, y)]
    method = METHOD
    if blocks:
        blocks = tuple(int(b) for b in blocks)
        if sum(blocks) != f.shape[1] or min(blocks) < 1:
            raise ValueError(f"blocks {blocks} do not add up to the {f.shape[1]} features")
        precision = np.zeros((f.shape[1], f.shape[1]))
        edges = np.cumsum((0,) + blocks)
        for lo, hi in zip(edges[:-1], edges[1:]):
            part = LedoitWolf(assume_centered=True).fit(centred[:, lo:hi]).precision_
            precision[lo:hi, lo:hi] = part / (hi - lo)
        method = BLOCK_METHOD
    else:
        precision = np.asarray(LedoitWolf(assume_centered=True).fit(centred).precision_, dtype=np.float64)
    det = DomainDetector(means, precision, np.inf, float(pass_rate), method, transform, blocks or None)
    val_scores = det.score(val_features)
    threshold = float(np.quantile(val_scores, pass_rate, method="higher")) if len(val_scores) else float(np.max(det.score(raw)))
    return replace(det, threshold=threshold)


def mostly_out(in_domain: np.ndarray, limit: float = 0.5) -> bool:
    """Whether more than ``limit`` of the tiles (known flags only) are out of domain."""
    flags = np.asarray([v for v in np.asarray(in_domain, dtype=object).tolist() if v is not None], dtype=bool)
    return bool(flags.size and (~flags).mean() > limit)
