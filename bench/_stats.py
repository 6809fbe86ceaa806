"""The one headline statistic of every benchmark, fixed here before any number exists.

Every ``bench/*.py`` script compares two ways of doing the *same work* (a reference and a
candidate: per-pixel NNLS vs HistoDash's normaliser, model-only vs end-to-end, memory vs files)
with :func:`compare`, and reports what it returns, nothing else chosen after the fact:

* **Passes alternate.** Pass ``i`` runs reference then candidate when ``i`` is even, candidate then
  reference when odd (so neither always runs second, on warm caches or a cooled machine). Warm-up
  passes run first and are never counted; how many there are is a parameter fixed by the script.
* **Headline = ratio of medians**: ``median(reference seconds) / median(candidate seconds)`` over
  the counted passes. For equal work this is candidate throughput ÷ reference throughput: a
  speed-up when the reference is a slow baseline, an efficiency (≤ 1 when physics holds) when the
  reference is a lower bound such as model-only time.
* **Spread beside it**: the per-pass ratios (reference_i / candidate_i of the same pass) with their
  min, quartiles and max, and each series' relative IQR (IQR / median). A per-pass ratio above 1
  for an efficiency (end-to-end faster than model-only) is physically impossible: it is counted
  as ``impossible_pairs`` and shows how much the machine drifted within a pass — it is noise to
  report, never a result to quote.
* **CPU-seconds**: each call's process CPU time (user + system, all threads, plus waited-for
  children) from :func:`resource.getrusage`, so a result that is fast only by using more cores
  shows it. CPU-seconds are summed over the work of one pass, and reported per pass and per item.
* **Machine load**: the load average before and after, and the CPU time *other* processes used
  during the run (from ``/proc/stat``, minus our own), in cores: a quiet machine shows ≈ 0.

Tests never assert on any of this; the benchmarks only print and write it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

__all__ = [
    "Comparison",
    "MachineLoad",
    "Sample",
    "compare",
    "cpu_seconds",
    "machine_info",
    "measure",
    "provenance",
    "publish",
    "quartiles",
    "series_summary",
    "write_results",
]


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process (all its threads) and its waited-for children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass(frozen=True)
class Sample:
    """One timed call: wall-clock seconds and CPU seconds it used."""

    wall_s: float
    cpu_s: float


def measure(fn: Callable[[], Any]) -> tuple[Sample, Any]:
    """Time one call of ``fn()``: its :class:`Sample` and its return value."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    value = fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return Sample(wall, cpu), value


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3), NumPy's default linear method (``statistics.quantiles(..., method="inclusive")``)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def series_summary(seconds: list[float]) -> dict:
    """Median, min, max, quartiles and relative IQR (IQR / median) of a list of seconds."""
    q1, med, q3 = quartiles(seconds)
    return {
        "median_s": med,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "q1_s": q1,
        "q3_s": q3,
        "relative_iqr": (q3 - q1) / med if med > 0 else float("nan"),
        "passes": len(seconds),
    }


