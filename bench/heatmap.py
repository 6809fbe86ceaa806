"""Slide heatmap benchmark: pipeline efficiency, where the rest of the time goes, cached re-run, peak memory.

    .venv/bin/python bench/heatmap.py [--passes 9] [--device "A100, CUDA 12"] [--quick]

(a) **Efficiency** on CMU-1-Small-Region.svs and on a generated 10,000² pyramid (real CMU tissue
    textures in a central disc of ``--tissue-radius`` × side, default 0.42; a smaller disc spreads the
    per-slide costs of the whole 10,000² slide — thumbnail, tissue mask, grid — over fewer tiles).
    The headline is fixed by ``bench/_stats.py``: ratio of medians = median(model-only s) ÷
    median(end-to-end s) over ``--passes`` alternating passes after one warm-up pass each.
    *End-to-end* = :func:`engine.heatmap.compute_heatmap` wall time, cold (a new empty result cache
    each pass): open, thumbnail, tissue mask, tile reading and preparation, inference, cache writes,
    with the model loaded. *Model-only* = :meth:`engine.predict.TilePredictor.predict_batch` on the
    same tiles, already prepared in memory, same batches. Beside it: the per-pass ratios (a ratio
    above 1 is physically impossible and counted: it measures the machine's drift, not the code),
    CPU-seconds per tile of both, tiles/s, and the share of the end-to-end wall time spent in the
    model, with the fixed per-slide costs (open + thumbnail + mask, cache look-ups) separately.
    Model: ResNet50 (weights=None) + GAP + sigmoid at 224 px, batch 32. Goal ≥ 0.95 on both slides.
(b) **Cached re-run** speed-up = median cold ÷ median warm wall time of the same call.
(c) **Peak RSS** (VmHWM) of one heatmap run, each in a fresh process, on generated 25,000² and
    100,000² pyramids tiled identically (the tiny test CNN; the point is memory, not the model).

No GPU was lent to the runs committed here. On a GPU host (``tensorflow[and-cuda]`` installed) the
same command runs unchanged: ``--device`` records what the host is, the TensorFlow devices seen are
written down, and ``--batch-size`` / ``--mixed-precision`` (Keras ``mixed_float16`` policy when the
ResNet is built) say whether larger batches or half precision help there.

Writes bench/results/heatmap.json and bench/results/heatmap.md (``--quick``: heatmap-quick.*).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._stats import MachineLoad, compare, headline_table, load_line, machine_info, provenance, publish  # noqa: E402
from engine.config import get_settings  # noqa: E402

SHARED = get_settings().shared_data  # HISTODASH_SHARED_DATA, read by Settings (default ../shared/data)
CMU = SHARED / "wsi" / "CMU-1-Small-Region.svs"
GOAL = 0.95


# ----------------------------------------------------------------------------- generated slides

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
    """A ``side``² pyramidal TIFF with a disc of tissue tiles, written from pre-encoded tiles (:mod:`engine.synthetic`)."""
    from engine.synthetic import encode_tile, write_pyramid_tiff

    enc_tissue = [encode_tile(t) for t in textures(tile=tile)]
    enc_glass = encode_tile(np.full((tile, tile, 3), 244, np.uint8))
    levels = 3  # at least (the memory runs read level 2), and down to <= 2048 px for the thumbnail
    while max(side // 2 ** (levels - 1), 1) > 2048:
        levels += 1
    centre = side / 2

    def encoded(tx: int, ty: int, ds: int) -> bytes:
        cx, cy = (tx + tile / 2) * ds, (ty + tile / 2) * ds
        if (cx - centre) ** 2 + (cy - centre) ** 2 <= (tissue_radius * side) ** 2:
            return enc_tissue[(tx // tile * 7 + ty // tile * 13) % len(enc_tissue)]
        return enc_glass

    return write_pyramid_tiff(path, side, side, encoded=encoded, levels=levels, tile=tile, mpp=mpp, bigtiff=True)


# ----------------------------------------------------------------------------- models

def resnet_registry(root: Path, *, mixed_precision: bool = False) -> Path:
    from engine.cache import sha256_file
    from engine.runtime import keras

    k = keras()
    if mixed_precision:
        k.mixed_precision.set_global_policy("mixed_float16")
    k.utils.set_random_seed(0)
    inputs = k.Input((224, 224, 3))
    x = k.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    base = k.applications.ResNet50(weights=None, include_top=False, input_tensor=x)
    out = k.layers.Dense(1, activation="sigmoid", dtype="float32")(k.layers.GlobalAveragePooling2D()(base.output))
    folder = root / "resnet50-224"
    folder.mkdir(parents=True, exist_ok=True)
    k.Model(inputs, out).save(folder / "model.keras")
    if mixed_precision:
        k.mixed_precision.set_global_policy("float32")
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


def tensorflow_devices() -> list[str]:
    from engine.runtime import tensorflow

    return [f"{d.device_type}:{d.name}" for d in tensorflow().config.list_physical_devices()]


# ----------------------------------------------------------------------------- measurements

def efficiency(slide_path: Path, models: Path, *, passes: int, level: int = 0, batch_size: int = 32, readers: int = 1,
               warm_reruns: int = 3) -> dict:
    """Alternating model-only / end-to-end passes (see the module docstring), then cached re-runs."""
    from engine.cache import ResultCache
    from engine.heatmap import HeatmapRun, TileGrid, compute_heatmap, thumbnail_and_mask
    from engine.heatmap.inference import batch_plan
    from engine.predict import TilePredictor
    from engine.registry import Registry
    from engine.slides import open_slide
    from engine.tissue import TissueMasker

    card = Registry(models).get("resnet50-224")
    predictor = TilePredictor(card, cache=False, batch_size=batch_size)
    with open_slide(slide_path) as slide:  # the tiles end-to-end will score, prepared once (not timed)
        grid = TileGrid.for_slide(slide, card, level=level)
        _, mask = thumbnail_and_mask(slide, TissueMasker(), None)
        x, y, _ = HeatmapRun(predictor).select_tiles(slide, grid, mask)
        tensors = np.stack([predictor.prepare(slide.read_region((int(a), int(b)), grid.level, (grid.read_px, grid.read_px))).tensor
                            for a, b in zip(x, y, strict=True)])
    n = len(tensors)
    batches = [tensors[a:b] for a, b in batch_plan(n, batch_size)]  # the batches compute_heatmap scores them in
    timings: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hm-cache-") as tmp:
        caches = iter(ResultCache(Path(tmp) / f"cache-{i}") for i in range(passes + 1))

        def fresh_cache(_pass: int = -1) -> None:  # not timed: a cold run starts from an empty cache
            if predictor.cache is not None:
                predictor.cache.close()
            predictor.cache = next(caches)

        def model_only() -> None:
            for b in batches:
                predictor.predict_batch(b)

        def end_to_end() -> None:
            result, _ = compute_heatmap(slide_path, predictor=predictor, level=level, readers=readers)
            assert result.n_tiles == n and not result.cached.any()
            timings.append(dict(result.timings))

        fresh_cache()  # for the warm-up pass
        comparison = compare((f"model-only, {slide_path.name}", model_only), (f"end-to-end, {slide_path.name}", end_to_end), passes=passes, warmup_passes=1,
                             items_per_pass=n, between=fresh_cache)
        timings = timings[1:]  # the warm-up pass's
        warm = []
        for _ in range(warm_reruns):  # the last cold run's cache is full: re-runs read no tile
            t0 = time.perf_counter()
            result, _ = compute_heatmap(slide_path, predictor=predictor, level=level, readers=readers)
            warm.append(time.perf_counter() - t0)
            assert result.cached.all()
        predictor.cache.close()
    s = comparison.summary(ratio_at_most_one=True)
    print(comparison.line("tiles"), flush=True)
    med = lambda key: statistics.median(t[key] for t in timings)  # noqa: E731
    fixed = [t["wall_s"] - t["inference_s"] for t in timings]  # open, thumbnail + tissue mask, tile selection, cache look-ups
    s.update(
        slide=slide_path.name, level0=[grid.width0, grid.height0], tiles=n, tile0=grid.tile0, batch_size=batch_size, readers=readers,
        model_share_of_wall=statistics.median(t["model_s"] / t["wall_s"] for t in timings),
        fixed_per_slide_s=statistics.median(fixed), fixed_share_of_wall=statistics.median(f / t["wall_s"] for f, t in zip(fixed, timings, strict=True)),
        tissue_select_s=med("tissue_s"), cache_lookup_s=med("cache_lookup_s"), inference_s=med("inference_s"), model_in_run_s=med("model_s"),
        wall_s=med("wall_s"), end_to_end_timings=timings,
        warm_rerun_s=warm, warm_rerun_median_s=statistics.median(warm),
        cache_speedup=s["candidate_seconds"]["median_s"] / statistics.median(warm),
        goal=GOAL, meets_goal=s["ratio_of_medians"] >= GOAL,
    )
    return s


def rss_child(slide: str, models: str) -> None:
    """Run in a fresh process: one heatmap (no cache), then print the peak RSS as JSON."""
    from engine.heatmap import compute_heatmap

    t0 = time.perf_counter()
    result, _ = compute_heatmap(slide, model_id="tiny-test", models_dir=models, level=2, tile_px=96, cache=False, batch_size=64)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"slide": Path(slide).name, "tiles": result.n_tiles, "grid_tiles": result.grid.n_tiles, "tile0": result.grid.tile0,
                      "seconds": time.perf_counter() - t0, "peak_rss_mb": hwm / 1024}))


def peak_rss(slide: Path, models: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(slide), str(models)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"RSS run on {slide.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--passes", type=int, default=9, help="counted alternating passes per slide (default %(default)s; at least 9 for a reported run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--readers", type=int, default=1, help="reader threads of compute_heatmap (default %(default)s)")
    parser.add_argument("--mixed-precision", action="store_true", help="build the ResNet under Keras' mixed_float16 policy (for GPU hosts)")
    parser.add_argument("--device", default=None, help="free-text note on the machine/accelerator, recorded with the results")
    parser.add_argument("--slides", choices=("all", "cmu", "generated"), default="all",
                        help="which efficiency runs: CMU-1-Small-Region, the generated pyramid, or both (default)")
    parser.add_argument("--tissue-radius", type=float, default=0.42,
                        help="radius of the generated pyramid's tissue disc, as a fraction of its side (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="3 passes, smaller slides (a smoke test, not the reported run)")
    parser.add_argument("--rss-child", nargs=2, metavar=("SLIDE", "MODELS"))
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--only-rss", action="store_true")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    os.environ.setdefault("HISTODASH_HOME", tempfile.mkdtemp(prefix="histodash-bench-"))
    passes = 3 if args.quick else args.passes
    load = MachineLoad().start()
    report: dict = {"settings": {"passes": passes, "batch_size": args.batch_size, "readers": args.readers, "slides": args.slides, "tissue_radius": args.tissue_radius,
                                 "mixed_precision": args.mixed_precision, "quick": args.quick}}
    with tempfile.TemporaryDirectory(prefix="hm-bench-") as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        tiny_registry(models)
        runs = []
        if not args.only_rss:
            resnet_registry(models, mixed_precision=args.mixed_precision)
            report["tensorflow_devices"] = tensorflow_devices()
            slides = [CMU] if CMU.exists() and args.slides in ("all", "cmu") else []
            if args.slides in ("all", "generated"):
                side = 4096 if args.quick else 10_000
                t0 = time.perf_counter()
                slides.append(write_disc_pyramid(tmp / f"disc-{side}.tif", side, tissue_radius=args.tissue_radius))
                report["generate_larger_s"] = time.perf_counter() - t0
            for path in slides:
                print(f"{path.name}: {passes} alternating passes after 1 warm-up pass", flush=True)
                runs.append(efficiency(path, models, passes=passes, batch_size=args.batch_size, readers=args.readers))
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
    report["machine"] = machine_info(("numpy", "tensorflow-cpu", "tensorflow", "keras", "openslide-python", "openslide-bin"), device=args.device)
    report["load"] = load.stop()
    name = ("heatmap-quick" if args.quick else "heatmap") + ("-rss" if args.only_rss else "")
    publish(name, report, markdown(report))
    return 0


def markdown(r: dict) -> str:
    m, st = r["machine"], r["settings"]
    lines = [
        "# Slide heatmap benchmark",
        "",
        provenance("heatmap.py", m, ", --quick: a smoke test" if st["quick"] else "")
        + f" TensorFlow saw: {', '.join(r.get('tensorflow_devices', [])) or '—'}.",
        "",
        load_line(r["load"]),
        "",
    ]
    if r.get("efficiency"):
        lines += [
            f"ResNet50 (weights=None) + GAP + sigmoid at 224 px, batch {st['batch_size']}, level-0 tiles of 224 px, min tissue 0.5, "
            f"{st['readers']} reader thread(s){', mixed_float16' if st['mixed_precision'] else ''}. Model-only = forward passes on the same "
            "tiles already prepared in memory; end-to-end = `compute_heatmap` wall time, cold (open, thumbnail, tissue mask, reading and "
            "preparing tiles, inference, cache writes), model loaded. Headline (fixed in `bench/_stats.py`): ratio of medians = "
            "median(model-only s) ÷ median(end-to-end s) over alternating passes, warm-up excluded; a per-pass ratio above 1 is "
            "impossible (the machine drifted within the pass) and is counted, not quoted."
            + (f" The generated pyramid holds tissue in a central disc of radius {st['tissue_radius']} × its side; the rest is glass."
               if st.get("tissue_radius") is not None and st.get("slides") != "cmu" else ""),
            "",
            *headline_table(r["efficiency"], unit="tiles", item="tile"),
            "",
            "| slide | tiles | ratio of medians (goal) | model share of end-to-end wall | fixed per-slide s (share) | tile selection s | "
            "cold s (median) | cached re-run s (median) | re-run speed-up |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in r["efficiency"]:
            size = f"{e['level0'][0]:,}×{e['level0'][1]:,}"
            lines.append(
                f"| {e['slide']} ({size}) | {e['tiles']:,} | **{e['ratio_of_medians']:.3f}** (≥ {e['goal']}: {'met' if e['meets_goal'] else 'NOT met'}) "
                f"| {e['model_share_of_wall']:.1%} | {e['fixed_per_slide_s']:.2f} ({e['fixed_share_of_wall']:.1%}) | {e['tissue_select_s']:.3f} "
                f"| {e['wall_s']:.2f} | {e['warm_rerun_median_s']:.3f} | {e['cache_speedup']:.0f}× |"
            )
    if r.get("peak_rss"):
        lines += ["", "Peak RSS (VmHWM), one heatmap per fresh process, tiny CNN, level-2 tiles of 96 px (384 level-0 px), no cache:", "",
                  "| slide | grid tiles | tissue tiles scored | run s | peak RSS MB |", "|---|---|---|---|---|"]
        for row in r["peak_rss"]:
            lines.append(f"| {row['side']:,}² ({row['file_mb']:.0f} MB file) | {row['grid_tiles']:,} | {row['tiles']:,} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} |")
        lines.append(f"\nRatio 100,000² / 25,000²: **{r['peak_rss_ratio']:.3f}** (goal ≤ 1.2, and below 1.5 GB).")
    lines += ["", "Raw per-pass seconds and CPU-seconds: `heatmap.json` (`efficiency[].samples`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
