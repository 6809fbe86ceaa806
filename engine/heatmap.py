"""Slide heatmaps: tiling, streaming cached inference, rendering and exports.

>>> from engine.heatmap import HeatmapRun, TileGrid
>>> from engine.predict import TilePredictor
>>> slide = open_slide("CMU-1-Small-Region.svs")
>>> predictor = TilePredictor.from_registry("lc25000-lung-cnn")
>>> grid = TileGrid.for_slide(slide, predictor.card)          # tiles at the card's µm/px
>>> result = HeatmapRun(predictor).run(slide, grid)             # cached per tile; resumable
>>> result.to_csv("tiles.csv"); result.summary()

Geometry lives in :class:`TileGrid` (level-0 coordinates throughout: a tile is the level-0 square
``[x, x + tile0) × [y, y + tile0)``, read at ``level`` as ``read_px`` pixels and resized to the
model's ``input_px``). Tiles whose tissue fraction (:mod:`engine.tissue`) is below ``min_tissue``
are not scored.

Inference is streamed: reader threads read and preprocess batches of tiles into a bounded queue
while the calling thread runs the model, so decoding overlaps model compute and memory is bounded
by ``queue_batches × batch_size`` tiles whatever the slide size. Each tile's probabilities are cached
under (slide content hash, level-0 location, tile size, read level/size, model sha256,
preprocessing), so an interrupted run resumes and a repeated one is served from the cache.

Rendering (:func:`mode_values`, :func:`render_overlay`, :func:`heatmap_figure`) implements the
reference study's modes raw / percentiles / binarise / extreme with colour map, opacity, Gaussian
blur and blank canvas. Exports: CSV, PNG, GeoJSON (QuPath detections with measurements), manifest.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.cache import make_key
from engine.errors import HistoDashError, InvalidInputError
from engine.exports import safe_csv
from engine.limits import inference_slot, wait_message
from engine.privacy import loggable_name
from engine.slides import Slide, open_slide
from engine.tissue import DEFAULT_MIN_TISSUE, TissueMask, TissueMasker

log = logging.getLogger(__name__)

MODES = ("raw", "percentiles", "binarise", "extreme")
DEFAULT_THRESHOLD = 0.6
EXTREME_LOW, EXTREME_HIGH = 0.3, 0.7
CACHE_NAMESPACE = "heatmap-tile/v1"


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class TileGrid:
    """Where tiles are and how they are read. All positions and sizes in level-0 pixels.

    Attributes:
        width0, height0: slide level-0 size.
        tile0: tile side at level 0; stride0: step between tiles at level 0 (``< tile0`` = overlap).
        level: pyramid level read; level_downsample: its downsample; read_px: side read at that level.
        input_px: model input side (tiles are resized to it).
        mpp: level-0 µm/px used (None when unknown); target_mpp: the model's µm/px (None = by level).
    """

    width0: int
    height0: int
    tile0: int
    stride0: int
    level: int
    level_downsample: float
    read_px: int
    input_px: int
    mpp: float | None = None
    target_mpp: float | None = None

    def __post_init__(self):
        if self.tile0 < 1 or self.stride0 < 1 or self.read_px < 1:
            raise InvalidInputError(f"Invalid tiling: tile {self.tile0}, stride {self.stride0}, read {self.read_px} px.")

    @property
    def n_cols(self) -> int:
        return 0 if self.width0 < self.tile0 else (self.width0 - self.tile0) // self.stride0 + 1

    @property
    def n_rows(self) -> int:
        return 0 if self.height0 < self.tile0 else (self.height0 - self.tile0) // self.stride0 + 1

    @property
    def n_tiles(self) -> int:
        return self.n_cols * self.n_rows

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 top-left ``(x, y)`` of every tile, row by row."""
        cols = np.arange(self.n_cols, dtype=np.int64) * self.stride0
        rows = np.arange(self.n_rows, dtype=np.int64) * self.stride0
        yy, xx = np.meshgrid(rows, cols, indexing="ij")
        return xx.ravel(), yy.ravel()

    def index_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid ``(row, col)`` of tiles with level-0 top-left ``(x, y)``."""
        return np.asarray(y) // self.stride0, np.asarray(x) // self.stride0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_slide(
        cls, slide: Slide, input_px: int, *, model_mpp: float | None = None, level: int | None = None,
        tile_px: int | None = None, stride_fraction: float = 1.0, use_mpp: bool = True,
    ) -> TileGrid:
        """Tiles for ``slide``: at the model's µm/px when both it and the slide's are known, else at ``level``.

        Args:
            input_px: model input side (``card.input_px``).
            model_mpp: the model card's µm/px (None: unknown).
            level: pyramid level to tile when not tiling by µm/px (default 0).
            tile_px: tile side at ``level`` when tiling by level (default ``input_px``).
            stride_fraction: stride as a fraction of the tile (1 = no overlap, 0.5 = half overlap).
        """
        if hasattr(input_px, "input_px"):  # a ModelCard
            card = input_px
            input_px, model_mpp = card.input_px, card.mpp if model_mpp is None else model_mpp
        if not 0.05 <= float(stride_fraction) <= 1.0:
            raise InvalidInputError(f"Stride fraction {stride_fraction} must be between 0.05 and 1.")
        w0, h0 = slide.dimensions
        slide_mpp = slide.mpp
        if use_mpp and model_mpp and slide_mpp:
            target_ds = float(model_mpp) / slide_mpp
            tile0 = max(1, round(int(input_px) * target_ds))
            lvl = slide.get_best_level_for_downsample(target_ds)
            ds = slide.level_downsamples[lvl]
            read_px = max(1, round(tile0 / ds))
        else:
            lvl = 0 if level is None else int(level)
            if not 0 <= lvl < slide.level_count:
                raise InvalidInputError(f"Level {lvl} does not exist ({slide.level_count} levels).")
            ds = slide.level_downsamples[lvl]
            read_px = int(tile_px or input_px)
            tile0 = max(1, round(read_px * ds))
            model_mpp = None
        stride0 = max(1, round(tile0 * float(stride_fraction)))
        if tile0 > max(w0, h0):
            raise InvalidInputError(f"Tiles of {tile0} level-0 px are larger than the slide ({w0}×{h0}).", "Choose a lower level or smaller tiles.")
        return cls(w0, h0, int(tile0), int(stride0), lvl, float(ds), int(read_px), int(input_px), slide_mpp, model_mpp)


# ----------------------------------------------------------------------------- result

@dataclass(frozen=True)
class HeatmapResult:
    """Scores of the tissue tiles of one slide (arrays aligned: one entry per scored tile)."""

    grid: TileGrid
    x: np.ndarray
    y: np.ndarray
    tissue: np.ndarray
    probabilities: np.ndarray  # (n, n_classes)
    scores: np.ndarray
    cached: np.ndarray
    classes: tuple[str, ...]
    model_id: str
    model_sha256: str
    threshold: float
    slide_name: str
    slide_hash: str
    params: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    complete: bool = True

    @property
    def n_tiles(self) -> int:
        return int(len(self.scores))

    def to_frame(self) -> pd.DataFrame:
        """``x, y`` (level 0), ``width, height`` (level 0), ``score``, ``p_<class>``…, ``tissue``, ``cached``."""
        data = {"x": self.x, "y": self.y, "width": np.full(len(self.x), self.grid.tile0), "height": np.full(len(self.x), self.grid.tile0), "score": self.scores}
        for i, c in enumerate(self.classes):
            data[f"p_{c}"] = self.probabilities[:, i] if len(self.probabilities) else np.zeros(0)
        data["tissue"] = self.tissue
        data["cached"] = self.cached
        return pd.DataFrame(data)

    def to_csv(self, path=None) -> str | None:
        data = safe_csv(self.to_frame(), path, float_format="%.6g")
        return None if path is not None else data.decode()

    def summary(self, threshold: float | None = None, top_k: int = 10) -> dict:
        """Slide-level statistics of the tissue tiles' scores."""
        t = self.threshold if threshold is None else float(threshold)
        s = self.scores
        k = min(top_k, len(s))
        return {
            "slide": self.slide_name,
            "model_id": self.model_id,
            "n_tiles": int(len(s)),
            "n_grid_tiles": int(self.grid.n_tiles),
            "threshold": t,
            "mean_score": float(s.mean()) if len(s) else None,
            "median_score": float(np.median(s)) if len(s) else None,
            "max_score": float(s.max()) if len(s) else None,
            "fraction_over_threshold": float((s >= t).mean()) if len(s) else None,
            "top_k": int(top_k),
            "top_k_mean": float(np.sort(s)[::-1][:k].mean()) if k else None,
            "complete": bool(self.complete),
        }

    def top_k(self, k: int = 12) -> pd.DataFrame:
        return self.to_frame().sort_values("score", ascending=False, kind="stable").head(k)

    def score_grid(self, values: np.ndarray | None = None) -> np.ndarray:
        """``(n_rows, n_cols)`` grid of per-tile values (default: scores), NaN where not scored."""
        grid = np.full((self.grid.n_rows, self.grid.n_cols), np.nan)
        if len(self.x):
            r, c = self.grid.index_of(self.x, self.y)
            grid[r, c] = self.scores if values is None else values
        return grid

    def to_geojson(self, threshold: float | None = None) -> dict:
        """A FeatureCollection QuPath imports as detections (one square per tile, measurements attached)."""
        t = self.threshold if threshold is None else float(threshold)
        features = []
        size = int(self.grid.tile0)
        for i in range(len(self.x)):
            x, y = int(self.x[i]), int(self.y[i])
            positive = bool(self.scores[i] >= t)
            measurements = {"score": float(self.scores[i]), "tissue_fraction": float(self.tissue[i])}
            measurements.update({f"p_{c}": float(self.probabilities[i, j]) for j, c in enumerate(self.classes)})
            features.append({
                "type": "Feature",
                "id": f"tile-{x}-{y}",
                "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": "Positive" if positive else "Negative", "color": [200, 0, 0] if positive else [0, 0, 200]},
                    "measurements": measurements,
                    "isLocked": False,
                },
            })
        return {"type": "FeatureCollection", "features": features}

    def manifest(self) -> dict:
        import importlib.metadata as md

        versions = {"python": platform.python_version()}
        for pkg in ("openslide-python", "openslide-bin", "tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-image", "tifffile"):
            try:
                versions[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
        return {
            "kind": "histodash-heatmap",
            "version": 1,
            "slide": {"name": self.slide_name, "hash": self.slide_hash},
            "model": {"id": self.model_id, "sha256": self.model_sha256, "classes": list(self.classes), "threshold": self.threshold},
            "grid": self.grid.to_dict(),
            "params": self.params,
            "timings": self.timings,
            "n_tiles": self.n_tiles,
            "n_cached": int(self.cached.sum()) if len(self.cached) else 0,
            "complete": self.complete,
            "versions": versions,
        }

    def files(self, *, thumbnail: np.ndarray | None = None, threshold: float | None = None, png: bytes | None = None) -> dict[str, bytes]:
        """The five result files as ``{name: bytes}``: ``tiles.csv``, ``heatmap.png``, ``tiles.geojson``,
        ``summary.json``, ``manifest.json`` (``png``: an already rendered heatmap PNG to use as is)."""
        return {
            "tiles.csv": self.to_csv().encode(),
            "heatmap.png": png if png is not None else png_bytes(render_overlay(self, thumbnail)),
            "tiles.geojson": json.dumps(self.to_geojson(threshold)).encode(),
            "summary.json": json.dumps(self.summary(threshold), indent=2).encode(),
            "manifest.json": json.dumps(self.manifest(), indent=2, default=str).encode(),
        }

    def save(self, out_dir: Path | str, *, thumbnail: np.ndarray | None = None, threshold: float | None = None) -> dict[str, Path]:
        """Write :meth:`files` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, data in self.files(thumbnail=thumbnail, threshold=threshold).items():
            paths[name] = out / name
            paths[name].write_bytes(data)
        return paths

    def anonymised(self) -> HeatmapResult:
        """The same result with the slide's name replaced by a stable pseudonym (``slide-<8 hex>``, see
        :func:`engine.privacy.pseudonym`): its CSV, GeoJSON, summary and manifest then carry no name."""
        from dataclasses import replace

        from engine.privacy import pseudonym

        return replace(self, slide_name=pseudonym(self.slide_name, "slide"))

    def export_files(self, *, thumbnail: np.ndarray | None = None, threshold: float | None = None, anonymise: bool = False, png: bytes | None = None) -> dict[str, bytes]:
        """What the page offers for download: ``{file name: bytes}`` (tiles CSV, heatmap PNG, GeoJSON, summary, manifest).

        File names start with the slide's stem, or with its pseudonym when ``anonymise``. No server paths.
        """
        result = self.anonymised() if anonymise else self
        stem = Path(result.slide_name).stem
        return {f"{stem}_{name}": data for name, data in result.files(thumbnail=thumbnail, threshold=threshold, png=png).items()}

    @classmethod
    def load(cls, out_dir: Path | str) -> HeatmapResult:
        """Read back a result written by :meth:`save` (the page shows finished jobs this way)."""
        out = Path(out_dir)
        manifest = json.loads((out / "manifest.json").read_text())
        frame = pd.read_csv(out / "tiles.csv")
        classes = tuple(manifest["model"]["classes"])
        probs = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64) if len(frame) else np.zeros((0, len(classes)))
        return cls(
            grid=TileGrid(**manifest["grid"]), x=frame["x"].to_numpy(np.int64), y=frame["y"].to_numpy(np.int64),
            tissue=frame["tissue"].to_numpy(np.float64), probabilities=probs, scores=frame["score"].to_numpy(np.float64),
            cached=frame["cached"].to_numpy(bool), classes=classes, model_id=manifest["model"]["id"],
            model_sha256=manifest["model"]["sha256"], threshold=float(manifest["model"]["threshold"]),
            slide_name=manifest["slide"]["name"], slide_hash=manifest["slide"]["hash"], params=manifest.get("params", {}),
            timings=manifest.get("timings", {}), complete=bool(manifest.get("complete", True)),
        )


# ----------------------------------------------------------------------------- inference

class Cancelled(Exception):
    """Raised inside :meth:`HeatmapRun.run` when ``cancelled()`` turns true."""


_SENTINEL = object()


class HeatmapRun:
    """Streaming, cached, batched inference of a :class:`engine.predict.TilePredictor` over a slide.

    Args:
        predictor: model side (its ``_preprocess``/``_forward``/``score``/``cache`` are reused).
        masker: tissue detector (default :class:`TissueMasker()`).
        min_tissue: minimum tissue fraction for a tile to be scored.
        readers: reader threads; queue_batches: batches buffered ahead of the model (bounds memory);
        decode_workers: threads decoding the tiles of one batch.
    """

    def __init__(self, predictor, *, masker: TissueMasker | None = None, min_tissue: float = DEFAULT_MIN_TISSUE, readers: int = 1, queue_batches: int = 3, decode_workers: int = 2):
        if not 0.0 <= float(min_tissue) <= 1.0:
            raise InvalidInputError(f"Minimum tissue fraction {min_tissue} must be between 0 and 1.")
        self.predictor = predictor
        self.masker = masker or TissueMasker()
        self.min_tissue = float(min_tissue)
        self.readers = max(1, int(readers))
        self.queue_batches = max(1, int(queue_batches))
        self.decode_workers = max(1, int(decode_workers))
        self.peak_queue = 0

    def tile_key(self, slide_hash: str, grid: TileGrid, x: int, y: int) -> str:
        card = self.predictor.card
        return make_key(CACHE_NAMESPACE, slide_hash, int(x), int(y), grid.tile0, grid.level, grid.read_px, card.weights_sha256, self.predictor.preprocessing_key())

    def select_tiles(self, slide: Slide, grid: TileGrid, mask: TissueMask | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, tissue_fraction)`` of the grid tiles with enough tissue."""
        mask = mask if mask is not None else self.masker.fit(slide)
        x, y = grid.positions()
        frac = mask.fractions(x, y, grid.tile0, grid.tile0) if len(x) else np.zeros(0)
        keep = frac >= self.min_tissue if self.min_tissue > 0 else np.ones(len(x), bool)
        return x[keep], y[keep], frac[keep]

    def run(
        self, slide: Slide, grid: TileGrid, *, mask: TissueMask | None = None,
        progress: Callable[[int, int, str], None] | None = None, cancelled: Callable[[], bool] | None = None,
    ) -> HeatmapResult:
        """Score every tissue tile; raises :class:`Cancelled` (after saving what was done to the cache)."""
        t_start = time.perf_counter()
        pred = self.predictor
        card = pred.card
        cache = pred.cache
        slide_hash = slide.content_hash()
        t0 = time.perf_counter()
        x, y, frac = self.select_tiles(slide, grid, mask)
        t_tissue = time.perf_counter() - t0
        n = len(x)
        n_classes = len(card.classes)
        probs = np.full((n, n_classes), np.nan)
        cached = np.zeros(n, bool)
        keys = [self.tile_key(slide_hash, grid, x[i], y[i]) for i in range(n)]
        t0 = time.perf_counter()
        if cache is not None:
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is not None:
                    probs[i] = hit["probabilities"]
                    cached[i] = True
        t_lookup = time.perf_counter() - t0
        todo = np.flatnonzero(~cached)
        done = int(cached.sum())
        if progress:
            progress(done, n, f"{done} of {n} tiles from the cache" if done else f"{n} tissue tiles to score")
        t0 = time.perf_counter()
        t_model = 0.0
        if len(todo):
            t_model = self._stream(slide, grid, x, y, todo, keys, probs, done, n, progress, cancelled)
        t_infer = time.perf_counter() - t0
        scores = np.array([pred.score(p) for p in probs]) if n else np.zeros(0)
        return HeatmapResult(
            grid=grid, x=x, y=y, tissue=frac, probabilities=probs, scores=scores, cached=cached,
            classes=tuple(card.classes), model_id=card.id, model_sha256=card.weights_sha256, threshold=float(card.threshold),
            slide_name=slide.path.name, slide_hash=slide_hash,
            params={"min_tissue": self.min_tissue, "batch_size": pred.batch_size, "readers": self.readers, "preprocessing": pred.preprocessing_key(), "tissue": self.masker.cache_key()},
            timings={"tissue_s": t_tissue, "cache_lookup_s": t_lookup, "inference_s": t_infer, "model_s": t_model, "total_s": time.perf_counter() - t_start, "n_scored_now": int(len(todo))},
        )

    def _stream(self, slide, grid, x, y, todo, keys, probs, done, n, progress, cancelled) -> float:
        pred = self.predictor
        bs = pred.batch_size
        batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        q: queue.Queue = queue.Queue(maxsize=self.queue_batches)
        stop = threading.Event()
        next_batch = iter(range(len(batches)))
        lock = threading.Lock()
        finished = [0]

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read_one(i):
            rgb = slide.read_region((int(x[i]), int(y[i])), grid.level, (grid.read_px, grid.read_px))
            return pred._preprocess(rgb)[0]

        # tiles of one batch are decoded by a small pool (OpenSlide and Pillow release the GIL): the first batch,
        # which the model waits for, arrives sooner
        pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="heatmap-decode") if self.decode_workers > 1 else None

        def reader():
            try:
                while not stop.is_set():
                    with lock:
                        b = next(next_batch, None)
                    if b is None:
                        break
                    idx = batches[b]
                    tensors = list(pool.map(read_one, idx)) if pool is not None else [read_one(i) for i in idx]
                    if not put((idx, tensors)):
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                put(exc)
            finally:
                with lock:
                    finished[0] += 1
                    last = finished[0] == self.readers
                if last:
                    put(_SENTINEL)

        # cache writes (sqlite commits) happen on their own thread, off the model's critical path
        writes: queue.Queue = queue.Queue()

        def writer():
            while True:
                item = writes.get()
                if item is None:
                    return
                for key, value in item:
                    pred.cache.set(key, value)

        threads = [threading.Thread(target=reader, name=f"heatmap-reader-{k}", daemon=True) for k in range(self.readers)]
        for t in threads:
            t.start()
        writer_thread = threading.Thread(target=writer, name="heatmap-cache-writer", daemon=True) if pred.cache is not None else None
        if writer_thread is not None:
            writer_thread.start()
        t_model = 0.0
        t_last = time.perf_counter()
        try:
            while True:
                if cancelled is not None and cancelled():
                    raise Cancelled(f"cancelled after {done} of {n} tiles")
                item = q.get()
                self.peak_queue = max(self.peak_queue, q.qsize() + 1)
                if item is _SENTINEL:
                    break
                if isinstance(item, BaseException):
                    raise item
                idx, tensors = item
                t0 = time.perf_counter()
                out = pred._forward(tensors)
                t_model += time.perf_counter() - t0
                probs[idx] = out
                if writer_thread is not None:
                    writes.put([(keys[i], {"probabilities": [float(v) for v in p]}) for i, p in zip(idx, out)])
                done += len(idx)
                if progress and (time.perf_counter() - t_last > 0.25 or done == n):
                    t_last = time.perf_counter()
                    progress(done, n, f"{done} of {n} tiles scored")
        finally:
            stop.set()
            while True:  # unblock readers waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            for t in threads:
                t.join(timeout=5)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if writer_thread is not None:  # everything scored so far is cached, also when cancelled
                writes.put(None)
                writer_thread.join()
        return t_model


