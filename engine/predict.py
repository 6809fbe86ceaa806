"""Tile prediction: batched, cached inference of a registered model on RGB tiles.

>>> from engine.predict import TilePredictor
>>> predictor = TilePredictor.from_registry()            # the default model
>>> result = predictor.predict_paths(["a.jpg", "b.png"])  # errors become rows, the run goes on
>>> result.to_frame().head()

Preprocessing follows the model card: optional stain normalisation, then a resize to the card's
``input_px`` (see :func:`engine.imageio.resize_tile`); models take float RGB in 0..255 and carry
their own rescaling. Results are cached by (weights sha256, preprocessing, pixel hash).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from engine.cache import ResultCache, make_key, shared_cache
from engine.errors import HistoDashError, IncompatibleModelError, InvalidInputError
from engine.imageio import is_tile_name, pixel_hash, read_image, resize_tile
from engine.progress import Progress
from engine.registry import ModelCard, Registry, load_model_for_card

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TilePrediction:
    """One tile's result; ``error`` is set (and the numbers are None) when the tile could not be read."""

    name: str
    score: float | None = None
    probabilities: tuple[float, ...] | None = None
    cached: bool = False
    normalized: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class PredictionResult:
    """Predictions of one model on a list of tiles."""

    model_id: str
    classes: tuple[str, ...]
    threshold: float
    score_name: str
    positive_label: str
    negative_label: str
    predictions: tuple[TilePrediction, ...]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def n_cached(self) -> int:
        return sum(p.cached for p in self.predictions)

    @property
    def n_errors(self) -> int:
        return sum(p.error is not None for p in self.predictions)

    def label_for(self, score: float | None, threshold: float | None = None) -> str | None:
        if score is None:
            return None
        t = self.threshold if threshold is None else threshold
        return self.positive_label if score >= t else self.negative_label

    def to_frame(self, threshold: float | None = None) -> pd.DataFrame:
        """One row per tile: ``path, score, label, predicted_class, p_<class>…, cached, normalized, error``."""
        rows = []
        for p in self.predictions:
            row = {"path": p.name, "score": p.score, "label": self.label_for(p.score, threshold)}
            probs = p.probabilities or (None,) * len(self.classes)
            row["predicted_class"] = self.classes[int(np.argmax(probs))] if p.probabilities else None
            row.update({f"p_{c}": v for c, v in zip(self.classes, probs)})
            row.update(cached=p.cached, normalized=p.normalized, error=p.error)
            rows.append(row)
        columns = ["path", "score", "label", "predicted_class", *(f"p_{c}" for c in self.classes), "cached", "normalized", "error"]
        return pd.DataFrame(rows, columns=columns)

    def to_csv(self, path=None, threshold: float | None = None) -> str | None:
        return self.to_frame(threshold).to_csv(path, index=False)


def labels_from_card(card: ModelCard) -> tuple[str, str]:
    labels = card.extra.get("labels") or {}
    return labels.get("positive", "positive"), labels.get("negative", "negative")


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


class Prepared(NamedTuple):
    """A tile ready for the model: ``tensor`` (``input_px × input_px × 3``, uint8) and whether it was stain-normalised."""

    tensor: np.ndarray
    normalized: bool | None