class MachineLoad:
    """Load average and other processes' CPU use between :meth:`start` and :meth:`stop`.

    ``others_cores`` = (all CPU time the kernel counted as busy on every core − this process's
    own CPU time) ÷ wall time: how many cores the rest of the machine kept busy meanwhile.
    """

    def __init__(self) -> None:
        self.result: dict = {}

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK")

    def start(self) -> MachineLoad:
        self._t0, self._cpu0, self._busy0 = time.perf_counter(), cpu_seconds(), self._busy_seconds()
        self.result = {"load_average_before": _loadavg()}
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self._t0
        own = cpu_seconds() - self._cpu0
        busy1 = self._busy_seconds()
        self.result["load_average_after"] = _loadavg()
        self.result["wall_s"] = wall
        self.result["own_cpu_s"] = own
        self.result["own_cores"] = own / wall if wall > 0 else None
        if self._busy0 is not None and busy1 is not None and wall > 0:
            self.result["others_cores"] = max(0.0, (busy1 - self._busy0 - own) / wall)
        else:
            self.result["others_cores"] = None
        return self.result


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Comparison:
    """What :func:`compare` measured: both series, the headline and its spread."""

    reference: str
    candidate: str
    items_per_pass: int
    warmup_passes: int
    reference_samples: list[Sample] = field(default_factory=list)
    candidate_samples: list[Sample] = field(default_factory=list)

    @property
    def passes(self) -> int:
        return len(self.candidate_samples)

    def seconds(self, which: str) -> list[float]:
        return [s.wall_s for s in (self.reference_samples if which == "reference" else self.candidate_samples)]

    def cpu(self, which: str) -> list[float]:
        return [s.cpu_s for s in (self.reference_samples if which == "reference" else self.candidate_samples)]

    @property
    def ratio_of_medians(self) -> float:
        """The headline: median(reference seconds) / median(candidate seconds)."""
        return statistics.median(self.seconds("reference")) / statistics.median(self.seconds("candidate"))

    @property
    def per_pass_ratios(self) -> list[float]:
        return [r / c for r, c in zip(self.seconds("reference"), self.seconds("candidate"), strict=True)]

    def summary(self, *, ratio_at_most_one: bool = False) -> dict:
        """Everything to report, as plain JSON-able data.

        Args:
            ratio_at_most_one: The ratio is an efficiency (the reference does a subset of the
                candidate's work), so a per-pass ratio above 1 is impossible and counted.
        """
        ratios = self.per_pass_ratios
        q1, med, q3 = quartiles(ratios)
        ref, cand = series_summary(self.seconds("reference")), series_summary(self.seconds("candidate"))
        n = self.items_per_pass
        out = {
            "headline": "ratio of medians = median(reference s) / median(candidate s)",
            "reference": self.reference,
            "candidate": self.candidate,
            "ratio_of_medians": self.ratio_of_medians,
            "passes": self.passes,
            "warmup_passes": self.warmup_passes,
            "items_per_pass": n,
            "per_pass_ratios": ratios,
            "per_pass_ratio_min": min(ratios),
            "per_pass_ratio_q1": q1,
            "per_pass_ratio_median": med,
            "per_pass_ratio_q3": q3,
            "per_pass_ratio_max": max(ratios),
            "noise_relative_iqr": max(ref["relative_iqr"], cand["relative_iqr"]),
            "reference_seconds": ref,
            "candidate_seconds": cand,
            "reference_items_per_s": n / ref["median_s"],
            "candidate_items_per_s": n / cand["median_s"],
            "reference_cpu_s_per_pass": statistics.median(self.cpu("reference")),
            "candidate_cpu_s_per_pass": statistics.median(self.cpu("candidate")),
            "cpu_ratio_of_medians": statistics.median(self.cpu("reference")) / statistics.median(self.cpu("candidate")),
            "reference_cpu_s_per_item": statistics.median(self.cpu("reference")) / n,
            "candidate_cpu_s_per_item": statistics.median(self.cpu("candidate")) / n,
            "samples": {
                "reference": [asdict(s) for s in self.reference_samples],
                "candidate": [asdict(s) for s in self.candidate_samples],
            },
        }
        if ratio_at_most_one:
            out["impossible_pairs"] = sum(r > 1 for r in ratios)
        return out

    def line(self, unit: str = "items") -> str:
        """One line for the console: headline, spread, noise, CPU-seconds per item."""
        s = self.summary()
        return (
            f"{self.candidate} vs {self.reference}: ratio of medians {s['ratio_of_medians']:.3f} over {s['passes']} passes "
            f"(per-pass {s['per_pass_ratio_min']:.3f}–{s['per_pass_ratio_max']:.3f}, IQR {s['per_pass_ratio_q1']:.3f}–"
            f"{s['per_pass_ratio_q3']:.3f}; series rel. IQR {s['noise_relative_iqr']:.1%}); "
            f"{s['candidate_items_per_s']:.3g} vs {s['reference_items_per_s']:.3g} {unit}/s; CPU-s per item "
            f"{s['candidate_cpu_s_per_item']:.3g} vs {s['reference_cpu_s_per_item']:.3g}"
        )


