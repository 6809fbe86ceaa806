"""Tile phenotype clusters: MiniBatchKMeans on standardised tile embeddings, fitted once and applied unchanged.

>>> clusterer = fit_clusterer([emb_a, emb_b], k=50, seed=0, meta={...})   # the discovery slides' tiles
>>> labels, distances = clusterer.assign(emb_c)                           # any other slide, same centres
>>> clusterer.save("cohort/clusterer"); Clusterer.load("cohort/clusterer")

The fitted clusterer is an artefact with its own card (``card.json``: what it was fitted on, with which
feature model and layer, K, seed, inertia, versions, the sha256 of ``clusterer.npz``) and plain arrays
(``clusterer.npz``: centres, and the mean and scale of the standardisation), not a pickle: loading it
runs no code. :meth:`Clusterer.assign` is the nearest centre in the standardised space, which is what
scikit-learn's ``predict`` computes (a test checks it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import IncompatibleModelError, InvalidInputError

CARD_FILE, ARRAYS_FILE = "card.json", "clusterer.npz"
DEFAULT_K = 50  # the reference study's 50 phenotype clusters


@dataclass
class Clusterer:
    centers: np.ndarray  # (k, dim) in the standardised space
    mean: np.ndarray  # (dim,)
    scale: np.ndarray  # (dim,)
    card: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(len(self.centers))

    def _z(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise InvalidInputError(f"Embeddings of shape {x.shape} do not fit a clusterer of dimension {self.centers.shape[1]}.")
        return (x - self.mean) / self.scale

    def assign(self, embeddings: np.ndarray, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, distances)``: each tile's nearest centre and its Euclidean distance (standardised units)."""
        z = self._z(embeddings)
        labels = np.empty(len(z), np.int64)
        dists = np.empty(len(z), np.float64)
        c2 = (self.centers**2).sum(1)
        for i in range(0, len(z), block):
            part = z[i : i + block]
            d2 = (part**2).sum(1)[:, None] - 2 * part @ self.centers.T + c2[None, :]
            labels[i : i + block] = np.argmin(d2, 1)
            dists[i : i + block] = np.sqrt(np.maximum(d2[np.arange(len(part)), labels[i : i + block]], 0))
        return labels, dists

    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / ARRAYS_FILE, centers=self.centers, mean=self.mean, scale=self.scale)
        card = dict(self.card, arrays_file=ARRAYS_FILE, arrays_sha256=hashlib.sha256((folder / ARRAYS_FILE).read_bytes()).hexdigest())
        (folder / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        self.card = card
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> Clusterer:
        folder = Path(folder)
        try:
            card = json.loads((folder / CARD_FILE).read_text())
            data = (folder / card.get("arrays_file", ARRAYS_FILE)).read_bytes()
        except (OSError, ValueError) as exc:
            raise IncompatibleModelError(f"No readable clusterer in '{folder.name}' ({exc}).") from exc
        if card.get("arrays_sha256") and hashlib.sha256(data).hexdigest() != card["arrays_sha256"]:
            raise IncompatibleModelError(f"The clusterer in '{folder.name}' does not match its card (sha256).")
        with np.load(folder / card.get("arrays_file", ARRAYS_FILE)) as arrays:
            return cls(arrays["centers"], arrays["mean"], arrays["scale"], card)


def fit_clusterer(embeddings: list[np.ndarray], k: int = DEFAULT_K, *, seed: int = 0, max_tiles: int = 200_000, meta: dict | None = None,
                  return_estimator: bool = False):
    """Fit ``k`` clusters on the tiles of ``embeddings`` (one array per discovery slide; at most ``max_tiles``, drawn at random).

    Returns the :class:`Clusterer` (with ``return_estimator``: and scikit-learn's fitted estimator).
    """
    import sklearn
    from sklearn.cluster import MiniBatchKMeans

    k = int(k)
    if k < 2:
        raise InvalidInputError(f"{k} clusters: choose at least 2.")
    arrays = [np.asarray(e, np.float64) for e in embeddings if len(e)]
    n = sum(len(a) for a in arrays)
    if n < k:
        raise InvalidInputError(f"{k} clusters need at least {k} tiles in the discovery slides; they have {n}.",
                                "Choose fewer clusters, or put more slides into the discovery set.")
    x = np.concatenate(arrays)
    rng = np.random.default_rng(seed)
    if len(x) > max_tiles:
        x = x[np.sort(rng.choice(len(x), max_tiles, replace=False))]
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    z = (x - mean) / scale
    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=min(4096, len(z)), max_iter=200, reassignment_ratio=0.01)
    km.fit(z)
    card = {
        "kind": "histodash-clusterer", "version": 1, "algorithm": "MiniBatchKMeans (scikit-learn) on z-scored embeddings",
        "k": k, "seed": int(seed), "dim": int(z.shape[1]), "n_fit_tiles": int(len(z)), "n_fit_slides": len(arrays),
        "inertia": float(km.inertia_), "fit_s": round(time.perf_counter() - t0, 3), "sklearn": sklearn.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {}),
    }
    clusterer = Clusterer(np.asarray(km.cluster_centers_, np.float64), mean, scale, card)
    return (clusterer, km) if return_estimator else clusterer
