"""Where a cohort's chunks are scored: in this process (:class:`LocalExecutor`) or on a Ray cluster
(:class:`engine.cohort.ray_executor.RayExecutor`). Both take the same chunk list and call back as
results arrive, so the pipeline (:mod:`engine.cohort.pipeline`) is one code path.

``run(jobs, on_result, on_error, cancelled)``: ``on_result(job, result)`` for every chunk (once, in
any order); ``on_error(job, exc)`` for a chunk whose slide failed with a user error (returns True
when handled: that slide is left out, the others go on); ``cancelled()`` is polled between chunks and
raises the cancellation. Returns statistics (workers, nodes, requeued chunks, CPU seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.cohort.worker import ChunkJob, ChunkResult, ModelSpec, TileWorker
from engine.errors import Cancelled, HistoDashError


class LocalExecutor:
    """One :class:`TileWorker` in this process (the embedded runner's job process, or the CLI)."""

    name = "local"

    def __init__(self, score: ModelSpec, features: ModelSpec | None = None, *, batch_size: int = 32, decode_workers: int = 2):
        self.args = (score, features)
        self.batch_size = batch_size
        self.decode_workers = decode_workers

    def run(self, jobs: list[ChunkJob], on_result: Callable[[ChunkJob, ChunkResult], None],
            on_error: Callable[[ChunkJob, BaseException], bool] | None = None, cancelled: Callable[[], bool] | None = None) -> dict:
        stats = {"backend": self.name, "workers": 1, "chunks": 0, "requeued_chunks": 0, "lost_nodes": [], "worker_cpu_s": 0.0, "nodes": {}}
        if not jobs:
            return stats
        t0 = time.perf_counter()
        worker = TileWorker(*self.args, batch_size=self.batch_size, decode_workers=self.decode_workers)
        stats["worker_start_s"] = time.perf_counter() - t0
        info = worker.describe()
        skip: set[int] = set()
        try:
            for job in jobs:
                if cancelled is not None and cancelled():
                    raise Cancelled(f"cancelled after {stats['chunks']} of {len(jobs)} chunks")
                if job.slide in skip:
                    continue
                try:
                    result = worker.score(job)
                except HistoDashError as exc:
                    if on_error is not None and on_error(job, exc):
                        skip.add(job.slide)
                        continue
                    raise
                result.node = info
                stats["chunks"] += 1
                stats["worker_cpu_s"] += result.cpu_s
                stats["nodes"][info["host"]] = stats["nodes"].get(info["host"], 0) + job.n
                on_result(job, result)
        finally:
            worker.close()
        return stats