class TilePredictor:
    """Batched, cached inference of one registered model.

    Args:
        card: the model's card.
        model: an already loaded Keras model (default: loaded from the card, once per process).
        normalizer: an ``engine.stain`` normaliser applied before resizing, or None.
        cache: a :class:`ResultCache` (default: the shared one); ``False`` disables caching.
        batch_size: tiles per forward pass.
    """

    def __init__(self, card: ModelCard, model=None, *, normalizer=None, cache: ResultCache | None | bool = None, batch_size: int = 32):
        self.card = card
        self._model = model
        self.normalizer = normalizer
        self.cache = shared_cache() if cache is None else (cache or None)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1.")

    @classmethod
    def from_registry(cls, model_id: str | None = None, *, registry: Registry | None = None, **kwargs) -> TilePredictor:
        return cls((registry or Registry()).get(model_id), **kwargs)

    @property
    def model(self):
        if self._model is None:
            self._model = load_model_for_card(self.card)
        return self._model

    def preprocessing_key(self) -> dict:
        return {
            "input_px": self.card.input_px,
            "resize": "pil-bilinear",
            "normalizer": self.normalizer.cache_key() if self.normalizer is not None else None,
        }

    def prepare(self, rgb: np.ndarray) -> Prepared:
        """One RGB ``uint8`` tile → :class:`Prepared` (stain normalisation if configured, then the resize of the card).

        Thread-safe: readers may prepare tiles while another thread runs :meth:`predict_batch`.
        """
        normalized = None
        if self.normalizer is not None:
            info = self.normalizer.transform_with_info(rgb)
            rgb, normalized = info.image, bool(info.normalized)
        return Prepared(resize_tile(rgb, self.card.input_px), normalized)

    def predict_batch(self, tensors: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Prepared tensors (see :meth:`prepare`) → ``(N, n_classes)`` probabilities, one forward pass, no cache."""
        x = np.stack(list(tensors)).astype(np.float32) if not isinstance(tensors, np.ndarray) else tensors.astype(np.float32, copy=False)
        out = self.model.predict_on_batch(x)
        return probabilities_from_output(out, len(self.card.classes))

    def score(self, probabilities: Sequence[float]) -> float:
        return float(sum(probabilities[i] for i in self.card.positive_indices))

    def predict_arrays(self, images: Iterable[np.ndarray], names: Sequence[str] | None = None, progress: Progress | None = None) -> PredictionResult:
        """Predict RGB uint8 tiles given as arrays."""
        images = list(images)
        names = list(names) if names is not None else [f"tile_{i}" for i in range(len(images))]
        if len(names) != len(images):
            raise InvalidInputError(f"{len(images)} images but {len(names)} names.")
        items = [(n, img, None) for n, img in zip(names, images)]
        return self._run(items, progress)

    def predict_paths(self, paths: Sequence[str | Path], progress: Progress | None = None) -> PredictionResult:
        """Predict tiles read from files; an unreadable file becomes a row with its error, and the run goes on."""
        items = [(str(p), p, None) for p in paths]
        return self._run(items, progress)

    def predict_named_bytes(self, files: Sequence[tuple[str, bytes]], progress: Progress | None = None) -> PredictionResult:
        """Predict tiles given as ``(name, raw_bytes)`` (uploads)."""
        return self._run([(n, b, None) for n, b in files], progress)

    def _run(self, items: list, progress: Progress | None) -> PredictionResult:
        start = time.perf_counter()
        total = len(items)
        results: list[TilePrediction | None] = [None] * total
        pending: list[tuple[int, str, np.ndarray, bool | None]] = []  # index, key, tensor, normalized
        prep_key = self.preprocessing_key()
        done = 0

        def flush():
            nonlocal done
            if not pending:
                return
            probs = self.predict_batch([t for _, _, t, _ in pending])
            for (i, key, _, normalized), p in zip(pending, probs):
                value = {"probabilities": [float(v) for v in p], "normalized": normalized}
                if self.cache is not None:
                    self.cache.set(key, value)
                results[i] = TilePrediction(items[i][0], self.score(p), tuple(value["probabilities"]), False, normalized)
            done += len(pending)
            pending.clear()
            if progress:
                progress(done, total)

        for i, (name, source, _) in enumerate(items):
            try:
                rgb = source if isinstance(source, np.ndarray) else read_image(source, name=Path(name).name)
                if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                    raise InvalidInputError(f"'{name}' is not an RGB uint8 image (shape {rgb.shape}, {rgb.dtype}).")
                key = make_key("predict/v1", self.card.weights_sha256, prep_key, pixel_hash(rgb))
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is not None:
                    results[i] = TilePrediction(name, self.score(hit["probabilities"]), tuple(hit["probabilities"]), True, hit.get("normalized"))
                    done += 1
                    if progress:
                        progress(done, total)
                    continue
                tensor, normalized = self.prepare(rgb)
                pending.append((i, key, tensor, normalized))
            except HistoDashError as err:
                results[i] = TilePrediction(name, error=str(err))
                done += 1
            if len(pending) >= self.batch_size:
                flush()
        flush()
        if progress:
            progress(total, total)
        pos, neg = labels_from_card(self.card)
        return PredictionResult(
            model_id=self.card.id,
            classes=self.card.classes,
            threshold=self.card.threshold,
            score_name=self.card.score_name,
            positive_label=pos,
            negative_label=neg,
            predictions=tuple(results),
            seconds=time.perf_counter() - start,
        )


def collect_tile_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively) into tile files; plain files are kept whatever their suffix."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and is_tile_name(q.name)))
        else:
            out.append(p)
    return out
