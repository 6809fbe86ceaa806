"""Slide viewer benchmark: Deep Zoom tile latency over HTTP and display-change redraw time in Chromium.

    python bench/viewer.py [--quick]

Against the running app (``streamlit run dashboard/server.py``, started here on a free port) with a slide
library holding CMU-1-Small-Region.svs and a generated 100,000² pyramid (real CMU tissue textures in a disc,
bench/heatmap.py's generator; cached in ``<tmp>/histodash-bench``):

(a) tile latency: a headless Chromium opens each slide on the Slide heatmap page (the page mints the tile token
    for that browser session; the browser's own tile requests are blocked so no tile is warmed by it), then an
    HTTP client (httpx, the browser's session cookie) requests Deep Zoom tiles one at a time:
    level 0 (the deepest Deep Zoom level) and the "thumbnail level" (the Deep Zoom level that fits in
    1,024 px, what the viewer's home view loads). Cold = the first request of a tile (not in HistoDash's tile
    cache; the slide already open, the OS file cache as it is); warm = the same tiles again.
(b) display change → redrawn overlay, in Chromium: the CMU heatmap computed from the page (default model), then
    mode / colour map / opacity / threshold / blur changes; in-page time = from the input event to the animation
    frame after the redraw (``HD.lastRedrawMs``); end-to-end = from Playwright's call to the redraw being seen.
    The same on a synthetic 150,000-tile heatmap rendered through the viewer's own ``render`` (a large slide).

Goals (issue 11): warm tile p95 ≤ 50 ms, cold level-0 tile p95 ≤ 150 ms on 2 cores, display change ≤ 200 ms.
Writes bench/results/viewer.json and bench/results/viewer.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._stats import MachineLoad, load_line, machine_info, provenance, publish  # noqa: E402
from bench.heatmap import CMU, write_disc_pyramid  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "histodash-bench"  # the generated pyramids, kept between runs (bench/heatmap.py's too)
BIG = "disc-100000.tif"
GOALS = {"warm_p95_ms": 50.0, "cold_level0_p95_ms": 150.0, "display_change_ms": 200.0}


def stats(ms: list[float]) -> dict:
    a = np.asarray(ms, float)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max()), "mean_ms": float(a.mean())}


def library() -> Path:
    lib = CACHE / "library"
    lib.mkdir(parents=True, exist_ok=True)
    if not (lib / CMU.name).exists():
        shutil.copy(CMU, lib / CMU.name)
    if not (lib / BIG).exists():
        t0 = time.perf_counter()
        write_disc_pyramid(lib / (BIG + ".part"), 100_000)
        os.replace(lib / (BIG + ".part"), lib / BIG)
        print(f"generated {BIG} in {time.perf_counter() - t0:.0f} s ({(lib / BIG).stat().st_size / 1e9:.2f} GB)", file=sys.stderr)
    return lib


def viewer_frame(page, timeout_s: float = 180):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for el in page.locator("iframe[title*='histodash_slide_viewer']").element_handles():
            try:
                f = el.content_frame()
                if f is not None and f.evaluate("() => !!(window.HD && HD.slide && HD.slide.dzi)"):
                    return f
            except Exception:  # noqa: BLE001 - a frame being replaced
                pass
        time.sleep(0.3)
    raise RuntimeError("the viewer did not load")


def tile_session(browser, url: str, name: str) -> tuple[dict, str]:
    """(cookies, DZI URL) of a browser session that opened ``name`` on the page (tile requests blocked)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = ctx.new_page()
    page.route("**/tiles/*_files/**", lambda route: route.abort())
    page.goto(f"{url}/slides?slide=lib:{name}", wait_until="domcontentloaded")
    frame = viewer_frame(page)
    dzi = frame.evaluate("() => HD.slide.dzi")
    cookies = {c["name"]: c["value"] for c in ctx.cookies()}
    ctx.close()
    return cookies, dzi