def compare(
    reference: tuple[str, Callable[[], Any]],
    candidate: tuple[str, Callable[[], Any]],
    *,
    passes: int,
    warmup_passes: int = 1,
    items_per_pass: int = 1,
    between: Callable[[int], Any] | None = None,
    verbose: bool = True,
) -> Comparison:
    """Time ``passes`` alternating passes of the reference and the candidate (after warm-up).

    Args:
        reference: ``(name, fn)``: the work the candidate is compared with.
        candidate: ``(name, fn)``: the work under test (the same items as the reference).
        passes: Counted passes (each runs both once).
        warmup_passes: Passes run first and not counted (tracing, caches, page faults).
        items_per_pass: Items (tiles, images) one call processes: for items/s and CPU-s per item.
        between: Called with the pass index before each counted pass (e.g. to clear a cache);
            not timed.
        verbose: Print one line per pass.

    Returns:
        The :class:`Comparison` (its :meth:`Comparison.summary` is what to report).
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    (ref_name, ref_fn), (cand_name, cand_fn) = reference, candidate
    result = Comparison(ref_name, cand_name, items_per_pass, warmup_passes)
    for _ in range(warmup_passes):
        ref_fn()
        cand_fn()
    for i in range(passes):
        if between is not None:
            between(i)
        order = ((ref_name, ref_fn), (cand_name, cand_fn)) if i % 2 == 0 else ((cand_name, cand_fn), (ref_name, ref_fn))
        got = {}
        for name, fn in order:
            got[name], _ = measure(fn)
        result.reference_samples.append(got[ref_name])
        result.candidate_samples.append(got[cand_name])
        if verbose:
            r, c = got[ref_name], got[cand_name]
            print(f"  pass {i + 1}/{passes}: {ref_name} {r.wall_s:.4g} s, {cand_name} {c.wall_s:.4g} s, ratio {r.wall_s / c.wall_s:.3f}", flush=True)
    return result


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: tuple[str, ...] = ("numpy",), device: str | None = None) -> dict:
    """Date, commit, platform, CPUs and package versions (and the ``--device`` note, if any)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        # uncommitted changes to tracked files, except the results the benchmarks themselves write
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"]
        dirty = bool(subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "platform": platform.platform(),
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in packages},
        "device": device or "CPU only (no --device note given)",
    }


def provenance(script: str, machine: dict, note: str = "") -> str:
    """Markdown sentence: which script made the results, when, at which commit, on what machine and device."""
    m = machine
    dirty = ", uncommitted changes" if m.get("git_dirty") else ""
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return (
        f"Generated by `bench/{script}` on {m['date_utc']} (commit {m['git_commit']}{dirty}{note}). Machine: {m['platform']}, "
        f"{m['cpu_model']}, {m['cpus_usable']} usable CPUs, Python {m['python']}; {versions}. Device: {m['device']}."
    )


def publish(name: str, report: dict, markdown: str, *, write: bool = True) -> None:
    """Print the Markdown and (``write``) save ``bench/results/<name>.json`` and ``.md``."""
    print(markdown)
    if write:
        for path in write_results(name, report, markdown):
            print(f"wrote {path}")


def load_line(load: dict) -> str:
    """Markdown sentence on the machine's load during the run."""
    before = ", ".join(f"{v:.2f}" for v in load.get("load_average_before") or [])
    after = ", ".join(f"{v:.2f}" for v in load.get("load_average_after") or [])
    others = load.get("others_cores")
    others_text = f"{others:.2f} cores" if others is not None else "unknown"
    return (
        f"Load average before / after: {before} / {after}; other processes used {others_text} on average during the run "
        f"(this run {load.get('own_cores') or 0:.2f} cores, {load.get('wall_s', 0):.0f} s)."
    )


def headline_row(s: dict, *, unit: str = "items", digits: int = 3) -> str:
    """A Markdown table row: candidate, reference, ratio of medians, per-pass spread, noise, items/s, CPU-s per item."""
    impossible = f"; {s['impossible_pairs']} impossible" if "impossible_pairs" in s else ""
    return (
        f"| {s['candidate']} | {s['reference']} | **{s['ratio_of_medians']:.{digits}f}** | "
        f"{s['per_pass_ratio_min']:.{digits}f}–{s['per_pass_ratio_max']:.{digits}f} (IQR {s['per_pass_ratio_q1']:.{digits}f}–"
        f"{s['per_pass_ratio_q3']:.{digits}f}{impossible}) | {s['passes']} | {s['noise_relative_iqr']:.1%} | "
        f"{s['candidate_items_per_s']:.4g} / {s['reference_items_per_s']:.4g} | "
        f"{s['candidate_cpu_s_per_item']:.3g} / {s['reference_cpu_s_per_item']:.3g} |"
    )


HEADLINE_HEADER = (
    "| candidate | reference | ratio of medians | per-pass ratios min–max (IQR) | passes | noise (series rel. IQR) | {unit}/s candidate / reference | CPU-s per {item} candidate / reference |\n"
    "|---|---|---|---|---|---|---|---|"
)


def headline_table(summaries: list[dict], *, unit: str = "items", item: str = "item") -> list[str]:
    """Markdown lines: the header and one :func:`headline_row` per comparison."""
    return [*HEADLINE_HEADER.format(unit=unit, item=item).split("\n"), *(headline_row(s, unit=unit) for s in summaries)]


def write_results(name: str, report: dict, markdown: str, folder: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``<folder>/<name>.json`` and ``.md``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path
