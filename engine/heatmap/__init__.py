"""Slide heatmaps: tiling, streaming cached inference, the result, its files and pictures, the job.

>>> from engine.heatmap import HeatmapRun, TileGrid
>>> from engine.predict import TilePredictor
>>> slide = open_slide("CMU-1-Small-Region.svs")
>>> predictor = TilePredictor.from_registry("lc25000-lung-cnn")
>>> grid = TileGrid.for_slide(slide, predictor.card)          # tiles at the card's µm/px
>>> result = HeatmapRun(predictor).run(slide, grid)             # cached per tile; resumable
>>> result.to_csv("tiles.csv"); result.summary()

The package, one job per module:

* :mod:`~engine.heatmap.grid` — :class:`TileGrid`: where tiles are (level-0 coordinates) and how they are read.
* :mod:`~engine.heatmap.inference` — :class:`HeatmapRun`: streaming, cached, batched inference on the
  public :class:`engine.predict.TilePredictor` API; tiles below ``min_tissue`` (:mod:`engine.tissue`) are skipped.
* :mod:`~engine.heatmap.result` — :class:`HeatmapResult`: the frozen scores of one slide.
* :mod:`~engine.heatmap.exporters` — CSV, GeoJSON (QuPath detections), summary, manifest, the five files.
* :mod:`~engine.heatmap.overlay` — modes raw / percentiles / binarise / extreme, PNG overlay, plotly figure
  (colours, blend and blur from :mod:`engine.render`).
* :mod:`~engine.heatmap.job` — :func:`compute_heatmap` (slide path → result) and :func:`run_job` (job kind ``heatmap``).
* :mod:`~engine.heatmap.cohort` — :func:`cohort_scores`: one row per slide of a folder.

Every public name is importable from ``engine.heatmap`` itself.
"""

from engine.errors import Cancelled
from engine.heatmap.cohort import cohort_scores
from engine.heatmap.exporters import FILE_NAMES, PERCENTILE_NOTE
from engine.heatmap.grid import TileGrid
from engine.heatmap.inference import CACHE_NAMESPACE, HeatmapRun
from engine.heatmap.job import compute_heatmap, run_job, thumbnail_and_mask
from engine.heatmap.overlay import (
    DEFAULT_THRESHOLD,
    EXTREME_HIGH,
    EXTREME_LOW,
    LAYERS,
    MODES,
    heatmap_figure,
    layer_values,
    mode_values,
    render_overlay,
    value_canvas,
)
from engine.heatmap.result import HeatmapResult
from engine.render import colour_lut, png_bytes

__all__ = [
    "CACHE_NAMESPACE", "DEFAULT_THRESHOLD", "EXTREME_HIGH", "EXTREME_LOW", "FILE_NAMES", "LAYERS", "MODES", "PERCENTILE_NOTE", "Cancelled", "HeatmapResult", "HeatmapRun",
    "TileGrid", "cohort_scores", "colour_lut", "compute_heatmap", "heatmap_figure", "layer_values", "mode_values", "png_bytes", "render_overlay", "run_job",
    "thumbnail_and_mask", "value_canvas",
]
