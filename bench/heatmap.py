"""Slide heatmap benchmark (one run): pipeline efficiency, cached re-run speed-up, peak memory.

    python bench/heatmap.py [--quick]

(a) pipeline efficiency = end-to-end tiles/s ÷ model-only tiles/s on the same tiles and batch size,
    on CMU-1-Small-Region.svs and on a larger generated pyramid (real CMU tissue textures);
    end-to-end = :func:`engine.heatmap.compute_heatmap` wall time (open, thumbnail, tissue mask, tile
    reading/decoding, inference, cache writes), model-only = ``predictor.predict_batch`` on the same
    tiles, already decoded in memory. Model: ResNet50 (weights=None) + GAP + sigmoid at 224 px.
(b) cached re-run speed-up = cold ÷ warm wall time of the same call.
(c) peak RSS (VmHWM) of one heatmap run, each in a fresh process, on generated 25,000² and
    100,000² pyramids tiled identically (the tiny test CNN; the point is memory, not the model).

Writes bench/results/heatmap.json and bench/results/heatmap.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("HISTODASH_SHARED_DATA", ROOT.parent / "shared" / "data"))
CMU = SHARED / "wsi" / "CMU-1-Small-Region.svs"
RESULTS = ROOT / "bench" / "results"


# ----------------------------------------------------------------------------- generated slides

def _encoded_tile(rgb: np.ndarray, quality: int = 85) -> bytes:
    """A tile encoded exactly as tifffile writes it (extracted from a one-tile TIFF)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, tile=rgb.shape[:2], photometric="rgb", compression="jpeg", compressionargs={"level": quality})
    buf.seek(0)
    with tifffile.TiffFile(buf) as tf:
        page = tf.pages[0]
        off, n = page.dataoffsets[0], page.databytecounts[0]
    return buf.getvalue()[off : off + n]


