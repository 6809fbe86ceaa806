"""Benchmark: the training input pipeline alone, tiles read from files vs from in-memory arrays.

Run from the repository root (a plain script; it puts the repository root on ``sys.path``)::

    .venv/bin/python bench/train.py [--n 1024] [--passes 9] [--px 144 96]

What it measures, in one process, on the same tiles and the same default augmentation, with **no
model** (a model caps both pipelines at its own speed, so a ratio measured through ``model.fit``
cannot fail):

* **files**: the training job's own input pipeline (:func:`engine.training.run.make_dataset`):
  ``tf.data`` reads the cache written by :func:`engine.training.datasets.prepare`, decodes in
  parallel (``workers`` threads), augments, batches and prefetches;
* **memory**: the same augmentation and batching from a ``uint8`` array already in memory
  (:func:`engine.training.run.make_array_dataset`): the upper bound the file pipeline is held to.

One pass = one epoch of every tile through the pipeline, iterated to the end. The headline is
fixed by ``bench/_stats.py``: ratio of medians (memory seconds ÷ files seconds = files images/s ÷
memory images/s) over ``--passes`` alternating passes after one warm-up pass each, with the
per-pass spread and CPU-seconds per image beside it. It is measured at the shipped model's input
size (``models/lc25000-lung-cnn``: 144 px) and at the small CNN's 96 px. Goal: ≥ 0.9 at 144 px.
The one-off cost of building the cache is reported too. Tiles: ``$HISTODASH_SHARED_DATA/lc25000-lung-224``
(default ``../shared/data``) when present, else synthetic 224 px tiles. Results:
``bench/results/train.json`` and ``bench/results/train.md``.
"""

from __future__ import annotations

import argparse
import json
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
SHIPPED_MODEL_CARD = ROOT / "models" / "lc25000-lung-cnn" / "card.json"
GOAL = 0.9


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


def shipped_input_px() -> int:
    try:
        return int(json.loads(SHIPPED_MODEL_CARD.read_text())["input_px"])
    except (OSError, KeyError, ValueError):
        return 144


def measure_px(paths, y, px: int, args, workdir: Path) -> dict:
    """Cache build time and the files-vs-memory comparison at one input size."""
    from PIL import Image

    from engine.training.config import Augmentation
    from engine.training.datasets import TileDataset, prepare
    from engine.training.run import make_array_dataset, make_dataset

    ds = TileDataset(Path(paths[0]).parent, "bench", tuple(paths), tuple(map(str, y)), tuple(paths), ("0", "1"), False)
    t0 = time.perf_counter()
    data = prepare(ds, px, cache_root=workdir / "cache", workers=args.workers)
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = prepare(ds, px, cache_root=workdir / "cache", workers=args.workers)
    prep_cached_s = time.perf_counter() - t0
    assert again.files == data.files

    # the memory pipeline gets exactly the pixels the file pipeline decodes
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in data.files])
    aug = Augmentation()  # the default training augmentation
    common = dict(batch_size=args.batch_size, training=True, augmentation=aug, seed=0, workers=args.workers)
    files = make_dataset(data.files, data.y, px=px, **common)
    memory = make_array_dataset(x, data.y, **common)
    n = len(data.files)

    def epoch(pipeline) -> int:
        count = 0
        for batch, _ in pipeline:
            count += int(batch.shape[0])
        assert count == n
        return count

    print(f"{px} px: {n} tiles, {args.passes} alternating passes after 1 warm-up pass each", flush=True)
    comparison = compare((f"memory {px} px", lambda: epoch(memory)), (f"files {px} px", lambda: epoch(files)), passes=args.passes,
                         warmup_passes=1, items_per_pass=n)
    print(comparison.line("images"), flush=True)
    summary = comparison.summary()
    summary.update(input_px=px, prepare_cache_s=prep_s, prepare_cache_images_per_s=n / prep_s, prepare_from_warm_cache_s=prep_cached_s,
                   cache_file_example=Path(data.files[0]).name)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="tiles (default %(default)s)")
    parser.add_argument("--px", type=int, nargs="+", default=None, help="input sizes (default: the shipped model's, then 96)")
    parser.add_argument("--passes", type=int, default=9, help="counted alternating passes per size (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="parallel decode threads of the file pipeline (the training default)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)
    sizes = args.px or [shipped_input_px(), 96]

    load = MachineLoad().start()
    with tempfile.TemporaryDirectory(prefix="histodash-bench-train-") as tmp:
        tmp = Path(tmp)
        paths, y, source = load_tiles(args.n, tmp)
        from engine.runtime import keras, tensorflow

        tf, k = tensorflow(), keras()
        runs = [measure_px(paths, y, px, args, tmp) for px in sizes]
    machine = machine_info(("numpy", "tensorflow-cpu", "keras", "pillow"))
    report = {
        "benchmark": "training input pipeline alone (no model): tf.data from the prepared cache files vs from in-memory uint8 arrays",
        "machine": machine,
        "load": load.stop(),
        "data": source,
        "batch_size": args.batch_size,
        "decode_workers": args.workers,
        "augmentation": "default (flips, 90° rotations, zoom 0.1, shift 0.1, colour jitter 0.05)",
        "goal": f"ratio of medians >= {GOAL} at the shipped model's input size ({sizes[0]} px)",
        "meets_goal": runs[0]["ratio_of_medians"] >= GOAL,
        "runs": runs,
        "versions": {"tensorflow": tf.__version__, "keras": k.__version__},
    }
    publish("train", report, markdown(report), write=not args.no_write)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    head = r["runs"][0]
    lines = [
        "# Training input pipeline alone: files vs memory",
        "",
        f"{r['data']}; batch {r['batch_size']}, default augmentation, {r['decode_workers']} decode threads; no model. "
        + provenance("train.py", m),
        "",
        load_line(r["load"]),
        "",
        "Headline (fixed in `bench/_stats.py`): ratio of medians = median(memory s) ÷ median(files s) = files images/s ÷ memory images/s, "
        "over alternating passes (one pass = one epoch of every tile), warm-up excluded; spread = the per-pass ratios.",
        "",
        *headline_table(r["runs"], unit="images", item="image"),
        "",
        "| input px | ratio of medians | goal | cache build (one-off) | cache re-check (warm) |",
        "|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        goal = f"≥ {GOAL}" if run is head else "—"
        lines.append(f"| {run['input_px']} | **{run['ratio_of_medians']:.3f}** | {goal} | {run['prepare_cache_s']:.1f} s "
                     f"({run['prepare_cache_images_per_s']:.0f} images/s) | {run['prepare_from_warm_cache_s']:.2f} s |")
    lines += [
        "",
        f"Goal (files ÷ memory ≥ {GOAL} at {head['input_px']} px, the shipped model's input): **{'met' if r['meets_goal'] else 'NOT met'}**.",
        "",
        "Reproduce: `.venv/bin/python bench/train.py` (`--n`, `--passes`, `--px` to change the run).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
