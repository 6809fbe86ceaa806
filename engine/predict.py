"""Tile prediction: batched, cached inference of a registered model on RGB tiles.

>>> from engine.predict import TilePredictor
>>> predictor = TilePredictor.from_registry()            # the default model
>>> result = predictor.predict_paths(["a.jpg", "b.png"])  # errors become rows, the run goes on
>>> result.to_frame().head()

Preprocessing follows the model card: the card's stain normalisation (:mod:`engine.normalization`:
by default exactly the normaliser and reference the model was trained with; another choice is
possible and comes with ``normalization_warning``), then a resize to the card's ``input_px`` (see
:func:`engine.imageio.resize_tile`); models take float RGB in 0..255 and carry their own rescaling.
The forward pass is :meth:`engine.forward.ModelRunner.forward`: calibrated probabilities, and per
tile ``in_domain``, ``domain_score`` and ``uncertainty`` when the card has a detector / dropout.
Results are cached by (weights sha256, preprocessing, calibration, detector, pixel hash).
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
from engine.errors import HistoDashError, InvalidInputError
from engine.exports import safe_csv
from engine.forward import EXTRA_FIELDS, ForwardOutput, ModelRunner, probabilities_from_output  # noqa: F401 - probabilities_from_output: public here too
from engine.imageio import check_scorable, is_tile_name, pixel_hash, read_image, resize_tile
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
    in_domain: bool | None = None
    domain_score: float | None = None
    uncertainty: float | None = None


#: per-tile columns a prediction (and a heatmap tile) may carry beyond the probabilities, in table order
EXTRA_COLUMNS = EXTRA_FIELDS
#: a slide or tile set with more than this share of its tiles out of domain gets a warning
OUT_OF_DOMAIN_WARNING_FRACTION = 0.5


def out_of_domain_warning(in_domain, what: str = "tiles") -> str | None:
    """The warning for a set of tiles that are mostly out of domain (None otherwise or when unknown)."""
    flags = [bool(v) for v in in_domain if v is not None and v == v]
    if not flags:
        return None
    out = 1.0 - sum(flags) / len(flags)
    if out <= OUT_OF_DOMAIN_WARNING_FRACTION:
        return None
    return (f"{out:.0%} of the {what} are out of domain: they look unlike the tissue this model was trained on, so its scores "
            "(and any ranking of them) are not meaningful here.")


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

    @property
    def in_domain_fraction(self) -> float | None:
        flags = [p.in_domain for p in self.predictions if p.in_domain is not None]
        return sum(flags) / len(flags) if flags else None

    @property
    def domain_warning(self) -> str | None:
        """A warning when most tiles are out of domain (None otherwise)."""
        return out_of_domain_warning([p.in_domain for p in self.predictions], "tiles")

    @property
    def normalization_warning(self) -> str | None:
        """Set when the tiles were normalised otherwise than the model card prescribes."""
        return self.extra.get("normalization_warning")

    def label_for(self, score: float | None, threshold: float | None = None) -> str | None:
        if score is None:
            return None
        t = self.threshold if threshold is None else threshold
        return self.positive_label if score >= t else self.negative_label

    def to_frame(self, threshold: float | None = None) -> pd.DataFrame:
        """One row per tile: ``path, score, label, predicted_class, p_<class>…, in_domain, domain_score, uncertainty, cached, normalized, error``."""
        rows = []
        for p in self.predictions:
            row = {"path": p.name, "score": p.score, "label": self.label_for(p.score, threshold)}
            probs = p.probabilities or (None,) * len(self.classes)
            row["predicted_class"] = self.classes[int(np.argmax(probs))] if p.probabilities else None
            row.update({f"p_{c}": v for c, v in zip(self.classes, probs)})
            row.update({k: getattr(p, k) for k in EXTRA_COLUMNS})
            row.update(cached=p.cached, normalized=p.normalized, error=p.error)
            rows.append(row)
        columns = ["path", "score", "label", "predicted_class", *(f"p_{c}" for c in self.classes), *EXTRA_COLUMNS, "cached", "normalized", "error"]
        return pd.DataFrame(rows, columns=columns)

    def to_csv(self, path=None, threshold: float | None = None) -> str | None:
        data = safe_csv(self.to_frame(threshold), path)  # file names are user text: escaped for spreadsheets
        return None if path is not None else data.decode()


def labels_from_card(card: ModelCard) -> tuple[str, str]:
    labels = card.extra.get("labels") or {}
    return labels.get("positive", "positive"), labels.get("negative", "negative")


class Prepared(NamedTuple):
    """A tile ready for the model: ``tensor`` (``input_px × input_px × 3``, uint8) and whether it was stain-normalised."""

    tensor: np.ndarray
    normalized: bool | None


class TilePredictor:
    """Batched, cached inference of one registered model.

    Args:
        card: the model's card.
        model: an already loaded Keras model (default: loaded from the card, once per process).
        normalizer: ``"card"`` (default): the card's normalisation, exactly; ``"none"``, ``"macenko"``,
            ``"vahadane"``: that one (default target); an ``engine.stain`` normaliser object; or None (no
            normalisation). Anything other than the card's sets :attr:`normalization_warning`.
        cache: a :class:`ResultCache` (default: the shared one); ``False`` disables caching.
        batch_size: tiles per forward pass.
    """

    def __init__(self, card: ModelCard, model=None, *, normalizer="card", cache: ResultCache | None | bool = None, batch_size: int = 32):
        from engine.normalization import choice_warning, normalizer_for_card, resolve

        self.card = card
        self._model = model
        self._runner: ModelRunner | None = None
        if isinstance(normalizer, str) or normalizer is None:
            self.normalizer, self.normalization_warning = resolve(card, "none" if normalizer is None else normalizer)
        else:
            self.normalizer = normalizer
            prescribed = normalizer_for_card(card)
            same = prescribed is not None and prescribed.cache_key() == normalizer.cache_key()
            self.normalization_warning = None if same else (choice_warning(card, normalizer.method) or choice_warning(card, "custom reference"))
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

    @property
    def runner(self) -> ModelRunner:
        """The forward pass (:class:`engine.forward.ModelRunner` of the card), built on first use."""
        if self._runner is None:
            self._runner = ModelRunner.from_card(self.card, self.model)
        return self._runner

    def preprocessing_key(self) -> dict:
        """What, beside the weights and the pixels, decides a tile's outputs (part of every cache key)."""
        return {
            "input_px": self.card.input_px,
            "resize": "pil-bilinear",
            "normalizer": self.normalizer.cache_key() if self.normalizer is not None else None,
            "temperature": self.card.temperature,
            "domain": (self.card.domain or {}).get("sha256"),
            "uncertainty": {k: (self.card.uncertainty or {}).get(k) for k in ("samples", "seed")},
            **({"tta": self.card.tta_views} if self.card.tta_views > 1 else {}),  # only when on: keys of cards without it stay as they were
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

    def forward_batch(self, tensors: Sequence[np.ndarray] | np.ndarray) -> ForwardOutput:
        """Prepared tensors (see :meth:`prepare`) → :class:`engine.forward.ForwardOutput` (calibrated probabilities,
        domain score, in_domain, uncertainty), one forward pass, no cache."""
        x = np.stack(list(tensors)).astype(np.float32) if not isinstance(tensors, np.ndarray) else tensors.astype(np.float32, copy=False)
        return self.runner.forward(x)

    def predict_batch(self, tensors: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Prepared tensors → ``(N, n_classes)`` calibrated probabilities (:meth:`forward_batch` without the extras)."""
        return self.forward_batch(tensors).probabilities

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
            out = self.forward_batch([t for _, _, t, _ in pending])
            for j, (i, key, _, normalized) in enumerate(pending):
                value = {**out.row(j), "normalized": normalized}
                if self.cache is not None:
                    self.cache.set(key, value)
                results[i] = self._prediction(items[i][0], value, cached=False)
            done += len(pending)
            pending.clear()
            if progress:
                progress(done, total)

        for i, (name, source, _) in enumerate(items):
            try:
                rgb = source if isinstance(source, np.ndarray) else read_image(source, name=Path(name).name)
                if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                    raise InvalidInputError(f"'{name}' is not an RGB uint8 image (shape {rgb.shape}, {rgb.dtype}).")
                check_scorable(rgb, Path(name).name)  # blank or degenerate tiles are named, not scored
                key = make_key("predict/v2", self.card.weights_sha256, prep_key, pixel_hash(rgb))
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is not None:
                    results[i] = self._prediction(name, hit, cached=True)
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
            extra={"normalization_warning": self.normalization_warning, "normalization": getattr(self.normalizer, "method", "custom") if self.normalizer is not None else "none"},
        )

    def _prediction(self, name: str, value: dict, *, cached: bool) -> TilePrediction:
        probs = tuple(value["probabilities"])
        return TilePrediction(name, self.score(probs), probs, cached, value.get("normalized"), None,
                              value.get("in_domain"), value.get("domain_score"), value.get("uncertainty"))


def collect_tile_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively) into tile files; plain files are kept whatever their suffix."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and is_tile_name(q.name)))
        else:
            out.append(p)
    return out