# ----------------------------------------------------------------------------- rendering

def mode_values(scores: np.ndarray, mode: str = "raw", *, threshold: float = DEFAULT_THRESHOLD, low: float = EXTREME_LOW, high: float = EXTREME_HIGH) -> np.ndarray:
    """Per-tile values to colour: raw scores, percentile ranks (0–1), 0/1 at ``threshold``, or extremes only (NaN elsewhere)."""
    s = np.asarray(scores, np.float64)
    if mode == "raw":
        return s.copy()
    if mode == "percentiles":
        if len(s) <= 1:
            return np.ones_like(s)
        from scipy.stats import rankdata

        return (rankdata(s, method="average") - 1) / (len(s) - 1)
    if mode == "binarise":
        return (s >= threshold).astype(np.float64)
    if mode == "extreme":
        return np.where((s <= low) | (s >= high), s, np.nan)
    raise InvalidInputError(f"Unknown heatmap mode '{mode}'. Choose one of {', '.join(MODES)}.")


def colour_lut(colormap: str = "viridis") -> np.ndarray:
    """``(256, 3) uint8`` lookup table of a plotly colour scale (``viridis``, ``plasma``, ``RdBu_r``, …)."""
    from plotly import colors

    try:
        scale = colors.get_colorscale(colormap)
    except Exception as exc:  # noqa: BLE001
        raise InvalidInputError(f"Unknown colour map '{colormap}'.") from exc
    samples = colors.sample_colorscale(scale, list(np.linspace(0, 1, 256)), colortype="tuple")
    return np.clip(np.rint(np.array(samples) * (255 if max(max(t) for t in samples) <= 1.0 else 1)), 0, 255).astype(np.uint8)


