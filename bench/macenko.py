"""Benchmark: HistoDash's Macenko normaliser vs the per-pixel NNLS reference and staintools.

Run from the repository root (a plain script; it puts the repository root on ``sys.path``)::

    .venv/bin/python bench/macenko.py [--tile met1_x_0_y_0.jpg] [--repeats 50]

or ``make bench``. Needs the real tiles in ``$HISTODASH_SHARED_DATA/sccnet-tiles`` (default
``../shared/data``) and, for the third column, staintools + spams (requirements-test.txt).

What it measures, on one real 512 × 512 tile, all three fitted to the study's ``Norm_tile.jpg``:

* HistoDash ``MacenkoNormalizer.transform``: median of ``--repeats`` runs (after 3 warm-up runs);
* the plain reference ``engine.stain_reference.normalize`` (one ``scipy.optimize.nnls`` call per
  pixel, reference study 1's approach) on the full tile: median of ``--reference-repeats`` runs;
* staintools' ``StainNormalizer("macenko").transform`` (**transform only**; its fit is done once
  beforehand, as ours is), with staintools' own defaults (LAB tissue mask, spams lasso
  concentrations, no brightness standardisation): median of ``--staintools-repeats`` runs.

Colour agreement (HistoDash vs the per-pixel reference, same target) is measured on every tile of
sccnet-tiles: max and mean |difference| per channel value (0–255) and the fraction that differ.
Results go to ``bench/results/macenko.json`` and ``bench/results/macenko.md``. This machine is
shared and noisy: the load average before and after is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine import stain_reference as reference  # noqa: E402
from engine.imageio import read_image  # noqa: E402
from engine.stain import MacenkoNormalizer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def shared_data() -> Path:
    return Path(os.environ.get("HISTODASH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def timed(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("numpy", "scipy", "staintools", "spams-bin", "opencv-python", "opencv-python-headless")},
    }


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    return {"max_abs_diff": int(diff.max()), "mean_abs_diff": float(diff.mean()), "fraction_differing": float((diff > 0).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tile", default="met1_x_0_y_0.jpg", help="tile of sccnet-tiles to time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs of HistoDash's transform")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed runs of the per-pixel reference")
    parser.add_argument("--staintools-repeats", type=int, default=5, help="timed runs of staintools' transform")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)

    folder = shared_data() / "sccnet-tiles"
    if not (folder / "Norm_tile.jpg").exists() or not (folder / args.tile).exists():
        print(
            f"bench/macenko.py: the real tiles are not available ({folder / 'Norm_tile.jpg'} or {folder / args.tile} is missing).\n"
            "Set HISTODASH_SHARED_DATA to the folder that holds sccnet-tiles/ (default ../shared/data).",
            file=sys.stderr,
        )
        return 2

    load_before = os.getloadavg()
    target = read_image(folder / "Norm_tile.jpg")
    tile = read_image(folder / args.tile)
    print(f"tile {args.tile} {tile.shape}, target Norm_tile.jpg; fitting …", flush=True)

    ours = MacenkoNormalizer()
    fit_ours = summary(timed(lambda: ours.fit(target), 5))
    start = time.perf_counter()
    ref_stains, ref_max = reference.fit(target)
    fit_reference = time.perf_counter() - start

    timed(lambda: ours.transform(tile), 3)  # warm-up
    t_ours = summary(timed(lambda: ours.transform(tile), args.repeats))
    print(f"HistoDash transform: median {t_ours['median_s'] * 1e3:.1f} ms over {args.repeats} runs", flush=True)

    ref_out = {}
    t_ref = summary(timed(lambda: ref_out.setdefault("image", reference.normalize(tile, ref_stains, ref_max)), args.reference_repeats))
    print(f"per-pixel NNLS reference: median {t_ref['median_s']:.2f} s over {args.reference_repeats} runs", flush=True)

    staintools_result: dict = {"available": False}
    try:
        import staintools
    except ImportError as exc:
        staintools_result["error"] = f"staintools not importable: {exc}"
    else:
        normalizer = staintools.StainNormalizer(method="macenko")
        normalizer.fit(target.copy())  # staintools writes into its input
        st_out = {}
        t_st = summary(timed(lambda: st_out.setdefault("image", normalizer.transform(tile.copy())), args.staintools_repeats))
        staintools_result = {
            "available": True,
            "what": "StainNormalizer('macenko').transform only (fit once beforehand), staintools defaults",
            "time": t_st,
            "colours_vs_per_pixel_reference": agreement(st_out["image"], ref_out["image"]),
        }
        print(f"staintools Macenko transform: median {t_st['median_s'] * 1e3:.0f} ms over {args.staintools_repeats} runs", flush=True)

    print("colour agreement with the per-pixel reference on every sccnet tile …", flush=True)
    per_tile = {}
    for path in sorted(folder.glob("*.jpg")):
        rgb = read_image(path)
        per_tile[path.name] = agreement(ours.transform(rgb), reference.normalize(rgb, ref_stains, ref_max))
        print(f"  {path.name}: {per_tile[path.name]}", flush=True)

    ratios = {"per_pixel_reference_over_histodash": t_ref["median_s"] / t_ours["median_s"]}
    if staintools_result["available"]:
        ratios["staintools_over_histodash"] = staintools_result["time"]["median_s"] / t_ours["median_s"]
    report = {
        "benchmark": "Macenko stain normalisation of one 512 x 512 tile",
        "tile": args.tile,
        "target": "Norm_tile.jpg",
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "histodash": {"what": "MacenkoNormalizer().fit(target).transform(tile), default parameters", "time": t_ours, "fit_time": fit_ours},
        "per_pixel_reference": {
            "what": "engine.stain_reference.normalize: same steps, scipy.optimize.nnls per pixel, full tile",
            "time": t_ref,
            "fit_time_s": fit_reference,
        },
        "staintools_macenko": staintools_result,
        "speedup": ratios,
        "colours_vs_per_pixel_reference": {
            "tile": per_tile[args.tile],
            "all_tiles": per_tile,
            "worst_max_abs_diff": max(a["max_abs_diff"] for a in per_tile.values()),
        },
    }

    for name, ratio in ratios.items():
        print(f"speed-up {name}: {ratio:.0f}x")
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "macenko.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "macenko.md").write_text(markdown(report))
        print(f"wrote {RESULTS / 'macenko.json'} and {RESULTS / 'macenko.md'}")
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    st = r["staintools_macenko"]
    lines = [
        "# Macenko stain normalisation benchmark",
        "",
        f"Generated by `bench/macenko.py` on {m['date_utc']} (commit {m['git_commit']}). Tile `{r['tile']}` (512 × 512), "
        f"target `{r['target']}`, both from reference study 1 (SCCNet).",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + f". Load average before / after: {', '.join(f'{x:.2f}' for x in r['load_average_before'])} / "
        f"{', '.join(f'{x:.2f}' for x in r['load_average_after'])} (the machine is shared: timings are noisy).",
        "",
        "| implementation | what is timed | median | min | runs | HistoDash is faster by |",
        "|---|---|---|---|---|---|",
        f"| HistoDash `MacenkoNormalizer` | transform | {r['histodash']['time']['median_s'] * 1e3:.1f} ms | "
        f"{r['histodash']['time']['min_s'] * 1e3:.1f} ms | {r['histodash']['time']['runs']} | — |",
        f"| per-pixel `scipy.optimize.nnls` reference | full normalisation | {r['per_pixel_reference']['time']['median_s']:.2f} s | "
        f"{r['per_pixel_reference']['time']['min_s']:.2f} s | {r['per_pixel_reference']['time']['runs']} | "
        f"{r['speedup']['per_pixel_reference_over_histodash']:.0f}× |",
    ]
    if st["available"]:
        lines.append(
            f"| staintools 2.1.2 Macenko (own defaults) | transform only | {st['time']['median_s'] * 1e3:.0f} ms | "
            f"{st['time']['min_s'] * 1e3:.0f} ms | {st['time']['runs']} | {r['speedup']['staintools_over_histodash']:.0f}× |"
        )
    else:
        lines.append(f"| staintools Macenko | not run | — | — | — | {st.get('error', '')} |")
    lines += [
        "",
        f"Fit (once per reference): HistoDash {r['histodash']['fit_time']['median_s'] * 1e3:.1f} ms, "
        f"per-pixel reference {r['per_pixel_reference']['fit_time_s']:.2f} s.",
        "",
        "## Colour agreement with the per-pixel reference (same target)",
        "",
        "Differences in 0–255 channel values, over every pixel and channel.",
        "",
        "| tile | max abs diff | mean abs diff | fraction differing |",
        "|---|---|---|---|",
    ]
    for name, a in r["colours_vs_per_pixel_reference"]["all_tiles"].items():
        lines.append(f"| {name} | {a['max_abs_diff']} | {a['mean_abs_diff']:.2e} | {a['fraction_differing']:.2e} |")
    if st["available"]:
        a = st["colours_vs_per_pixel_reference"]
        lines += [
            "",
            f"For scale: staintools' Macenko (a different variant: LAB tissue mask, lasso concentrations, no brightness "
            f"standardisation) differs from the reference on `{r['tile']}` by max {a['max_abs_diff']}, mean {a['mean_abs_diff']:.1f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
