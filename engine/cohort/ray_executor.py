"""A cohort's chunks on a Ray cluster: one :class:`~engine.cohort.worker.TileWorker` actor per worker slot.

Runs in the job's driver, on the head, next to the cache (it never leaves the head). Each actor loads the
model once (its weights come through the object store, so workers need not have the head's registry)
and reads the tiles of the chunks it is given from the slide library every node mounts at the same path.
The driver keeps ``depth`` chunks in flight per actor and hands out the next as results come back, so
faster nodes take more. What can go wrong, and what happens:

* an actor process dies on a live node → Ray restarts it (``max_restarts``) and retries its calls
  (``max_task_retries``);
* a node is lost (its raylet stops answering: the GCS marks it dead after its health checks) → the
  driver sees it in ``ray.nodes()`` or in the actors' errors, kills that node's actors for good,
  puts their chunks back at the front of the queue and starts replacement actors, which Ray places
  wherever there is room (they wait for a node when there is none). Chunks are identified, so a chunk
  answered twice is taken once. Ray Data is not used: its actor pool hangs after a node loss without
  an autoscaler;
* cancel → every actor is killed at once (remote work stops) and the driver raises the cancellation.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.cohort.worker import ChunkJob, ChunkResult, ModelSpec, TileWorker
from engine.errors import Cancelled, HistoDashError, JobError

#: after the work, how long to wait for Ray to say whether the node of a lost worker died (Ray notices a dead node in
#: about 15 s by default; only runs that lost a worker wait, and only until every such node is known dead or this passes)
LOST_NODE_WAIT_S = 20.0


@dataclass
class _Slot:
    actor: object
    ready: object  # ObjectRef of describe(), until the actor is up
    started: float
    info: dict | None = None
    inflight: set = field(default_factory=set)
    dead: bool = False

    @property
    def node(self) -> str | None:
        return (self.info or {}).get("node_id")


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's exceptions that mean "the worker (or its node) is gone", not "the work failed"."""
    import ray.exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError", "LocalRayletDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class RayExecutor:
    """Chunks on Ray actors.

    Args:
        score, features: the models (shipped to the actors).
        workers: number of actors (default: as many as the eligible nodes' CPUs allow at ``num_cpus`` each).
        num_cpus, num_gpus: each actor's share (a GPU node: ``num_gpus=1``).
        pin: a custom resource the actors must run where it exists (e.g. ``"node2"``, ``"gpu-pool"``).
        depth: chunks in flight per actor; poll_s: how often the driver looks at results, cancel and nodes.
        worker_wait_s: give up when no actor has been able to start for this long while work waits.
        start_together_s: wait up to this long for all the first actors to be up before handing out work (0: start
            with the first one up). Benchmarks and tests use it so every node takes part from the start.
    """

    name = "ray"

    def __init__(self, score: ModelSpec, features: ModelSpec | None = None, *, batch_size: int = 32, workers: int | None = None,
                 num_cpus: float = 1.0, num_gpus: float = 0.0, pin: str | None = None, depth: int = 2, poll_s: float = 0.25,
                 max_restarts: int = 2, max_task_retries: int = 2, worker_wait_s: float = 600.0, decode_workers: int = 2,
                 start_together_s: float = 0.0):
        self.score, self.features = score, features
        self.batch_size = batch_size
        self.workers = workers
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        self.pin = pin
        self.depth = max(1, int(depth))
        self.poll_s = poll_s
        self.max_restarts, self.max_task_retries = int(max_restarts), int(max_task_retries)
        self.worker_wait_s = float(worker_wait_s)
        self.decode_workers = decode_workers
        self.start_together_s = float(start_together_s)

    # -- actors
    def _n_workers(self) -> int:
        import ray

        if self.workers:
            return max(1, int(self.workers))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if self.pin:
            nodes = [n for n in nodes if self.pin in (n.get("Resources") or {})]
        if not nodes:
            raise JobError(f"No live Ray node offers the resource '{self.pin}'." if self.pin else "The Ray cluster has no live node.")
        if self.num_gpus > 0:
            total = sum(float((n.get("Resources") or {}).get("GPU", 0)) for n in nodes) / self.num_gpus
        else:
            total = sum(float((n.get("Resources") or {}).get("CPU", 0)) for n in nodes) / max(self.num_cpus, 1e-9)
        if total < 1:
            raise JobError("The Ray cluster has no CPU (or GPU) for a tile worker.",
                           "Start workers with --num-cpus (the head usually runs with --num-cpus=0).")
        return int(total)

    def _new_actor(self, cls, args) -> _Slot:
        options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": self.max_restarts,
                   "max_task_retries": self.max_task_retries}
        if self.pin:
            options["resources"] = {self.pin: 0.001}
        threads = max(1, round(self.num_cpus)) if self.num_gpus == 0 else None
        actor = cls.options(**options).remote(*args, batch_size=self.batch_size, decode_workers=self.decode_workers, threads=threads)
        return _Slot(actor, actor.describe.remote(), time.monotonic())

    # -- the loop
    def run(self, jobs: list[ChunkJob], on_result: Callable[[ChunkJob, ChunkResult], None],
            on_error: Callable[[ChunkJob, BaseException], bool] | None = None, cancelled: Callable[[], bool] | None = None,
            log: Callable[[str], None] | None = None) -> dict:
        import ray

        say = log or (lambda _m: None)
        stats = {"backend": self.name, "workers": 0, "chunks": 0, "requeued_chunks": 0, "lost_nodes": [], "replaced_workers": 0,
                 "worker_cpu_s": 0.0, "nodes": {}, "node_lost_at": None, "first_requeue_at": None}
        if not jobs:
            return stats
        lost = _lost_errors()
        cls = ray.remote(TileWorker)
        weights = (ray.put(self.score.files()),
                   None if self.features is None or self.features.sha256 == self.score.sha256 else ray.put(self.features.files()))
        args = (self.score, self.features, weights[0], weights[1])
        n = min(self._n_workers(), len(jobs))
        stats["workers"] = n
        slots = [self._new_actor(cls, args) for _ in range(n)]
        say(f"{n} tile worker(s) on the cluster" + (f" (pinned to '{self.pin}')" if self.pin else ""))
        queue = deque(jobs)
        by_id = {j.id: j for j in jobs}
        inflight: dict = {}  # ObjectRef -> (job id, slot)
        finished: set[str] = set()
        skipped: set[int] = set()
        last_node_check = 0.0
        t_start = time.monotonic()
        last_up = time.monotonic()

        def dead_nodes() -> set[str]:
            return {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}

        def note_lost(node: str) -> None:
            if node not in stats["lost_nodes"]:
                stats["lost_nodes"].append(node)
                stats["node_lost_at"] = stats["node_lost_at"] or time.time()

        def retire(slot: _Slot, why: str) -> None:
            """The slot's actor is gone for good: its chunks back to the queue, a new actor in its place."""
            if slot.dead:
                return
            slot.dead = True
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
            back = [inflight.pop(ref)[0] for ref in list(slot.inflight) if ref in inflight]
            for job_id in reversed(back):
                if job_id not in finished:
                    queue.appendleft(by_id[job_id])
                    stats["requeued_chunks"] += 1
                    stats["first_requeue_at"] = stats["first_requeue_at"] or time.time()
            slot.inflight.clear()
            say(f"tile worker lost ({why}); {len(back)} chunk(s) handed to the others")
            if stats["replaced_workers"] >= 3 * n + 5:
                raise JobError(f"Tile workers keep dying on the Ray cluster ({stats['replaced_workers']} replaced; last: {why}).",
                               "See the job log: the model may not load on the workers, or they run out of memory.")
            slots.append(self._new_actor(cls, args))
            stats["replaced_workers"] += 1

        try:
            while any(j.id not in finished and j.slide not in skipped for j in jobs):
                if cancelled is not None and cancelled():
                    raise Cancelled(f"cancelled after {stats['chunks']} of {len(jobs)} chunks")
                # actors coming up
                for slot in slots:
                    if slot.dead or slot.info is not None:
                        continue
                    ready, _ = ray.wait([slot.ready], timeout=0)
                    if ready:
                        try:
                            slot.info = ray.get(slot.ready)
                        except lost as exc:
                            retire(slot, _short(exc))
                        except Exception as exc:  # noqa: BLE001 - e.g. the model cannot be loaded there: fatal
                            raise _unwrap(exc) from None
                live = [s for s in slots if not s.dead and s.info is not None]
                if live:
                    last_up = time.monotonic()
                elif time.monotonic() - last_up > self.worker_wait_s:
                    raise JobError(f"No tile worker could start on the Ray cluster within {self.worker_wait_s:.0f} s.",
                                   "Check that the workers have free CPUs (or the pinned resource) and the same HistoDash image.")
                # hand out work (after the first actors are all up, or waited long enough for them)
                if self.start_together_s and not stats.get("started_at"):
                    if len(live) < n and time.monotonic() - t_start < self.start_together_s:
                        live = []
                    else:
                        stats["started_at"] = time.time()
                        stats["workers_up_s"] = time.monotonic() - t_start
                for slot in live:
                    while len(slot.inflight) < self.depth and queue:
                        job = queue.popleft()
                        if job.id in finished or job.slide in skipped:
                            continue
                        ref = slot.actor.score.remote(job)
                        inflight[ref] = (job.id, slot)
                        slot.inflight.add(ref)
                # results
                if inflight:
                    done, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
                else:
                    time.sleep(self.poll_s)
                    done = []
                for ref in done:
                    if ref not in inflight:
                        continue
                    job_id, slot = inflight.pop(ref)
                    slot.inflight.discard(ref)
                    job = by_id[job_id]
                    try:
                        result = ray.get(ref)
                    except lost as exc:
                        queue.appendleft(job)
                        stats["requeued_chunks"] += 1
                        stats["first_requeue_at"] = stats["first_requeue_at"] or time.time()
                        retire(slot, _short(exc))
                        continue
                    except Exception as exc:  # noqa: BLE001 - the work itself failed
                        cause = _unwrap(exc)
                        if isinstance(cause, HistoDashError) and on_error is not None and on_error(job, cause):
                            skipped.add(job.slide)
                            continue
                        raise cause from None
                    if job_id in finished or job.slide in skipped:
                        continue
                    finished.add(job_id)
                    result.node = slot.info or {}
                    stats["chunks"] += 1
                    stats["worker_cpu_s"] += result.cpu_s
                    node = result.node.get("node_id", "?")
                    stats["nodes"][node] = stats["nodes"].get(node, 0) + job.n
                    on_result(job, result)
                # lost nodes (a dead node's calls may never return on their own)
                if time.monotonic() - last_node_check > 1.0:
                    last_node_check = time.monotonic()
                    dead = dead_nodes()
                    for slot in list(slots):
                        if slot.node in dead:  # retired slots too: their actor's death may have been seen first
                            note_lost(slot.node)
                            retire(slot, f"node {slot.node[:8]} is dead")
            # A worker lost to a dead node can be requeued (its call failed) before Ray declares the node dead, and the
            # work may end first: ask Ray a little longer about the nodes of the workers that were lost.
            suspects = {slot.node for slot in slots if slot.dead and slot.node} - set(stats["lost_nodes"])
            until = time.monotonic() + LOST_NODE_WAIT_S
            while suspects and time.monotonic() < until:
                dead = dead_nodes()
                for node in suspects & dead:
                    note_lost(node)
                suspects -= dead
                if suspects:
                    time.sleep(0.5)
        finally:
            for slot in slots:
                with contextlib.suppress(Exception):
                    ray.kill(slot.actor, no_restart=True)
        stats["run_s"] = time.monotonic() - t_start
        return stats


def _unwrap(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray's ``RayTaskError``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return type(exc).__name__ + (f": {text[:limit]}" if text else "")
