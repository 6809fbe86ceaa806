"""Benchmark: training throughput with tiles read from files vs from in-memory arrays.

Run from the repository root (a plain script; it puts the repository root on ``sys.path``)::

    .venv/bin/python bench/train.py [--n 1024] [--px 96] [--epochs 3]

What it measures, in one process, on the same tiles, model and augmentation:

* **files**: the training job's own input pipeline (:func:`engine.training.run.make_dataset`):
  ``tf.data`` reads the PNG cache written by :func:`engine.training.datasets.prepare`, decodes in
  parallel (``workers`` threads), augments, batches and prefetches;
* **memory**: the same augmentation and batching from a ``uint8`` array already in memory
  (:func:`engine.training.run.make_array_dataset`) — the upper bound the file pipeline is held to.

Both feed ``model.fit`` of the same compiled ``small_cnn`` (batch 32). After one warm-up epoch per
pipeline (graph tracing), ``--epochs`` timed epochs are run per pipeline, alternating
files/memory so that machine noise hits both alike; images/s is the median over epochs. The goal is
files ÷ memory ≥ 0.8. The one-off cost of building the PNG cache (decode + resize with
:func:`engine.imageio.resize_tile`) and the pipelines' raw throughput without a model are reported
too. Tiles: ``$HISTODASH_SHARED_DATA/lc25000-lung-224`` (default ``../shared/data``) when present,
else synthetic 224 px tiles. Results: ``bench/results/train.json`` and ``bench/results/train.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("HISTODASH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_tiles(n: int, workdir: Path):
    """``(paths, labels, source)``: lc25000 tiles when available, else synthetic PNG tiles."""
    lc = SHARED / "lc25000-lung-224"
    if (lc / "labels.csv").is_file():
        import pandas as pd

        df = pd.read_csv(lc / "labels.csv").sample(frac=1.0, random_state=0).head(n)
        return [str(lc / f) for f in df["filename"]], df["label"].astype(int).to_numpy(), f"lc25000-lung-224 ({len(df)} tiles, 224 px JPEG)"
    from PIL import Image

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(n):
        label = i % 2
        arr = np.clip(rng.normal(150 - 60 * label, 40, (224, 224, 3)), 0, 255).astype(np.uint8)
        p = workdir / f"syn_{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
        labels.append(label)
    return paths, np.array(labels), f"synthetic ({n} tiles, 224 px PNG)"


def load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="tiles")
    parser.add_argument("--px", type=int, default=96, help="input px (small_cnn default 96)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="parallel decode threads of the file pipeline")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train"), help="output path without suffix")
    args = parser.parse_args(argv)

    from engine.training.config import Augmentation
    from engine.training.datasets import TileDataset, prepare

    load_before = load_avg()
    with tempfile.TemporaryDirectory(prefix="histodash-bench-train-") as tmp:
        tmp = Path(tmp)
        paths, y, source = load_tiles(args.n, tmp)
        ds = TileDataset(Path(paths[0]).parent, "bench", tuple(paths), tuple(map(str, y)), tuple(paths), ("0", "1"), False)
        t0 = time.perf_counter()
        data = prepare(ds, args.px, cache_root=tmp / "cache", workers=args.workers)
        prep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = prepare(ds, args.px, cache_root=tmp / "cache", workers=args.workers)
        prep_cached_s = time.perf_counter() - t0
        assert again.files == data.files

        from PIL import Image

        from engine.architectures import build_model
        from engine.runtime import keras, tensorflow
        from engine.training.run import make_array_dataset, make_dataset

        tf, k = tensorflow(), keras()
        k.utils.set_random_seed(0)
        x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in data.files])
        aug = Augmentation()  # the default training augmentation
        pipes = {
            "files": lambda: make_dataset(data.files, data.y, px=args.px, batch_size=args.batch_size, training=True, augmentation=aug, seed=0, workers=args.workers),
            "memory": lambda: make_array_dataset(x, data.y, batch_size=args.batch_size, training=True, augmentation=aug, seed=0, workers=args.workers),
        }

        # raw pipeline throughput (no model): one pass each after a warm-up pass
        raw = {}
        for name, make in pipes.items():
            pipe = make()
            for _ in pipe:
                pass
            t0 = time.perf_counter()
            count = sum(int(b[0].shape[0]) for b in pipe)
            raw[name] = round(count / (time.perf_counter() - t0), 1)

        model = build_model("small_cnn", args.px, 2)
        model.compile(optimizer=k.optimizers.Adam(1e-3), loss=k.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        datasets = {name: make() for name, make in pipes.items()}
        for d in datasets.values():  # warm-up: tracing
            model.fit(d, epochs=1, verbose=0, shuffle=False)
        rates = {name: [] for name in datasets}
        for _ in range(args.epochs):
            for name, d in datasets.items():
                t0 = time.perf_counter()
                model.fit(d, epochs=1, verbose=0, shuffle=False)
                rates[name].append(len(data.files) / (time.perf_counter() - t0))
        med = {name: round(statistics.median(v), 1) for name, v in rates.items()}
        ratio = round(med["files"] / med["memory"], 3)

    result = {
        "benchmark": "training images/s: tf.data from cached PNG files vs from in-memory uint8 arrays",
        "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "data": source,
        "n_tiles": len(data.files),
        "model": "small_cnn",
        "input_px": args.px,
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "augmentation": "default (flips, 90° rotations, zoom 0.1, shift 0.1, colour jitter 0.05)",
        "timed_epochs_per_pipeline": args.epochs,
        "images_per_s": med,
        "images_per_s_all_epochs": {k_: [round(v, 1) for v in vs] for k_, vs in rates.items()},
        "ratio_files_over_memory": ratio,
        "goal": ">= 0.8",
        "meets_goal": ratio >= 0.8,
        "pipeline_only_images_per_s": raw,
        "prepare_cache_s": round(prep_s, 2),
        "prepare_cache_images_per_s": round(len(data.files) / prep_s, 1),
        "prepare_from_warm_cache_s": round(prep_cached_s, 2),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "keras": k.__version__, "load_avg_before": load_before, "load_avg_after": load_avg()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Training input pipeline: files vs memory",
        "",
        f"{result['date']} · {source} · small_cnn at {args.px} px, batch {args.batch_size}, default augmentation · "
        f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__} · load average before {load_before}, after {result['machine']['load_avg_after']}",
        "",
        "| pipeline | training images/s (median of epochs) | all timed epochs | pipeline alone, images/s |",
        "|---|---|---|---|",
        *(f"| {name} | {med[name]} | {', '.join(f'{v:.0f}' for v in rates[name])} | {raw[name]} |" for name in med),
        "",
        f"**files ÷ memory = {ratio}** (goal ≥ 0.8: {'met' if ratio >= 0.8 else 'NOT met'}).",
        "",
        f"One-off PNG cache build (decode + resize_tile, {args.workers} threads): {prep_s:.1f} s ({result['prepare_cache_images_per_s']} images/s); "
        f"a second run over a warm cache (read + hash only): {prep_cached_s:.1f} s.",
        "",
        "Reproduce: `.venv/bin/python bench/train.py` "
        + " ".join(f"--{k_.replace('_', '-')} {v}" for k_, v in (("n", args.n), ("px", args.px), ("epochs", args.epochs))),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print(json.dumps({k_: result[k_] for k_ in ("images_per_s", "ratio_files_over_memory", "pipeline_only_images_per_s", "prepare_cache_s")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
