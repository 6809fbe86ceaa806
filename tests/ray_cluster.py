"""A real two-node Ray cluster on this machine, for tests and ``bench/cohort.py`` (no pytest here).

    cluster = LocalRayCluster(num_cpus=1).start()      # head ("head" resource) + node 2 ("node2" resource)
    cluster.jobs_address                              # http://127.0.0.1:<port>   (HISTODASH_RAY_ADDRESS)
    cluster.gcs_address                               # 127.0.0.1:<port>          (RAY_ADDRESS)
    cluster.kill_node2(); cluster.start_node2()
    cluster.stop()

Each node is one ``ray start --block`` process started in its own session, so the node — raylet, agents
(one process group) and worker processes (a group each, same session) — is stopped by those ids (``os.killpg`` and
the session's pids), never with ``ray stop`` (which would stop every Ray on the machine, other agents' included). Every port is a free
one picked here (GCS, dashboard, client server, node manager, object manager, agents, metrics, worker
range), so clusters of concurrent test runs do not collide, and the session folder is a fresh short
temporary folder (Unix socket paths are limited to 107 bytes).

Node 2 gets its own ``--dashboard-agent-listen-port``: without it its agent cannot bind (the head's
agent has the default port) and the Jobs API returns HTTP 500 for the logs of jobs running there.
Health checks are tightened (``RAY_health_check_*``: a dead node is noticed in about 3 s instead of 15 s)
so the node-loss test and benchmark do not wait for the default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))

#: GCS health checks of the nodes: a node that stops answering is marked dead after period × threshold.
HEALTH_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
              "RAY_health_check_initial_delay_ms": "1000"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now on 127.0.0.1."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port_range(size: int = 40, low: int = 20000, high: int = 60000) -> tuple[int, int]:
    """A run of ``size`` consecutive ports that are free now (for a node's worker ports)."""
    import random

    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        start = rng.randrange(low, high - size)
        ok = True
        for port in range(start, start + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + size - 1
    raise RuntimeError("no free port range for Ray workers")


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return Path(RAY).exists()


class LocalRayCluster:
    """Head + one worker node on 127.0.0.1, each ``num_cpus`` CPUs, stopped by process-group id.

    Args:
        num_cpus: CPUs each node offers to Ray.
        object_store_bytes: object store of each node (small: the machine is shared).
        env: extra environment for both nodes (e.g. ``PYTHONPATH``, ``HISTODASH_*``).
        log: where the nodes' stdout/stderr go (default: files in the session folder).
    """

    def __init__(self, num_cpus: int = 1, *, object_store_bytes: int = 300_000_000, env: dict | None = None, health_env: bool = True):
        self.num_cpus = int(num_cpus)
        self.object_store_bytes = int(object_store_bytes)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="hdray-", dir="/tmp"))
        self.env = dict(os.environ)
        self.env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
                         "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_DEDUP_LOGS": "0"})
        self.env.pop("RAY_ADDRESS", None)
        if health_env:
            self.env.update(HEALTH_ENV)
        self.env.update(env or {})
        (self.gcs_port, self.dashboard_port, self.client_port, self.head_nm, self.head_om, self.head_agent, self.head_agent_grpc,
         self.head_metrics, self.head_rtenv, self.n2_nm, self.n2_om, self.n2_agent, self.n2_agent_grpc, self.n2_metrics, self.n2_rtenv) = free_ports(15)
        self.head: subprocess.Popen | None = None
        self.node2: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}

    # -- addresses
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def jobs_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- lifecycle
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.temp_dir / f"{name}.out", "ab")  # noqa: SIM115 - kept open by the child
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=self.env, cwd=str(ROOT),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 180.0) -> LocalRayCluster:
        t0 = time.monotonic()
        lo, hi = free_port_range()
        self.head = self._spawn("head", [
            "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}", f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={self.object_store_bytes}", "--resources=" + json.dumps({"head": 1}),
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self.client_port}", f"--node-manager-port={self.head_nm}", f"--object-manager-port={self.head_om}",
            f"--dashboard-agent-listen-port={self.head_agent}", f"--dashboard-agent-grpc-port={self.head_agent_grpc}",
            f"--metrics-export-port={self.head_metrics}", f"--runtime-env-agent-port={self.head_rtenv}",
            f"--min-worker-port={lo}", f"--max-worker-port={hi}", f"--temp-dir={self.temp_dir}",
        ])
        try:
            self._wait_nodes(1, timeout)
            self._wait_jobs_api(timeout - (time.monotonic() - t0))
            self.timings["head_s"] = time.monotonic() - t0
            self.start_node2(timeout=max(30.0, timeout - (time.monotonic() - t0)))
        except BaseException:
            self.stop()
            raise
        self.timings["cluster_s"] = time.monotonic() - t0
        return self

    def start_node2(self, timeout: float = 120.0) -> None:
        """Start (or restart after :meth:`kill_node2`) the second node; returns once the cluster sees it."""
        t0 = time.monotonic()
        before = {(n.get("raylet") or {}).get("nodeId") for n in self._nodes()}  # a killed node 2 may still look alive for a while
        lo, hi = free_port_range()
        self.node2 = self._spawn("node2", [
            f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={self.object_store_bytes}", "--resources=" + json.dumps({"node2": 1}),
            f"--node-manager-port={self.n2_nm}", f"--object-manager-port={self.n2_om}",
            f"--dashboard-agent-listen-port={self.n2_agent}", f"--dashboard-agent-grpc-port={self.n2_agent_grpc}",
            f"--metrics-export-port={self.n2_metrics}", f"--runtime-env-agent-port={self.n2_rtenv}",
            f"--min-worker-port={lo}", f"--max-worker-port={hi}",
        ])
        self._wait_nodes(1, timeout, want_resource="node2", exclude=before)
        self.timings["node2_s"] = time.monotonic() - t0

    def kill_node2(self) -> None:
        """SIGKILL node 2's whole session (raylet, agents, workers): a node lost, as when a machine dies."""
        if self.node2 is not None:
            _killpg(self.node2, signal.SIGKILL)
            self.node2 = None

    def stop(self) -> None:
        """Stop both nodes (their sessions' processes, by id) and remove the session folder."""
        for proc in (self.node2, self.head):
            if proc is not None:
                _killpg(proc, signal.SIGTERM, wait_s=10.0)
                _killpg(proc, signal.SIGKILL)
        self.node2 = self.head = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state
    def _nodes(self) -> list[dict]:
        """The cluster's nodes as the Jobs/dashboard server reports them ([] while it is not up)."""
        try:
            with urllib.request.urlopen(f"{self.jobs_address}/nodes?view=summary", timeout=5) as resp:  # noqa: S310 - local
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return []
        return (data.get("data") or {}).get("summary") or []

    def node_id(self, resource: str) -> str | None:
        """The id of the live node that offers ``resource`` (``"head"``, ``"node2"``)."""
        for n in self._nodes():
            raylet = n.get("raylet") or {}
            if raylet.get("state") == "ALIVE" and resource in (raylet.get("resourcesTotal") or {}):
                return raylet.get("nodeId")
        return None

    def alive_nodes(self) -> int:
        return sum(1 for n in self._nodes() if (n.get("raylet") or {}).get("state") == "ALIVE")

    def _wait_nodes(self, n: int, timeout: float, want_resource: str | None = None, exclude: set | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            nodes = [x for x in self._nodes() if (x.get("raylet") or {}).get("state") == "ALIVE"
                     and (x.get("raylet") or {}).get("nodeId") not in (exclude or set())]
            if len(nodes) >= n and (want_resource is None or any(want_resource in ((x.get("raylet") or {}).get("resourcesTotal") or {}) for x in nodes)):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Ray cluster: {n} node(s) not alive after {timeout:.0f} s; logs in {self.temp_dir}\n{self.log_tail()}")

    def _wait_jobs_api(self, timeout: float) -> None:
        deadline = time.monotonic() + max(5.0, timeout)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"{self.jobs_address}/api/jobs/", timeout=5) as resp:  # noqa: S310 - local
                    if resp.status == 200:
                        return
            time.sleep(0.5)
        raise RuntimeError(f"Ray Jobs API not answering at {self.jobs_address}\n{self.log_tail()}")

    def _check_running(self) -> None:
        for name, proc in (("head", self.head), ("node2", self.node2)):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"ray start ({name}) exited with {proc.returncode}\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        out = []
        for f in sorted(self.temp_dir.glob("*.out")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)