def textures(n: int = 24, tile: int = 256) -> list[np.ndarray]:
    """Real H&E tissue tiles from CMU (or coloured noise when the slide is absent)."""
    rng = np.random.default_rng(0)
    if CMU.exists():
        from engine.slides import open_slide

        out = []
        with open_slide(CMU) as slide:
            while len(out) < n:
                x, y = rng.integers(0, 2220 - tile), rng.integers(0, 2967 - tile)
                t = slide.read_region((int(x), int(y)), 0, (tile, tile))
                if t.mean() < 200:
                    out.append(t)
        return out
    return [np.clip(rng.normal((180, 90, 160), 25, (tile, tile, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def write_disc_pyramid(path: Path, side: int, *, tile: int = 256, mpp: float = 0.5, tissue_radius: float = 0.42) -> Path:
    """A ``side``² pyramidal TIFF (OpenSlide recipe) with a disc of tissue tiles, written from pre-encoded tiles."""
    import tifffile

    tex = textures()
    enc_tissue = [_encoded_tile(t) for t in tex]
    enc_glass = _encoded_tile(np.full((tile, tile, 3), 244, np.uint8))
    levels = 3  # at least (the memory runs read level 2), and down to ≤ 2048 px for the thumbnail
    while max(side // 2 ** (levels - 1), 1) > 2048:
        levels += 1
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(levels):
            ds = 2**k
            w = h = max(1, side // ds)

            def tiles(w=w, h=h, ds=ds):
                c = side / 2
                for ty in range(0, h, tile):
                    for tx in range(0, w, tile):
                        cx, cy = (tx + tile / 2) * ds, (ty + tile / 2) * ds
                        inside = (cx - c) ** 2 + (cy - c) ** 2 <= (tissue_radius * side) ** 2
                        yield enc_tissue[(tx // tile * 7 + ty // tile * 13) % len(enc_tissue)] if inside else enc_glass

            tif.write(
                tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression="jpeg",
                subfiletype=0 if k == 0 else 1, resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), resolutionunit="CENTIMETER", metadata=None,
            )
    return path


# ----------------------------------------------------------------------------- models

def resnet_registry(root: Path) -> Path:
    from engine.registry import sha256_file
    from engine.runtime import keras

    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((224, 224, 3))
    x = k.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    base = k.applications.ResNet50(weights=None, include_top=False, input_tensor=x)
    out = k.layers.Dense(1, activation="sigmoid")(k.layers.GlobalAveragePooling2D()(base.output))
    folder = root / "resnet50-224"
    folder.mkdir(parents=True, exist_ok=True)
    k.Model(inputs, out).save(folder / "model.keras")
    card = {
        "id": "resnet50-224", "task": "tile-classification", "architecture": "resnet50", "classes": ["negative", "positive"],
        "input_px": 224, "threshold": 0.5, "weights_file": "model.keras", "weights_sha256": sha256_file(folder / "model.keras"), "mpp": None,
    }
    (folder / "card.json").write_text(json.dumps(card))
    return root


def tiny_registry(root: Path) -> Path:
    from tests.conftest import write_tiny_model

    write_tiny_model(root / "tiny-test")
    return root


# ----------------------------------------------------------------------------- measurements

def _model_only(predictor, tensors, batch_size) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        predictor.predict_batch(tensors[i : i + batch_size])
    return time.perf_counter() - t0


def efficiency(slide_path: Path, models: Path, *, level: int = 0, batch_size: int = 32, readers: int = 1, repeats: int = 3) -> dict:
    """Model-only and end-to-end passes alternate ``repeats`` times (medians reported: this machine drifts)."""
    from engine.cache import ResultCache
    from engine.heatmap import HeatmapRun, TileGrid, compute_heatmap, thumbnail_and_mask
    from engine.predict import TilePredictor
    from engine.registry import Registry
    from engine.slides import open_slide
    from engine.tissue import TissueMasker

    card = Registry(models).get("resnet50-224")
    model_s, cold_s, warm_s, colds = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        predictor = TilePredictor(card, cache=False, batch_size=batch_size)
        # model-only on the same tiles: decode them all first (not timed), then only the forward passes
        with open_slide(slide_path) as slide:
            grid = TileGrid.for_slide(slide, card, level=level)
            thumb, mask = thumbnail_and_mask(slide, TissueMasker(), None)
            x, y, _ = HeatmapRun(predictor).select_tiles(slide, grid, mask)
            tensors = [predictor.prepare(slide.read_region((int(a), int(b)), grid.level, (grid.read_px, grid.read_px))).tensor for a, b in zip(x, y)]
        n = len(x)
        # warm up every batch shape both paths will see (a full batch and the remainder): no tracing inside timings
        predictor.predict_batch(tensors[:batch_size])
        if n % batch_size:
            predictor.predict_batch(tensors[: n % batch_size])
        for r in range(repeats):
            model_s.append(_model_only(predictor, tensors, batch_size))
            cache = ResultCache(Path(tmp) / f"cache-{r}")
            predictor.cache = cache
            cold, _ = compute_heatmap(slide_path, predictor=predictor, level=level, readers=readers)
            t0 = time.perf_counter()
            warm, _ = compute_heatmap(slide_path, predictor=predictor, level=level, readers=readers)
            warm_s.append(time.perf_counter() - t0)
            assert cold.n_tiles == n and warm.cached.all()
            cold_s.append(cold.timings["wall_s"])
            colds.append(cold.timings)
            cache.close()
        del tensors
    med = lambda v: float(np.median(v))  # noqa: E731
    model = n / med(model_s)
    e2e = n / med(cold_s)
    return {
        "slide": slide_path.name, "level0": [grid.width0, grid.height0], "tiles": n, "tile0": grid.tile0,
        "batch_size": batch_size, "readers": readers, "repeats": repeats,
        "model_only_s": model_s, "end_to_end_s": cold_s, "cached_rerun_s": warm_s,
        "model_only_tiles_per_s": model, "end_to_end_tiles_per_s": e2e, "efficiency_of_medians": e2e / model,
        # the machine's speed drifts (a shared VM: passes of the same work differ up to 2×): each end-to-end pass is
        # compared with the model-only pass just before it, and the median of those paired ratios is the headline
        "efficiency": med([m / c for m, c in zip(model_s, cold_s)]),
        "efficiency_best_of": min(model_s) / min(cold_s),
        "model_only_tiles_per_s_best": n / min(model_s), "end_to_end_tiles_per_s_best": n / min(cold_s),
        "efficiency_per_repeat": [m / c for m, c in zip(model_s, cold_s)],
        "cold_wall_s": med(cold_s), "cold_timings": colds[int(np.argsort(cold_s)[len(cold_s) // 2])],
        "warm_wall_s": med(warm_s), "cache_speedup": med(cold_s) / med(warm_s),
    }


def rss_child(slide: str, models: str) -> None:
    """Run in a fresh process: one heatmap (no cache), then print the peak RSS as JSON."""
    from engine.heatmap import compute_heatmap

    t0 = time.perf_counter()
    result, _ = compute_heatmap(slide, model_id="tiny-test", models_dir=models, level=2, tile_px=96, cache=False, batch_size=64)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"slide": Path(slide).name, "tiles": result.n_tiles, "grid_tiles": result.grid.n_tiles, "tile0": result.grid.tile0, "seconds": time.perf_counter() - t0, "peak_rss_mb": hwm / 1024}))


def peak_rss(slide: Path, models: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(slide), str(models)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"RSS run on {slide.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller slides (a smoke test, not the reported run)")
    parser.add_argument("--rss-child", nargs=2, metavar=("SLIDE", "MODELS"))
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--only-rss", action="store_true")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    os.environ.setdefault("HISTODASH_HOME", tempfile.mkdtemp(prefix="histodash-bench-"))
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="hm-bench-") as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        if not args.only_rss:
            resnet_registry(models)
        tiny_registry(models)
        runs = []
        if args.only_rss:
            pass
        elif CMU.exists():
            runs.append(efficiency(CMU, models, repeats=3 if args.quick else 15))
            print(json.dumps(runs[-1], indent=1, default=str), flush=True)
        if not args.only_rss:
            side = 4096 if args.quick else 10000
            t0 = time.perf_counter()
            larger = write_disc_pyramid(tmp / f"disc-{side}.tif", side)
            report["generate_larger_s"] = time.perf_counter() - t0
            runs.append(efficiency(larger, models))
            print(json.dumps(runs[-1], indent=1, default=str), flush=True)
        report["efficiency"] = runs
        if not args.skip_rss:
            rss = []
            for s in ((4000, 16000) if args.quick else (25_000, 100_000)):
                t0 = time.perf_counter()
                path = write_disc_pyramid(tmp / f"rss-{s}.tif", s)
                gen = time.perf_counter() - t0
                row = peak_rss(path, models)
                row.update(side=s, generate_s=gen, file_mb=path.stat().st_size / 1e6)
                print(json.dumps(row), flush=True)
                rss.append(row)
                path.unlink()
            report["peak_rss"] = rss
            report["peak_rss_ratio"] = rss[1]["peak_rss_mb"] / rss[0]["peak_rss_mb"]
    report["quick"] = bool(args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = ("heatmap-quick" if args.quick else "heatmap") + ("-rss" if args.only_rss else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Slide heatmap benchmark ({r['started']}, {r['machine']['cpus']} CPUs, Python {r['machine']['python']})", "",
             "ResNet50 (weights=None) + GAP + sigmoid at 224 px, batch 32, level-0 tiles of 224 px, min tissue 0.5, one reader thread.",
             "Model-only = forward passes on the same tiles already decoded in memory; end-to-end = `compute_heatmap` wall time (open, thumbnail,",
             "tissue mask, reading/decoding, inference, cache writes) with the model loaded and warm. Model-only and end-to-end passes alternate;",
             "This VM's speed drifts (the same model-only pass took 1.4 s or 2.9 s minutes apart), so each end-to-end pass is compared with the",
             "model-only pass just before it and the headline is the median of those paired ratios (ratio of medians, of bests, and every pair shown).", "",
             "| slide | tiles | model-only tiles/s median (best) | end-to-end tiles/s median (best) | efficiency: median of paired ratios (goal) | ratio of medians · of bests · per pair | cold s (median) | cached re-run s (median) | speed-up (goal ≥ 50×) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in r.get("efficiency", []):
        goal = "≥ 0.90" if e["slide"].lower().startswith("cmu") else "≥ 0.95"
        size = f"{e['level0'][0]:,}×{e['level0'][1]:,}"
        per = ", ".join(f"{v:.3f}" for v in e["efficiency_per_repeat"])
        lines.append(f"| {e['slide']} ({size}) | {e['tiles']:,} | {e['model_only_tiles_per_s']:.2f} ({e['model_only_tiles_per_s_best']:.2f}) | {e['end_to_end_tiles_per_s']:.2f} ({e['end_to_end_tiles_per_s_best']:.2f})"
                     + f" | **{e['efficiency']:.3f}** ({goal}) | {e['efficiency_of_medians']:.3f} · {e['efficiency_best_of']:.3f} · {per} | {e['cold_wall_s']:.2f} | {e['warm_wall_s']:.3f} | **{e['cache_speedup']:.0f}×** |")
    if r.get("peak_rss"):
        lines += ["", "Peak RSS (VmHWM), one heatmap per fresh process, tiny CNN, level-2 tiles of 96 px (384 level-0 px), no cache:", "",
                  "| slide | grid tiles | tissue tiles scored | run s | peak RSS MB |", "|---|---|---|---|---|"]
        for row in r["peak_rss"]:
            lines.append(f"| {row['side']:,}² ({row['file_mb']:.0f} MB file) | {row['grid_tiles']:,} | {row['tiles']:,} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} |")
        lines.append(f"\nRatio 100,000² / 25,000²: **{r['peak_rss_ratio']:.3f}** (goal ≤ 1.2, and below 1.5 GB).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
