"""Benchmark: tile prediction (the Predict page's engine call) end-to-end vs the model alone.

    .venv/bin/python bench/predict.py [--n 256] [--passes 9] [--batch-size 32 ...] [--device "note"]

The shipped model (``models/lc25000-lung-cnn``, 144 px) scores ``--n`` LC25000 tiles (224 px JPEG
files from ``$HISTODASH_SHARED_DATA/lc25000-lung-224``; synthetic PNG tiles when it is absent).

* **end-to-end**: :meth:`engine.predict.TilePredictor.predict_paths` with the result cache off
  (read and decode every file, resize, batch, forward pass);
* **model-only**: :meth:`~engine.predict.TilePredictor.predict_batch` on the same tiles already
  prepared in memory, in the same batches.

The headline is fixed by ``bench/_stats.py``: ratio of medians = median(model-only s) ÷
median(end-to-end s) over ``--passes`` alternating passes after one warm-up pass, with the
per-pass spread, CPU-seconds per tile, tiles/s and the share of the end-to-end time the model
takes (model-only median ÷ end-to-end median, the same number read as a share). One row per
``--batch-size``. No GPU was lent to the runs committed here: on a GPU host the same command runs
unchanged and ``--device`` records what the host is (TensorFlow's devices are written down too).
Results: ``bench/results/predict.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench._stats import MachineLoad, compare, headline_table, load_line, machine_info, provenance, publish  # noqa: E402
from engine.config import get_settings  # noqa: E402

SHARED = get_settings().shared_data  # HISTODASH_SHARED_DATA, read by Settings (default ../shared/data)
MODELS = ROOT / "models"
MODEL_ID = "lc25000-lung-cnn"


def tile_paths(n: int, workdir: Path) -> tuple[list[Path], str]:
    lc = SHARED / "lc25000-lung-224"
    if (lc / "labels.csv").is_file():
        import pandas as pd

        names = pd.read_csv(lc / "labels.csv").sample(frac=1.0, random_state=0)["filename"].head(n)
        return [lc / f for f in names], f"lc25000-lung-224 ({len(names)} tiles, 224 px JPEG files)"
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = workdir / f"syn_{i}.png"
        Image.fromarray(np.clip(rng.normal((180, 90, 160), 30, (224, 224, 3)), 0, 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths, f"synthetic ({n} tiles, 224 px PNG files)"


def measure(paths: list[Path], batch_size: int, passes: int) -> dict:
    from engine.imageio import read_image
    from engine.predict import TilePredictor
    from engine.registry import Registry

    predictor = TilePredictor(Registry(MODELS).get(MODEL_ID), cache=False, batch_size=batch_size)
    tensors = np.stack([predictor.prepare(read_image(p)).tensor for p in paths])  # not timed
    batches = [tensors[i : i + batch_size] for i in range(0, len(tensors), batch_size)]

    def model_only() -> None:
        for b in batches:
            predictor.predict_batch(b)

    def end_to_end() -> None:
        result = predictor.predict_paths(paths)
        assert result.n_errors == 0 and result.n_cached == 0

    print(f"batch {batch_size}: {len(paths)} tiles, {passes} alternating passes after 1 warm-up pass", flush=True)
    comparison = compare((f"model-only, batch {batch_size}", model_only), (f"predict_paths, batch {batch_size}", end_to_end),
                         passes=passes, warmup_passes=1, items_per_pass=len(paths))
    print(comparison.line("tiles"), flush=True)
    s = comparison.summary(ratio_at_most_one=True)
    s.update(batch_size=batch_size, model_share_of_end_to_end=s["ratio_of_medians"])
    return s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=256, help="tiles (default %(default)s)")
    parser.add_argument("--passes", type=int, default=9, help="counted alternating passes per batch size (default %(default)s)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one row per batch size (default 32)")
    parser.add_argument("--device", default=None, help="free-text note on the machine/accelerator, recorded with the results")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HISTODASH_HOME", tempfile.mkdtemp(prefix="histodash-bench-"))
    load = MachineLoad().start()
    with tempfile.TemporaryDirectory(prefix="histodash-bench-predict-") as tmp:
        paths, source = tile_paths(args.n, Path(tmp))
        from engine.runtime import tensorflow

        devices = [f"{d.device_type}:{d.name}" for d in tensorflow().config.list_physical_devices()]
        runs = [measure(paths, b, args.passes) for b in args.batch_size]
    report = {
        "benchmark": f"tile prediction with {MODEL_ID}: TilePredictor.predict_paths (cache off) vs predict_batch on prepared tiles",
        "data": source, "model": MODEL_ID, "tensorflow_devices": devices,
        "machine": machine_info(("numpy", "tensorflow-cpu", "tensorflow", "keras", "pillow"), device=args.device),
        "load": load.stop(), "runs": runs,
    }
    publish("predict", report, markdown(report), write=not args.no_write)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Tile prediction benchmark: end-to-end vs model-only",
        "",
        f"{r['data']}; model `{r['model']}`. " + provenance("predict.py", m) + f" TensorFlow saw: {', '.join(r['tensorflow_devices'])}.",
        "",
        load_line(r["load"]),
        "",
        "Headline (fixed in `bench/_stats.py`): ratio of medians = median(model-only s) ÷ median(end-to-end s) = the share of the "
        "end-to-end time the model takes; alternating passes, warm-up excluded; per-pass ratios above 1 are impossible and counted.",
        "",
        *headline_table(r["runs"], unit="tiles", item="tile"),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
