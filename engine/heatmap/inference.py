"""Streaming, cached, batched inference of a tile model over a slide: :class:`HeatmapRun`.

Reader threads read and prepare batches of tiles (:meth:`engine.predict.TilePredictor.prepare`) into a
bounded queue while the calling thread runs the model (:meth:`~engine.predict.TilePredictor.predict_batch`),
so decoding overlaps model compute and memory is bounded by ``queue_batches × batch_size`` tiles whatever
the slide size. Each tile's probabilities are cached under (slide content hash, level-0 location, tile
size, read level/size, model sha256, preprocessing), so an interrupted run resumes and a repeated one is
served from the cache. Cache writes happen on their own thread, off the model's critical path.

Only the predictor's public API is used: ``card``, ``cache``, ``batch_size``, ``prepare``,
``forward_batch``, ``score`` and ``preprocessing_key``. The forward pass also gives each tile
``in_domain``, ``domain_score`` and ``uncertainty`` (:mod:`engine.forward`), which become columns of
the result when the model has an out-of-domain detector / dropout.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.cache import make_key
from engine.errors import Cancelled, InvalidInputError
from engine.forward import EXTRA_FIELDS
from engine.heatmap.grid import TileGrid
from engine.heatmap.result import HeatmapResult, frozen
from engine.progress import Progress, Status, report, say
from engine.slides import Slide
from engine.tissue import DEFAULT_MIN_TISSUE, TissueMask, TissueMasker

CACHE_NAMESPACE = "heatmap-tile/v2"
#: per-tile outputs of the forward pass kept as result columns (when the model gives them)
TILE_EXTRAS = EXTRA_FIELDS

_SENTINEL = object()
#: tiles in the first batch of a stream: the model starts once these few are read, while the first full batch is
#: read, so the first scores come sooner. On 2 CPU cores it cut the model's wait on CMU-1-Small-Region from 34 to
#: 10 ms, but the decoding then competes with the model instead (in-run model time +30 ms): no net change there
#: (bench/heatmap.py); with an accelerator the reading overlaps for real.
FIRST_BATCH = 4


def batch_plan(n: int, batch_size: int, first: int = FIRST_BATCH) -> list[tuple[int, int]]:
    """``(start, stop)`` of the batches a stream of ``n`` tiles is scored in: a short first batch, then full ones."""
    if n <= 0:
        return []
    first = max(1, min(int(first), int(batch_size), n))
    return [(0, first)] + [(i, min(i + batch_size, n)) for i in range(first, n, batch_size)]


class HeatmapRun:
    """Streaming, cached, batched inference of a :class:`engine.predict.TilePredictor` over a slide.

    Args:
        predictor: model side, an :class:`engine.predict.TilePredictor` (None: only :meth:`select_tiles` is usable).
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
        mask = mask if mask is not None else self.masker.slide_mask(slide)
        x, y = grid.positions()
        frac = mask.fractions(x, y, grid.tile0, grid.tile0) if len(x) else np.zeros(0)
        keep = frac >= self.min_tissue if self.min_tissue > 0 else np.ones(len(x), bool)
        return x[keep], y[keep], frac[keep]

    def run(
        self, slide: Slide, grid: TileGrid, *, mask: TissueMask | None = None,
        progress: Progress | None = None, status: Status | None = None, cancelled: Callable[[], bool] | None = None,
    ) -> HeatmapResult:
        """Score every tissue tile; raises :class:`engine.errors.Cancelled` (after saving what was done to the cache).

        ``progress(done, total)`` counts tissue tiles (cached ones included); ``status(message)`` says
        how many came from the cache and when scoring is under way.
        """
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
        extras = {k: np.full(n, np.nan) for k in TILE_EXTRAS}
        cached = np.zeros(n, bool)
        keys = [self.tile_key(slide_hash, grid, x[i], y[i]) for i in range(n)]
        t0 = time.perf_counter()
        if cache is not None:
            for i, key in enumerate(keys):
                hit = cache.get(key)
                if hit is not None:
                    probs[i] = hit["probabilities"]
                    for k in TILE_EXTRAS:
                        if hit.get(k) is not None:
                            extras[k][i] = float(hit[k])
                    cached[i] = True
        t_lookup = time.perf_counter() - t0
        todo = np.flatnonzero(~cached)
        done = int(cached.sum())
        say(status, f"{done} of {n} tiles from the cache" if done else f"{n} tissue tiles to score")
        report(progress, done, n)
        t0 = time.perf_counter()
        t_model = 0.0
        if len(todo):
            say(status, f"scoring {len(todo)} tiles")
            t_model = self._stream(slide, grid, x, y, todo, keys, probs, extras, done, n, progress, cancelled)
        t_infer = time.perf_counter() - t0
        scores = np.array([pred.score(p) for p in probs]) if n else np.zeros(0)
        columns = {k: v for k, v in extras.items() if n and not np.isnan(v).all()}
        if "in_domain" in columns:
            columns["in_domain"] = columns["in_domain"] > 0.5
        return HeatmapResult(
            grid=grid, x=x, y=y, tissue=frac, probabilities=probs, scores=scores, cached=cached,
            classes=tuple(card.classes), model_id=card.id, model_sha256=card.weights_sha256, threshold=float(card.threshold),
            slide_name=slide.path.name, slide_hash=slide_hash,
            params=frozen(min_tissue=self.min_tissue, batch_size=pred.batch_size, readers=self.readers, preprocessing=pred.preprocessing_key(),
                          domain_threshold=(card.domain or {}).get("threshold"), normalization_warning=getattr(pred, "normalization_warning", None),
                          tissue=self.masker.cache_key()),
            timings=frozen(tissue_s=t_tissue, cache_lookup_s=t_lookup, inference_s=t_infer, model_s=t_model, total_s=time.perf_counter() - t_start,
                           n_scored_now=int(len(todo))),
            columns=columns,
        )

    def _stream(self, slide, grid, x, y, todo, keys, probs, extras, done, n, progress, cancelled) -> float:
        pred = self.predictor
        bs = pred.batch_size
        batches = [todo[a:b] for a, b in batch_plan(len(todo), bs)]
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
            return pred.prepare(rgb).tensor

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
                out = pred.forward_batch(tensors)
                t_model += time.perf_counter() - t0
                probs[idx] = out.probabilities
                for k in TILE_EXTRAS:
                    values = getattr(out, k)
                    if values is not None:
                        extras[k][idx] = values
                if writer_thread is not None:
                    writes.put([(keys[i], out.row(j)) for j, i in enumerate(idx)])
                done += len(idx)
                if progress is not None and (time.perf_counter() - t_last > 0.25 or done == n):
                    t_last = time.perf_counter()
                    progress(done, n)
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