def value_canvas(result: HeatmapResult, values: np.ndarray, scale: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Average ``values`` of overlapping tiles onto a canvas of ``shape`` (h, w) with ``scale`` level-0 px per pixel.

    Returns ``(mean, coverage)``: tile squares are mapped exactly (rounded to the nearest canvas
    pixel edge); NaN values are left out.
    """
    h, w = shape
    ok = ~np.isnan(values)
    x, y, v = result.x[ok], result.y[ok], values[ok]
    size = result.grid.tile0
    c0 = np.clip(np.rint(x / scale).astype(np.int64), 0, w)
    c1 = np.clip(np.rint((x + size) / scale).astype(np.int64), 0, w)
    r0 = np.clip(np.rint(y / scale).astype(np.int64), 0, h)
    r1 = np.clip(np.rint((y + size) / scale).astype(np.int64), 0, h)
    acc = np.zeros((h + 1, w + 1))
    cnt = np.zeros((h + 1, w + 1))
    for arr, val in ((acc, v), (cnt, np.ones_like(v))):
        np.add.at(arr, (r0, c0), val)
        np.add.at(arr, (r0, c1), -val)
        np.add.at(arr, (r1, c0), -val)
        np.add.at(arr, (r1, c1), val)
    acc = acc.cumsum(0).cumsum(1)[:h, :w]
    cnt = np.rint(cnt.cumsum(0).cumsum(1)[:h, :w])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    return mean, cnt > 0


def render_overlay(
    result: HeatmapResult, base: np.ndarray | None = None, *, mode: str = "raw", colormap: str = "viridis", opacity: float = 0.6,
    blur_sigma: float = 0.0, threshold: float = DEFAULT_THRESHOLD, max_side: int = 1024,
) -> np.ndarray:
    """The heatmap over ``base`` (an RGB thumbnail of the whole slide) or over a blank canvas when ``base`` is None.

    ``blur_sigma`` is in level-0 pixels (normalised Gaussian: untouched tiles stay transparent).
    Returns RGB ``uint8`` of the base's size (or at most ``max_side`` for a blank canvas).
    """
    W0, H0 = result.grid.width0, result.grid.height0
    if base is None:
        f = min(1.0, max_side / max(W0, H0))
        shape = (max(1, round(H0 * f)), max(1, round(W0 * f)))
        base = np.full((*shape, 3), 255, np.uint8)
    base = np.asarray(base, np.uint8)
    h, w = base.shape[:2]
    scale_x, scale_y = W0 / w, H0 / h
    scale = (scale_x + scale_y) / 2
    values = mode_values(result.scores, mode, threshold=threshold)
    mean, covered = value_canvas(result, values, scale, (h, w))
    if blur_sigma and blur_sigma > 0:
        from scipy.ndimage import gaussian_filter

        sigma = blur_sigma / scale
        num = gaussian_filter(np.nan_to_num(mean), sigma)
        den = gaussian_filter(covered.astype(np.float64), sigma)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(covered, num / np.maximum(den, 1e-9), np.nan)
    lut = colour_lut(colormap)
    idx = np.clip(np.rint(np.nan_to_num(mean) * 255), 0, 255).astype(np.uint8)
    colour = lut[idx].astype(np.float64)
    alpha = np.where(covered & ~np.isnan(mean), float(opacity), 0.0)[..., None]
    out = base.astype(np.float64) * (1 - alpha) + colour * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def heatmap_figure(
    result: HeatmapResult, thumbnail: np.ndarray | None = None, *, mode: str = "raw", colormap: str = "viridis", opacity: float = 0.6,
    blur_sigma: float = 0.0, threshold: float = DEFAULT_THRESHOLD,
):
    """A plotly figure in level-0 coordinates: slide (or blank) image + per-tile heatmap with hover.

    Hover shows the score and the tile's level-0 top-left corner; ``customdata`` holds ``[x, y, score]``
    so a click selection identifies the tile.
    """
    import plotly.graph_objects as go

    g = result.grid
    W0, H0 = g.width0, g.height0
    fig = go.Figure()
    if thumbnail is not None:
        th, tw = thumbnail.shape[:2]
        fig.add_trace(go.Image(z=thumbnail, x0=W0 / tw / 2, dx=W0 / tw, y0=H0 / th / 2, dy=H0 / th, hoverinfo="skip", name="slide"))
    values = mode_values(result.scores, mode, threshold=threshold)
    z = result.score_grid(values)
    if blur_sigma and blur_sigma > 0 and np.isfinite(z).any():
        from scipy.ndimage import gaussian_filter

        covered = np.isfinite(z)
        sigma = blur_sigma / g.stride0
        num = gaussian_filter(np.nan_to_num(z), sigma)
        den = gaussian_filter(covered.astype(np.float64), sigma)
        z = np.where(covered, num / np.maximum(den, 1e-9), np.nan)
    raw = result.score_grid()
    xs = np.arange(g.n_cols) * g.stride0
    ys = np.arange(g.n_rows) * g.stride0
    xx, yy = np.meshgrid(xs, ys)
    custom = np.stack([xx, yy, raw], axis=-1)
    zmin, zmax = 0.0, 1.0
    fig.add_trace(go.Heatmap(
        z=z, x=xs + g.tile0 / 2, y=ys + g.tile0 / 2, colorscale=colormap, zmin=zmin, zmax=zmax, opacity=opacity,
        customdata=custom, hoverongaps=False, colorbar={"title": {"text": "score" if mode == "raw" else mode}},
        hovertemplate="score %{customdata[2]:.3f}<br>x %{customdata[0]}, y %{customdata[1]} (level 0)<extra></extra>",
        name="heatmap",
    ))
    fig.update_xaxes(range=[0, W0], showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(range=[H0, 0], showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1)
    fig.update_layout(margin={"l": 0, "r": 0, "t": 10, "b": 0}, plot_bgcolor="white", dragmode="pan", height=640)
    return fig


# ----------------------------------------------------------------------------- high level

def thumbnail_and_mask(slide: Slide, masker: TissueMasker, cache=None) -> tuple[np.ndarray, TissueMask]:
    """The slide's thumbnail and tissue mask, cached with the tiles (a repeated run reads no pixels)."""
    key = make_key("heatmap-thumb/v2", slide.content_hash(), masker.cache_key())
    hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit["thumb"], TissueMask(hit["mask"], hit["sx"], hit["sy"], hit["threshold"])
    thumb, _ = slide.get_thumbnail(masker.max_side)
    mask = masker.fit_rgb(thumb, slide.dimensions[0] / thumb.shape[1], slide.dimensions[1] / thumb.shape[0])
    if cache is not None:
        cache.set(key, {"thumb": thumb, "mask": mask.mask, "sx": mask.scale_x, "sy": mask.scale_y, "threshold": mask.threshold})
    return thumb, mask


def compute_heatmap(
    slide_path: str | Path, *, model_id: str | None = None, models_dir: str | Path | None = None, level: int | None = None,
    tile_px: int | None = None, stride_fraction: float = 1.0, min_tissue: float = DEFAULT_MIN_TISSUE, batch_size: int = 32,
    user_mpp: float | None = None, use_mpp: bool = True, cache: bool = True, readers: int = 1,
    progress=None, cancelled=None, predictor=None,
) -> tuple[HeatmapResult, np.ndarray]:
    """Open a slide, tile it, score it; returns ``(result, thumbnail)``."""
    from engine.predict import TilePredictor
    from engine.registry import Registry

    t_start = time.perf_counter()
    if predictor is None:
        registry = Registry(models_dir) if models_dir else Registry()
        predictor = TilePredictor(registry.get(model_id), cache=None if cache else False, batch_size=batch_size)
    # load the model (seconds for a large one) while the slide is opened and its tissue detected
    load_error: list[BaseException] = []

    def load():
        try:
            predictor.model  # noqa: B018 - the property loads the model (on this thread)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            load_error.append(exc)

    loader = threading.Thread(target=load, name="heatmap-model-loader", daemon=True)
    loader.start()
    with open_slide(slide_path, user_mpp=user_mpp) as slide:
        grid = TileGrid.for_slide(slide, predictor.card, level=level, tile_px=tile_px, stride_fraction=stride_fraction, use_mpp=use_mpp)
        masker = TissueMasker()
        thumb, mask = thumbnail_and_mask(slide, masker, predictor.cache)
        run = HeatmapRun(predictor, masker=masker, min_tissue=min_tissue, readers=readers)
        loader.join()
        if load_error:
            raise load_error[0]
        if not run.select_tiles(slide, grid, mask)[0].size:
            raise InvalidInputError(
                f"No tissue found in '{Path(slide_path).name}': none of its {grid.n_tiles} tiles has {min_tissue:.0%} tissue or more.",
                "Check the tissue mask preview; lower the minimum tissue fraction if the tissue is very pale.",
                path=str(slide_path),
            )
        def on_wait(place: int) -> None:
            if cancelled is not None and cancelled():
                raise Cancelled("cancelled while waiting for an inference slot")
            if progress:
                progress(0, 0, wait_message(place))

        with inference_slot(on_wait=on_wait):  # one global limit on heavy inference (HISTODASH_MAX_CONCURRENT_INFERENCE)
            result = run.run(slide, grid, mask=mask, progress=progress, cancelled=cancelled)
        params = dict(result.params, level=level, tile_px=tile_px, stride_fraction=stride_fraction, user_mpp=user_mpp, use_mpp=use_mpp, mpp_source=slide.info.mpp_source)
        object.__setattr__(result, "params", params)
    result.timings["wall_s"] = time.perf_counter() - t_start  # open + thumbnail/mask + tiles (the model load included)
    return result, thumb


def run_job(params: dict, ctx) -> dict:
    """Job entry point (``engine.jobs``): compute a heatmap and write its exports into ``ctx.workdir``.

    ``params``: ``slide_path`` (required), ``model_id``, ``models_dir``, ``level``, ``tile_px``,
    ``stride_fraction``, ``min_tissue``, ``batch_size``, ``user_mpp``, ``use_mpp``, ``readers``, ``out_dir``.
    """
    keys = ("model_id", "models_dir", "level", "tile_px", "stride_fraction", "min_tissue", "batch_size", "user_mpp", "use_mpp", "readers")
    kwargs = {k: params[k] for k in keys if params.get(k) is not None}
    slide_path = params.get("slide_path")
    if not slide_path:
        raise InvalidInputError("The heatmap job needs a 'slide_path'.")
    out_dir = Path(params.get("out_dir") or ctx.workdir)
    ctx.log(f"heatmap of {loggable_name(Path(slide_path).name)} with model {kwargs.get('model_id') or '(default)'}")

    def progress(done, total, message=""):
        ctx.progress(done, total, message)

    def cancelled():
        return ctx.cancelled()

    try:
        result, thumb = compute_heatmap(slide_path, progress=progress, cancelled=cancelled, **kwargs)
    except Cancelled:
        ctx.log("cancelled; finished tiles are cached and a re-run resumes from them")
        ctx.raise_if_cancelled()
        raise
    paths = result.save(out_dir, thumbnail=thumb)
    (out_dir / "thumbnail.png").write_bytes(png_bytes(thumb))
    summary = result.summary()
    ctx.metric(**{k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    ctx.log(f"{result.n_tiles} tiles ({int(result.cached.sum())} from cache) in {result.timings['wall_s']:.1f} s")
    return {"out_dir": str(out_dir), "files": {k: str(v) for k, v in paths.items()}, "summary": summary, "n_tiles": result.n_tiles, "n_cached": int(result.cached.sum()), "seconds": result.timings["wall_s"]}


# ----------------------------------------------------------------------------- CLI

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model id (default: the configured default model)")
    p.add_argument("--models-dir", default=None, help="models folder (default: $HISTODASH_MODELS_DIR or ./models)")
    p.add_argument("--level", type=int, default=None, help="pyramid level to tile when the µm/px is unknown (default 0)")
    p.add_argument("--tile-px", type=int, default=None, help="tile side at --level (default: the model's input size)")
    p.add_argument("--stride", type=float, default=1.0, help="stride as a fraction of the tile (1 = no overlap)")
    p.add_argument("--min-tissue", type=float, default=DEFAULT_MIN_TISSUE, help="minimum tissue fraction of a scored tile")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px when the slide does not say")
    p.add_argument("--ignore-mpp", action="store_true", help="tile by --level even when µm/px are known")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--readers", type=int, default=1, help="tile reader threads")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the tile cache")
    p.add_argument("-q", "--quiet", action="store_true")


def _kwargs(args) -> dict:
    return {
        "model_id": args.model, "models_dir": args.models_dir, "level": args.level, "tile_px": args.tile_px,
        "stride_fraction": args.stride, "min_tissue": args.min_tissue, "user_mpp": args.mpp, "use_mpp": not args.ignore_mpp,
        "batch_size": args.batch_size, "cache": not args.no_cache, "readers": args.readers,
    }


def _progress(args):
    def progress(done, total, message=""):
        if not args.quiet and sys.stderr.isatty():
            print(f"\r{done}/{total} tiles" if total else f"\r{message}", end="", file=sys.stderr, flush=True)
    return progress


def _cmd_heatmap(args: argparse.Namespace) -> int:
    out = Path(args.out or (Path(args.slide).stem + "_heatmap"))
    result, thumb = compute_heatmap(args.slide, progress=_progress(args), **_kwargs(args))
    result.save(out, thumbnail=thumb)
    if not args.quiet:
        s = result.summary()
        print(
            f"\n{result.slide_name}: {result.n_tiles} tissue tiles of {result.grid.n_tiles} ({int(result.cached.sum())} cached) "
            f"in {result.timings['wall_s']:.1f} s; mean score {s['mean_score'] if s['mean_score'] is None else round(s['mean_score'], 4)}; wrote {out}/",
            file=sys.stderr,
        )
    return 0


def cohort_scores(slide_dir: str | Path, *, progress=None, **kwargs) -> pd.DataFrame:
    """One row per slide of a folder (recursive): summary statistics, or the error that stopped it."""
    from engine.slides import SlideLibrary

    library = SlideLibrary(Path(slide_dir))
    entries = list(library.walk())
    if not entries:
        raise InvalidInputError(f"No slides found in '{slide_dir}'.")
    rows = []
    for i, entry in enumerate(entries):
        row = {"slide": entry.relpath}
        try:
            result, _ = compute_heatmap(library.resolve(entry.relpath), **kwargs)
            summary = result.summary()
            row.update({k: v for k, v in summary.items() if k not in ("slide",)})
            row["error"] = None
        except HistoDashError as err:
            row["error"] = str(err)
        rows.append(row)
        if progress:
            progress(i + 1, len(entries), entry.relpath)
    return pd.DataFrame(rows)


def _cmd_cohort(args: argparse.Namespace) -> int:
    frame = cohort_scores(args.slide_dir, **_kwargs(args))
    safe_csv(frame, args.out)  # slide names are user text: escaped for spreadsheets
    if not args.quiet:
        bad = int(frame["error"].notna().sum())
        print(f"{len(frame)} slides scored ({bad} with errors); wrote {args.out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heatmap", help="score a whole slide tile by tile and write tiles.csv, heatmap.png, tiles.geojson, summary.json")
    p.add_argument("slide", metavar="SLIDE", help="slide file (any OpenSlide format, or a plain image)")
    p.add_argument("--out", default=None, help="output folder (default: <slide>_heatmap)")
    _add_common(p)
    p.set_defaults(func=_cmd_heatmap)
    c = sub.add_parser("cohort-scores", help="score every slide of a folder into one table (input of the survival page)")
    c.add_argument("slide_dir", metavar="SLIDE_DIR")
    c.add_argument("--out", required=True, help="CSV file to write")
    _add_common(c)
    c.set_defaults(func=_cmd_cohort)


