"""Cohort benchmark: the same cohort on the embedded backend and on a two-node Ray cluster on this machine.

    python bench/cohort.py [--quick]

Cohort: generated slides of LC25000 patches (engine.cohort.synthetic.write_cohort; 224 px tiles, one patch per
tile), the default model (lc25000-lung-cnn) for scores and features, K = 50 clusters. Each run starts with an
empty cache and store.

(a) tiles/s: tissue tiles ÷ the scoring phase's wall time (executor run; "steady" leaves out the workers' start:
    TensorFlow import + model load), and the whole cohort's wall time (planning + scoring + clusters + files).
(b) CPU-seconds per tile: local = this process's CPU (getrusage) over the whole cohort; Ray = the CPU of every
    process of both nodes (raylet, GCS, dashboard, agents, workers) and of the job's driver, sampled from /proc
    every 0.25 s over the whole job (a process's last sample counts when it ends between two), with the nodes'
    idle CPU rate (measured for 10 s before) subtracted as "above idle". "workers" = the tile workers' own CPU
    while scoring (process time inside TileWorker.score) in both cases. Overhead = Ray ÷ local − 1 (goal ≤ 10 %).
(c) node loss: node 2 killed (SIGKILL to its process group) once the first chunks are back (both workers busy); time until the
    driver has requeued its chunks, and the cohort's wall time against the run without a kill. Health checks
    as in tests/ray_cluster.py (a silent node is dead after about 3 s; Ray's default is about 15 s).

Writes bench/results/cohort.json and bench/results/cohort.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("HISTODASH_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
PATTERN = r"^(P\d+)_"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[int, float] | None:
    """``(process group, CPU seconds)`` of a live process, None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / TICK


class GroupCPU:
    """CPU seconds of every process in some process groups (+ extra pids), sampled in a thread."""

    def __init__(self, pgids: set[int], period: float = 0.25):
        self.pgids, self.period = set(pgids), period
        self.extra: set[int] = set()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            got = proc_cpu(int(entry))
            if got is None:
                continue
            pgid, cpu = got
            if pgid in self.pgids or int(entry) in self.extra or pgid in self.extra:
                self.first.setdefault(int(entry), cpu)
                self.last[int(entry)] = cpu

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period)

    def __enter__(self) -> GroupCPU:
        self._sample()
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.monotonic() - self.started

    @property
    def cpu_s(self) -> float:
        """CPU used during the window (processes already running at the start count from then)."""
        return sum(self.last[p] - self.first.get(p, 0.0) for p in self.last)


def make_cohort(root: Path, quick: bool) -> dict:
    from engine.cohort.synthetic import load_patches, write_cohort

    n, side = (12, 4) if quick else (40, 6)
    return write_cohort(root / "data", load_patches(SHARED / "lc25000-lung-224"), n, rows=side, cols=side, seed=7)


def params_for(data: dict, k: int) -> dict:
    return {"slide_dir": data["slide_dir"], "patient_pattern": PATTERN, "clinical": data["clinical"], "tile_px": 224, "clusters": k,
            "chunk_tiles": 64, "batch_size": 32}