def dz_levels(width: int, height: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while dims[-1] != (1, 1):
        dims.append((max(1, math.ceil(dims[-1][0] / 2)), max(1, math.ceil(dims[-1][1] / 2))))
    return dims[::-1]


def measure_tiles(url: str, cookies: dict, dzi: str, *, n_level0: int, warm_rounds: int, seed: int = 0) -> dict:
    import xml.etree.ElementTree as ET

    import httpx

    with httpx.Client(base_url=url, cookies=cookies, timeout=60) as client:
        t0 = time.perf_counter()
        r = client.get(dzi)
        first_ms = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        size = ET.fromstring(r.text)[0]
        w, h = int(size.get("Width")), int(size.get("Height"))
        levels = dz_levels(w, h)
        deepest = len(levels) - 1
        thumb = max(i for i, (lw, lh) in enumerate(levels) if max(lw, lh) <= 1024)
        base = dzi[: -len(".dzi")] + "_files"
        rng = random.Random(seed)

        def addresses(level: int, limit: int | None) -> list[tuple[int, int]]:
            lw, lh = levels[level]
            cols, rows = math.ceil(lw / 254), math.ceil(lh / 254)
            c = ((cols - 1) / 2, (rows - 1) / 2)
            # tissue only on the generated disc (glass tiles are tiny JPEGs and would flatter the numbers)
            all_ = [(i, j) for i in range(cols) for j in range(rows) if ((i - c[0]) / max(c[0], 1)) ** 2 + ((j - c[1]) / max(c[1], 1)) ** 2 <= 0.7]
            return all_ if limit is None or len(all_) <= limit else rng.sample(all_, limit)

        def get(level, col, row) -> tuple[float, int]:
            t0 = time.perf_counter()
            resp = client.get(f"{base}/{level}/{col}_{row}.jpeg")
            ms = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200 or resp.headers.get("content-type") != "image/jpeg":
                raise RuntimeError(f"tile {level}/{col}_{row}: HTTP {resp.status_code}")
            return ms, len(resp.content)

        out = {"dimensions": [w, h], "dz_levels": len(levels), "first_request_ms": first_ms}
        for label, level, limit in (("level0", deepest, n_level0), ("thumbnail", thumb, None)):
            addr = addresses(level, limit)
            cold = [get(level, *a) for a in addr]
            warm = [get(level, *a)[0] for _ in range(warm_rounds) for a in addr]
            out[label] = {"dz_level": level, "level_px": list(levels[level]), "cold": stats([c[0] for c in cold]), "warm": stats(warm),
                          "mean_kb": float(np.mean([c[1] for c in cold]) / 1024)}
    return out


def health(url: str, n: int) -> dict:
    """The server's floor: Streamlit's own /_stcore/health over the same client."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        client.get("/_stcore/health")
        ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.get("/_stcore/health").raise_for_status()
            ms.append((time.perf_counter() - t0) * 1000)
    return stats(ms)


def synthetic_tiles(n: int, width0: int, height0: int, seed: int = 1) -> dict:
    from engine.overlay import b64

    rng = np.random.default_rng(seed)
    tile0 = int(math.sqrt(width0 * height0 / (n / 0.35)))
    cols, rows = width0 // tile0, height0 // tile0
    idx = rng.choice(cols * rows, size=min(n, cols * rows), replace=False)
    x, y = (idx % cols) * tile0, (idx // cols) * tile0
    p = rng.dirichlet([1, 1, 1], len(idx))
    cols_ = {"score": p[:, 0] + p[:, 2], "p_a": p[:, 0], "p_b": p[:, 1], "p_c": p[:, 2], "tissue": rng.random(len(idx))}
    return {"id": f"synthetic-{n}", "n": int(len(idx)), "tile0": tile0, "stride0": tile0, "width0": width0, "height0": height0,
            "x": b64(x, "int32"), "y": b64(y, "int32"), "columns": {k: b64(v, "float64") for k, v in cols_.items()},
            "score_column": "score", "score_name": "score", "classes": ["a", "b", "c"], "threshold": 0.5, "model_id": "synthetic"}


CHANGES = [("#mode", "binarise"), ("#colormap", "magma"), ("#mode", "percentiles"), ("#opacity", "0.3"), ("#mode", "extreme"),
           ("#threshold", "0.8"), ("#mode", "raw"), ("#colormap", "viridis"), ("#opacity", "0.6"), ("#threshold", "0.5")]


def display_changes(frame, rounds: int) -> dict:
    in_page, end_to_end, by_change = [], [], {}
    for _ in range(rounds):
        for control, value in CHANGES:
            before = frame.evaluate("() => HD.redraws")
            t0 = time.perf_counter()
            if control == "#mode" or control == "#colormap":
                frame.select_option(control, value)
            else:
                frame.evaluate("([sel, v]) => { const e = document.querySelector(sel); e.value = v; e.dispatchEvent(new Event(sel === '#opacity' ? 'input' : 'change')); }", [control, value])
            frame.wait_for_function("(n) => HD.redraws > n", arg=before, polling="raf")
            end_to_end.append((time.perf_counter() - t0) * 1000)
            in_page.append(frame.evaluate("() => HD.lastRedrawMs"))
            by_change.setdefault(f"{control[1:]}={value}", []).append(in_page[-1])
    return {"in_page": stats(in_page), "end_to_end": stats(end_to_end), "by_change_max_ms": {k: max(v) for k, v in by_change.items()}}


def blur_change(frame, sigma: float) -> float:
    before = frame.evaluate("() => HD.redraws")
    frame.evaluate("(v) => { const e = document.getElementById('blur'); e.value = v; e.dispatchEvent(new Event('change')); }", sigma)
    frame.wait_for_function("(n) => HD.redraws > n", arg=before, polling="raf")
    ms = frame.evaluate("() => HD.lastRedrawMs")
    frame.evaluate("() => { const e = document.getElementById('blur'); e.value = 0; e.dispatchEvent(new Event('change')); }")
    return ms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print the results, do not write bench/results/viewer.*")
    parser.add_argument("--device", default=None, help="a note on the device the run used (default: CPU only)")
    args = parser.parse_args()
    if not CMU.exists():
        print(f"error: {CMU} is absent (set HISTODASH_SHARED_DATA)", file=sys.stderr)
        return 2
    from tests.browser import chromium, streamlit_server

    lib = library()
    n0, rounds, change_rounds = (60, 2, 2) if args.quick else (300, 3, 5)
    work = Path(tempfile.mkdtemp(prefix="histodash-bench-viewer-"))
    env = {"HISTODASH_HOME": str(work / "home"), "HISTODASH_SLIDES_DIR": str(lib), "HISTODASH_MODELS_DIR": str(ROOT / "models"),
           "HISTODASH_DEFAULT_MODEL": "lc25000-lung-cnn", "HISTODASH_PASSWORD_HASH": None, "HISTODASH_CACHE_DIR": str(work / "cache"),
           "HISTODASH_JOBS_DIR": str(work / "jobs"), "HISTODASH_WORK_DIR": str(work / "sessions")}
    results: dict = {"machine": machine_info(("streamlit", "uvicorn", "uvloop", "httptools", "openslide-python", "openslide-bin", "playwright"), args.device), "quick": args.quick,
                     "goals": GOALS, "tiles": {}}
    load = MachineLoad().start()
    try:
        with streamlit_server(env, work / "streamlit.log") as url, chromium() as browser:
            results["health"] = health(url, 60 if args.quick else 200)
            for name in (CMU.name, BIG):
                cookies, dzi = tile_session(browser, url, name)
                results["tiles"][name] = measure_tiles(url, cookies, dzi, n_level0=n0, warm_rounds=rounds)
                print(name, json.dumps(results["tiles"][name]["level0"]["cold"]), file=sys.stderr)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(300_000)
            page.goto(f"{url}/slides?slide=lib:{CMU.name}", wait_until="domcontentloaded")
            page.get_by_role("button", name="Compute heatmap").click()
            page.get_by_role("heading", name="Heatmap", exact=True).wait_for()
            frame = viewer_frame(page)
            frame.wait_for_function("() => HD.tiles && HD.heat && HD.viewer.world.getItemCount() === 1")
            n_cmu = frame.evaluate("() => HD.tiles.n")
            results["display"] = {CMU.name: {"tiles": n_cmu, **display_changes(frame, change_rounds), "blur_ms": blur_change(frame, 500)}}
            big = synthetic_tiles(150_000, 100_000, 100_000)
            frame.evaluate("(t) => { const a = Object.assign({}, HD.lastArgs, {tiles: Object.assign({}, t, {slide_hash: HD.lastArgs.slide.hash})}); HD.render(a); }", big)
            frame.wait_for_function("(id) => HD.tilesId === id && HD.heat", arg=big["id"])
            results["display"]["synthetic 150,000 tiles"] = {"tiles": big["n"], **display_changes(frame, change_rounds), "blur_ms": blur_change(frame, 2000)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load"] = load.stop()
    publish("viewer", results, report(results), write=not args.no_write)
    return 0


def report(r: dict) -> str:
    def ok(value, goal):
        return f"**{value:.1f}** ({'meets' if value <= goal else 'misses'} ≤ {goal:g})"

    lines = [f"# Slide viewer benchmark{' (quick)' if r['quick'] else ''}", "", provenance("viewer.py", r["machine"]), "", load_line(r["load"]), "",
             "Deep Zoom tile requests over HTTP against `streamlit run dashboard/server.py`, one at a time (httpx, the browser session's cookie).",
             "Cold = first request of a tile (not in HistoDash's tile cache; slide already open); warm = the same tiles again.", "",
             "| slide | level | tiles | cold p50 ms | cold p95 ms | warm p50 ms | warm p95 ms | mean KB |", "|---|---|---|---|---|---|---|---|"]
    for name, t in r["tiles"].items():
        for label in ("level0", "thumbnail"):
            s = t[label]
            cold_p95 = ok(s["cold"]["p95_ms"], GOALS["cold_level0_p95_ms"]) if label == "level0" else f"{s['cold']['p95_ms']:.1f}"
            lines.append(f"| {name} ({t['dimensions'][0]:,}×{t['dimensions'][1]:,}) | {label} (DZ {s['dz_level']}, {s['level_px'][0]:,} px) | {s['cold']['n']} | "
                         f"{s['cold']['p50_ms']:.1f} | {cold_p95} | {s['warm']['p50_ms']:.1f} | {ok(s['warm']['p95_ms'], GOALS['warm_p95_ms'])} | {s['mean_kb']:.0f} |")
    if "health" in r:
        h = r["health"]
        lines += ["", f"Server floor (Streamlit's `/_stcore/health`, same client): p50 {h['p50_ms']:.1f} ms, p95 {h['p95_ms']:.1f} ms ({h['n']} requests).",
                  "A floor near 40 ms would be TCP's delayed ACK meeting Nagle: Streamlit 1.67 pre-binds its server socket with protocol 0 and",
                  "asyncio's loop sets TCP_NODELAY only when the protocol is IPPROTO_TCP. With uvloop installed (requirements.txt; uvicorn picks it)",
                  "every accepted connection gets TCP_NODELAY (tests/dashboard/test_server_socket.py); the versions line above says whether it was."]
    lines += ["", "First request of a slide (DZI descriptor, opens the slide): " + ", ".join(f"{n} {t['first_request_ms']:.0f} ms" for n, t in r["tiles"].items()), "",
              "Display change → redrawn overlay in Chromium (mode, colour map, opacity, threshold; no Streamlit rerun):", "",
              "| heatmap | tiles | changes | in-page p50 ms | in-page p95 ms | end-to-end p50 ms | end-to-end p95 ms | blur change ms |", "|---|---|---|---|---|---|---|---|"]
    for name, d in r.get("display", {}).items():
        lines.append(f"| {name} | {d['tiles']:,} | {d['in_page']['n']} | {d['in_page']['p50_ms']:.1f} | {ok(d['in_page']['p95_ms'], GOALS['display_change_ms'])} | "
                     f"{d['end_to_end']['p50_ms']:.1f} | {d['end_to_end']['p95_ms']:.1f} | {d['blur_ms']:.0f} |")
    lines += ["", "In-page = from the input event to the animation frame after the redraw; end-to-end adds Playwright's round trips.", ""]
    for name, d in r.get("display", {}).items():
        lines.append(f"- {name}, slowest in-page redraw per change: " + ", ".join(f"{k} {v:.0f} ms" for k, v in d["by_change_max_ms"].items()))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