def session_pids(sid: int) -> list[int]:
    """Every process of session ``sid``: a node's ``ray start`` session holds its raylet and agents (one process group)
    and its Ray workers, which each get a process group of their own but stay in the session."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid:
                out.append(int(entry))
    return out


def _killpg(proc: subprocess.Popen, sig: int, wait_s: float = 5.0) -> None:
    """Signal the node's whole session (its process group and its workers' own groups), then reap ``ray start``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for pid in session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait_s)


# ----------------------------------------------------------------------------- one cluster per test session

_SESSION: dict = {}


def session_cluster(request) -> LocalRayCluster:
    """The test session's cluster, started on first use and stopped (by process group) when the session ends.

    Test modules each define a session fixture calling this; they share one cluster.
    """
    if not ray_available():
        import pytest

        pytest.skip("Ray is not installed (requirements.txt pins ray[default])")
    cluster = _SESSION.get("cluster")
    if cluster is None:
        cluster = LocalRayCluster(num_cpus=1).start()
        _SESSION["cluster"] = cluster
        request.session.config.add_cleanup(_stop_session_cluster)
    if cluster.node2 is None or cluster.node2.poll() is not None:  # a test killed node 2: bring it back
        cluster.start_node2()
    return cluster


def _stop_session_cluster() -> None:
    cluster = _SESSION.pop("cluster", None)
    if cluster is not None:
        cluster.stop()