def run_local(data: dict, root: Path, k: int) -> dict:
    from engine.cohort.pipeline import run_cohort

    os.environ["HISTODASH_CACHE_DIR"] = str(root / "cache-local")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    manifest = run_cohort(params_for(data, k), root / "out-local")
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    ex = manifest["executor"]
    n = manifest["n_tiles"]
    return {"n_tiles": n, "wall_s": wall, "score_s": manifest["timings"]["score_s"], "worker_start_s": ex.get("worker_start_s", 0.0),
            "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), "worker_cpu_s": ex["worker_cpu_s"], "timings": manifest["timings"]}


def run_ray(cluster, data: dict, root: Path, k: int, *, name: str, kill_node2: bool = False, idle_rate: float = 0.0) -> dict:
    from engine.jobs import _read_json
    from engine.ray_runner import RayRunner

    os.environ["HISTODASH_CACHE_DIR"] = str(root / f"cache-{name}")
    runner = RayRunner(cluster.jobs_address, root=root / "jobs")
    killed_at = None
    pgids = {cluster.head.pid, cluster.node2.pid}
    with GroupCPU(pgids) as cpu:
        t0 = time.perf_counter()
        job_id = runner.submit("cohort", dict(params_for(data, k), out_dir=str(root / f"out-{name}"), start_together_s=600))
        while (rec := runner.get(job_id)).active:
            st = _read_json(root / "jobs" / job_id / "state.json", {}) or {}
            if st.get("pid"):
                cpu.extra.add(int(st["pid"]))  # the driver runs in a session of its own
            p = rec.progress or {}
            if kill_node2 and killed_at is None and p.get("done", 0) > 0 and p.get("done", 0) < 0.5 * p.get("total", 0):  # both workers busy
                cluster.kill_node2()
                killed_at, killed_done = time.time(), p.get("done")
            time.sleep(0.2)
        wall = time.perf_counter() - t0
    if rec.state != "succeeded":
        raise RuntimeError(f"{name}: {rec.state} {rec.error}\n{runner.log_tail(job_id, 60)}")
    manifest = json.loads((root / f"out-{name}" / "manifest.json").read_text())
    ex = manifest["executor"]
    n = manifest["n_tiles"]
    out = {"n_tiles": n, "wall_s": wall, "score_s": manifest["timings"]["score_s"], "workers_up_s": ex.get("workers_up_s", 0.0),
           "workers": ex["workers"], "nodes": ex["nodes"], "cpu_s": cpu.cpu_s, "cpu_above_idle_s": cpu.cpu_s - idle_rate * cpu.seconds,
           "worker_cpu_s": ex["worker_cpu_s"], "timings": manifest["timings"], "requeued_chunks": ex["requeued_chunks"],
           "lost_nodes": len(ex["lost_nodes"])}
    if killed_at is not None:
        out["killed_at_done"] = killed_done
        out["detect_s"] = (ex["node_lost_at"] - killed_at) if ex.get("node_lost_at") else None
        out["requeue_s"] = (ex["first_requeue_at"] - killed_at) if ex.get("first_requeue_at") else None
    return out


def idle_cpu_rate(cluster, seconds: float = 10.0) -> float:
    with GroupCPU({cluster.head.pid, cluster.node2.pid}) as cpu:
        time.sleep(seconds)
    return cpu.cpu_s / cpu.seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smaller cohort (a smoke run, not for the record)")
    ap.add_argument("--clusters", type=int, default=50)
    args = ap.parse_args()
    if not (SHARED / "lc25000-lung-224").exists():
        print(f"shared data not found at {SHARED} (set HISTODASH_SHARED_DATA)", file=sys.stderr)
        return 2
    from tests.ray_cluster import LocalRayCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    os.environ["HISTODASH_HOME"] = str(tmp / "home")
    data = make_cohort(tmp, args.quick)
    print("local …", flush=True)
    local = run_local(data, tmp, args.clusters)
    print(json.dumps(local, default=str), flush=True)
    with LocalRayCluster(num_cpus=1) as cluster:
        start = dict(cluster.timings)
        idle = idle_cpu_rate(cluster)
        print(f"ray (idle {idle:.3f} CPU) …", flush=True)
        ray = run_ray(cluster, data, tmp, args.clusters, name="ray", idle_rate=idle)
        print(json.dumps(ray, default=str), flush=True)
        print("ray, node 2 killed …", flush=True)
        kill = run_ray(cluster, data, tmp, args.clusters, name="kill", kill_node2=True, idle_rate=idle)
        print(json.dumps(kill, default=str), flush=True)
    import pandas as pd

    same = all(pd.read_csv(tmp / f"out-{a}" / "patients.csv").equals(pd.read_csv(tmp / "out-local" / "patients.csv")) for a in ("ray", "kill"))
    n = local["n_tiles"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_at_end": os.getloadavg()[0]},
        "cohort": {"patients": int(len(data["patients"])), "tiles": n, "clusters": args.clusters, "quick": args.quick},
        "cluster_start_s": start, "idle_cluster_cpu": idle, "local": local, "ray": ray, "ray_node2_killed": kill,
        "patient_tables_identical": same,
        "derived": {
            "local_tiles_per_s": n / local["score_s"], "local_tiles_per_s_steady": n / max(1e-9, local["score_s"] - local["worker_start_s"]),
            "ray_tiles_per_s": n / ray["score_s"], "ray_tiles_per_s_steady": n / max(1e-9, ray["score_s"] - ray["workers_up_s"]),
            "local_cpu_s_per_tile": local["cpu_s"] / n, "ray_cpu_s_per_tile": ray["cpu_s"] / n, "ray_cpu_above_idle_s_per_tile": ray["cpu_above_idle_s"] / n,
            "local_worker_cpu_s_per_tile": local["worker_cpu_s"] / n, "ray_worker_cpu_s_per_tile": ray["worker_cpu_s"] / n,
            "overhead_total": ray["cpu_s"] / local["cpu_s"] - 1, "overhead_above_idle": ray["cpu_above_idle_s"] / local["cpu_s"] - 1,
            "overhead_workers": ray["worker_cpu_s"] / local["worker_cpu_s"] - 1,
            "kill_extra_wall_s": kill["wall_s"] - ray["wall_s"],
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cohort.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "cohort.md").write_text(markdown(report))
    print((RESULTS / "cohort.md").read_text())
    return 0


def markdown(r: dict) -> str:
    d, lo, ra, ki = r["derived"], r["local"], r["ray"], r["ray_node2_killed"]
    pct = lambda v: f"{v * 100:+.0f} %"  # noqa: E731
    return f"""# Cohort benchmark (bench/cohort.py)

Cohort: {r['cohort']['patients']} generated slides of LC25000 patches, {r['cohort']['tiles']} tissue tiles of 224 px, default model
(scores + penultimate-layer features), K = {r['cohort']['clusters']}; empty cache and store for every run. Machine: {r['machine']['cpus']} CPUs,
load average {r['machine']['load_avg_1m_at_end']:.1f} at the end (shared machine: ±30 % and more). Ray: two nodes on this machine
(`--num-cpus=1` each: one tile worker per node); the embedded run is one process using both cores.

| | embedded (local) | Ray, 2 nodes | Ray, node 2 killed |
|---|---|---|---|
| tiles/s, scoring phase | {d['local_tiles_per_s']:.1f} | {d['ray_tiles_per_s']:.1f} | {ki['n_tiles'] / ki['score_s']:.1f} |
| tiles/s, scoring after the workers are up | {d['local_tiles_per_s_steady']:.1f} | {d['ray_tiles_per_s_steady']:.1f} | |
| whole cohort wall time (s) | {lo['wall_s']:.1f} | {ra['wall_s']:.1f} | {ki['wall_s']:.1f} |
| CPU-s per tile, everything | {d['local_cpu_s_per_tile']:.4f} | {d['ray_cpu_s_per_tile']:.4f} ({pct(d['overhead_total'])}) | |
| CPU-s per tile, above the idle cluster | | {d['ray_cpu_above_idle_s_per_tile']:.4f} ({pct(d['overhead_above_idle'])}) | |
| CPU-s per tile, tile workers while scoring | {d['local_worker_cpu_s_per_tile']:.4f} | {d['ray_worker_cpu_s_per_tile']:.4f} ({pct(d['overhead_workers'])}) | |
| chunks requeued / nodes lost | | {ra['requeued_chunks']} / {ra['lost_nodes']} | {ki['requeued_chunks']} / {ki['lost_nodes']} |

Patient tables of the three runs identical: **{r['patient_tables_identical']}**. Idle cluster: {r['idle_cluster_cpu']:.3f} CPU-s per second
(raylets, GCS, dashboard, agents). Cluster start: head {r['cluster_start_s'].get('head_s', 0):.0f} s, node 2 {r['cluster_start_s'].get('node2_s', 0):.0f} s.

Node loss: node 2 killed once the first chunks were back (both workers busy); its loss was seen {_s(ki.get('detect_s'))} later and its chunks were
requeued {_s(ki.get('requeue_s'))} after the kill (health checks tightened to about 3 s, as in the tests; Ray's default
is about 15 s). The killed run took {d['kill_extra_wall_s']:+.1f} s against the run without a kill, and gave the same table.

## Projection for N machines

What scales: the tile work — reading tiles from the shared slide mount, the model forward pass and the feature vectors —
runs in one actor per worker slot and needs nothing from the head but chunk descriptions (slide path + positions) and, once,
the model weights; results are small (3 probabilities + a 256-float16 feature vector per tile, ~0.5 kB). So scoring scales
with worker slots until the shared filesystem's read bandwidth or the head's result intake is the limit: at ~0.5 kB and
~{1000 * d['local_cpu_s_per_tile']:.0f} CPU-ms per tile on this CPU, one head core can take the results of many workers.

What stays on the head: planning (one thumbnail + tissue mask per slide, cached), the cache/store lookups and writes
(diskcache/SQLite on the head's local disk, npz parts per chunk), the clustering (MiniBatchKMeans on at most 200 000 discovery
tiles: seconds) and the tables. Per slide that is ~{r['local']['timings']['plan_s'] / r['cohort']['patients']:.2f} s of planning here
(mostly the tissue mask), so for N machines the cohort time is about planning(slides) + tiles ÷ (N × slots × per-slot rate) +
clustering; planning becomes the bottleneck for many small slides, and could move to the workers (not done).
Ray's own cost per node is its daemons' idle CPU (above) and ~20–40 ms per chunk of RPC/serialisation; with 64-tile chunks that
is well under a tenth of the chunk's compute on a CPU worker, less on a GPU one if chunks are made larger (`--chunk-tiles`).
"""


def _s(v) -> str:
    return "—" if v is None else f"{v:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
