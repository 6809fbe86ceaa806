"""One forward pass for every consumer: probabilities, features, out-of-domain flag and uncertainty.

:class:`ModelRunner` wraps a Keras tile classifier and what its card adds to it. ``forward(batch)``
runs the network **once** up to its penultimate features (the input of the final ``Dense`` layer),
then, in NumPy:

* the head (``features @ W + b``, softmax or sigmoid): the same probabilities as the whole model;
* the card's **temperature** (:mod:`engine.calibration`): the calibrated probabilities;
* the card's **out-of-domain detector** (:mod:`engine.domain`): ``domain_score`` (squared
  Mahalanobis distance to the nearest class mean) and ``in_domain`` (score within the threshold);
* **Monte Carlo dropout** (Gal & Ghahramani 2016) on the features only: the head is applied to
  ``mc_samples`` fixed dropout masks (rate of the model's own dropout layer before the head) and
  ``uncertainty`` is the standard deviation of the (calibrated) positive score across them, as in
  Slideflow's uncertainty heatmaps. Masks are drawn once per runner, so a tile's uncertainty does
  not depend on its batch (and can be cached).
* **Test-time augmentation** (``tta`` views, on the card): the network runs on the tile's four 90°
  rotations (``tta=4``; ``8`` adds their mirror images) and the *features* are averaged before the
  head, the detector and the dropout masks. The averaged features are the same for a tile and its
  rotated copy, so the score does not depend on how the tile happens to be oriented; it costs
  ``tta`` times the network's work.

The tile predictor, the heatmap inference and Grad-CAM's prediction all call this, so they agree.
Models without a final ``Dense`` layer (or imported ones without a detector or dropout) still give
probabilities; the extra fields are None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.calibration import apply_temperature
from engine.errors import IncompatibleModelError

#: default number of Monte Carlo dropout samples
MC_SAMPLES = 30
#: test-time augmentation: how many views a tile may be run as (1: none; 4: the 90° rotations; 8: with their mirror images)
TTA_VIEWS = (1, 4, 8)
#: the optional per-tile outputs (fields of :class:`ForwardOutput`) that travel as columns: prediction rows, heatmap
#: tiles (``HeatmapResult.columns``), cohort chunks, caches and exports all take this list
EXTRA_FIELDS = ("in_domain", "domain_score", "uncertainty")


@dataclass(frozen=True)
class ForwardOutput:
    """Per-tile outputs of one batch (``N`` tiles); the optional fields are None when the model cannot give them."""

    probabilities: np.ndarray  # (N, C) as predicted: calibrated with the card's temperature
    raw_probabilities: np.ndarray  # (N, C) the network's own (uncalibrated) probabilities
    score: np.ndarray  # (N,) summed calibrated probability of the positive classes
    features: np.ndarray | None = None  # (N, D) penultimate features
    domain_score: np.ndarray | None = None  # (N,) squared Mahalanobis distance to the nearest class mean
    in_domain: np.ndarray | None = None  # (N,) bool
    uncertainty: np.ndarray | None = None  # (N,) s.d. of the positive score under MC dropout

    def row(self, i: int) -> dict:
        """Tile ``i`` as plain Python values (for caches and tables)."""
        def opt(a, cast):
            return None if a is None else cast(a[i])

        return {"probabilities": [float(v) for v in self.probabilities[i]], "domain_score": opt(self.domain_score, float),
                "in_domain": opt(self.in_domain, bool), "uncertainty": opt(self.uncertainty, float)}


def probabilities_from_output(output: np.ndarray, n_classes: int) -> np.ndarray:
    """Model output → ``(N, n_classes)`` class probabilities; the one place this conversion is written.

    A single sigmoid unit of a two-class model becomes ``[1 − p, p]``; any other output must have one
    column per class (:class:`IncompatibleModelError` otherwise, never a silently wrong table).
    """
    output = np.asarray(output, dtype=np.float64)
    if output.ndim == 1:
        output = output[:, None]
    if output.ndim == 2 and output.shape[1] == 1 and n_classes == 2:
        return np.concatenate([1.0 - output, output], axis=1)
    if output.ndim != 2 or output.shape[1] != n_classes:
        raise IncompatibleModelError(f"The model outputs {output.shape[1:]} values per tile for {n_classes} classes.",
                                     "Check the model card's classes against the model's last layer.")
    return output


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act))


def find_head(model):
    """``(head Dense layer, dropout rate before it or None)`` when the model ends in a softmax/sigmoid ``Dense``; else ``(None, None)``."""
    from engine.runtime import keras

    k = keras()
    layers = getattr(model, "layers", None)  # anything with predict_on_batch works; only Keras models have a head to split off
    head = layers[-1] if layers else None
    if not isinstance(head, k.layers.Dense) or _activation_name(head) not in ("softmax", "sigmoid"):
        return None, None
    rate = None
    try:
        feeding = head._inbound_nodes[0].parent_nodes  # noqa: SLF001 - Keras 3 functional graph
        layer = feeding[0].operation if feeding else None
    except (AttributeError, IndexError):
        layer = None
    if isinstance(layer, k.layers.Dropout):
        rate = float(layer.rate)
    return head, rate


def dihedral_views(batch: np.ndarray, views: int) -> np.ndarray:
    """``(views * N, px, px, 3)``: the batch ``(N, px, px, 3)`` rotated by 0°, 90°, 180°, 270° (and, for 8, mirrored), view by view."""
    if views not in TTA_VIEWS:
        raise ValueError(f"tta views must be one of {TTA_VIEWS}, got {views!r}")
    rotations = [np.rot90(batch, k, axes=(1, 2)) for k in range(4 if views > 1 else 1)]
    if views == 8:
        rotations += [r[:, :, ::-1] for r in rotations]
    return np.concatenate(rotations) if len(rotations) > 1 else batch


def feature_blocks(model) -> tuple[int, ...] | None:
    """Sizes of the parts the penultimate features are concatenated from (the depths of ``lung_cnn_ms``), or None.

    Follows the head's input back through a ``Dropout`` to a ``Concatenate`` layer.
    """
    from engine.runtime import keras

    k = keras()
    layer, _ = find_head(model)
    for _ in range(3):
        try:
            parents = layer._inbound_nodes[0].parent_nodes  # noqa: SLF001 - Keras 3 functional graph
            layer = parents[0].operation if parents else None
        except (AttributeError, IndexError):
            return None
        if isinstance(layer, k.layers.Concatenate):
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            return tuple(int(t.shape[-1]) for t in inputs)
        if not isinstance(layer, k.layers.Dropout):
            return None
    return None


class ModelRunner:
    """A tile classifier with its calibration, out-of-domain detector and MC-dropout uncertainty.

    Args:
        model: the Keras model (float RGB 0..255 in, probabilities out).
        n_classes: number of classes on the card.
        positive: indices of the positive classes (their probabilities sum to the score).
        temperature: calibration temperature (1.0: none).
        detector: an :class:`engine.domain.DomainDetector` or None.
        mc_samples: Monte Carlo dropout samples (0: no uncertainty).
        seed: seed of the dropout masks.
        tta: views per tile (:data:`TTA_VIEWS`; 1: none), features averaged over them.
    """

    def __init__(self, model, *, n_classes: int, positive, temperature: float = 1.0, detector=None, mc_samples: int = MC_SAMPLES, seed: int = 0,
                 tta: int = 1):
        if int(tta) not in TTA_VIEWS:
            raise IncompatibleModelError(f"Test-time augmentation with {tta!r} views is not supported; use one of {', '.join(map(str, TTA_VIEWS))}.")
        self.tta = int(tta)
        self.model = model
        self.n_classes = int(n_classes)
        self.positive = list(positive)
        self.temperature = float(temperature)
        self.detector = detector
        self.head, self.dropout_rate = find_head(model)
        self._features = None
        self._masks = None
        if self.head is not None:
            from engine.runtime import keras

            self._features = keras().Model(model.inputs, self.head.input)
            w, b = self.head.get_weights()
            self._w, self._b = np.asarray(w, np.float64), np.asarray(b, np.float64)
            self._sigmoid = _activation_name(self.head) == "sigmoid"
            if self.dropout_rate and mc_samples > 0:
                keep = 1.0 - self.dropout_rate
                rng = np.random.default_rng(seed)
                self._masks = (rng.random((int(mc_samples), self._w.shape[0])) < keep) / keep
        if detector is not None and (self.head is None or detector.dim != self._w.shape[0]):
            raise ValueError("the out-of-domain detector does not fit this model's penultimate features")

    @classmethod
    def from_card(cls, card, model=None) -> ModelRunner:
        """The runner a registered model's card describes (loads the model once per process and the detector file)."""
        from engine.registry import load_model_for_card

        model = model if model is not None else load_model_for_card(card)
        detector = load_detector(card)
        samples = int((card.uncertainty or {}).get("samples", MC_SAMPLES))
        return cls(model, n_classes=len(card.classes), positive=card.positive_indices, temperature=card.temperature, detector=detector,
                   mc_samples=samples, seed=int((card.uncertainty or {}).get("seed", 0)), tta=card.tta_views)

    @property
    def has_uncertainty(self) -> bool:
        return self._masks is not None

    def _head_probs(self, features: np.ndarray) -> np.ndarray:
        z = features @ self._w + self._b
        if self._sigmoid:  # one unit: [1 - p, p] (any leading dimensions: the MC samples come as (T, N, 1))
            p = 1.0 / (1.0 + np.exp(-z))
            if p.shape[-1] != 1 or self.n_classes != 2:
                return probabilities_from_output(p, self.n_classes)  # raises the clear error
            return np.concatenate([1.0 - p, p], axis=-1)
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def forward(self, batch: np.ndarray) -> ForwardOutput:
        """Run a batch ``(N, px, px, 3)`` of float RGB 0..255 tiles."""
        x = np.asarray(batch, dtype=np.float32)
        n = len(x)
        if self.tta > 1:
            x = dihedral_views(x, self.tta)
        if self._features is None:
            raw = probabilities_from_output(self.model.predict_on_batch(x), self.n_classes)
            if self.tta > 1:
                raw = raw.reshape(self.tta, n, -1).mean(axis=0)
            probs = apply_temperature(raw, self.temperature) if self.temperature != 1.0 else raw
            return ForwardOutput(probs, raw, probs[:, self.positive].sum(axis=1))
        f = np.asarray(self._features.predict_on_batch(x), dtype=np.float64)
        if self.tta > 1:
            f = f.reshape(self.tta, n, -1).mean(axis=0)
        raw = self._head_probs(f)
        probs = apply_temperature(raw, self.temperature) if self.temperature != 1.0 else raw
        score = probs[:, self.positive].sum(axis=1)
        domain_score = in_domain = uncertainty = None
        if self.detector is not None:
            domain_score = self.detector.score(f)
            in_domain = self.detector.in_domain(domain_score)
        if self._masks is not None:
            samples = self._head_probs(f[None, :, :] * self._masks[:, None, :])  # (T, N, C)
            if self.temperature != 1.0:
                samples = np.stack([apply_temperature(s, self.temperature) for s in samples])
            uncertainty = samples[:, :, self.positive].sum(axis=2).std(axis=0)
        return ForwardOutput(probs, raw, score, f.astype(np.float32), domain_score, in_domain, uncertainty)

    def forward_all(self, images: np.ndarray, batch_size: int = 64, cancelled=None) -> ForwardOutput:
        """:meth:`forward` over many tiles in batches, concatenated (``cancelled()`` is checked between batches)."""
        parts = []
        for start in range(0, len(images), batch_size):
            if cancelled is not None:
                cancelled()
            parts.append(self.forward(images[start:start + batch_size]))
        return concat(parts)


def concat(parts: list[ForwardOutput]) -> ForwardOutput:
    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    return ForwardOutput(*(cat(n) for n in ("probabilities", "raw_probabilities", "score", "features", "domain_score", "in_domain", "uncertainty")))


def load_detector(card):
    """The card's out-of-domain detector (sha256-checked), or None when it has none."""

    info = card.domain or {}
    if not info.get("file") or card.folder is None:
        return None
    return _cached_detector(str(Path(card.folder) / info["file"]), info.get("sha256"))


_DETECTORS: dict = {}


def _cached_detector(path: str, sha256: str | None):
    from engine.domain import DomainDetector

    key = (path, sha256)
    if key not in _DETECTORS:
        _DETECTORS[key] = DomainDetector.load(path, sha256)
    return _DETECTORS[key]
