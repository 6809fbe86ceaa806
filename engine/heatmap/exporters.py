"""The files of a heatmap result: tiles CSV, heatmap PNG, GeoJSON (QuPath), summary and run manifest.

>>> from engine.heatmap import exporters
>>> exporters.save(result, "out/", thumbnail=thumb)        # the five files, as the job writes them
>>> exporters.export_files(result, anonymise=True)         # {file name: bytes} for the page's downloads
>>> exporters.load("out/")                                  # the HeatmapResult back

:func:`result_files` is the one builder of the five files; :func:`save` writes them, and
:func:`export_files` names them for download (``<slide stem>_<file>``, or the pseudonym's stem).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from engine.exports import safe_csv
from engine.heatmap.grid import TileGrid
from engine.heatmap.result import HeatmapResult, builtin_columns, frozen

FILE_NAMES = ("tiles.csv", "heatmap.png", "tiles.geojson", "summary.json", "manifest.json")


def tiles_csv(result: HeatmapResult, path=None) -> str | None:
    """The per-tile table (:meth:`HeatmapResult.to_frame`) as CSV text, or written to ``path``."""
    data = safe_csv(result.to_frame(), path, float_format="%.6g")  # escaped for spreadsheets (engine.exports)
    return None if path is not None else data.decode()


def summary(result: HeatmapResult, threshold: float | None = None, top_k: int = 10) -> dict:
    """Slide-level statistics of the tissue tiles' scores, with the out-of-domain share and its warning."""
    from engine.predict import out_of_domain_warning

    t = result.threshold if threshold is None else float(threshold)
    s = result.scores
    k = min(top_k, len(s))
    flags = result.columns.get("in_domain")
    unc = result.columns.get("uncertainty")
    return {
        "slide": result.slide_name,
        "model_id": result.model_id,
        "n_tiles": int(len(s)),
        "n_grid_tiles": int(result.grid.n_tiles),
        "threshold": t,
        "mean_score": float(s.mean()) if len(s) else None,
        "median_score": float(np.median(s)) if len(s) else None,
        "max_score": float(s.max()) if len(s) else None,
        "fraction_over_threshold": float((s >= t).mean()) if len(s) else None,
        "top_k": int(top_k),
        "top_k_mean": float(np.sort(s)[::-1][:k].mean()) if k else None,
        "in_domain_fraction": result.in_domain_fraction,
        "out_of_domain_warning": out_of_domain_warning(flags.tolist(), "tissue tiles of this slide") if flags is not None else None,
        "mean_uncertainty": float(np.nanmean(unc)) if unc is not None and len(unc) else None,
        "percentile_note": PERCENTILE_NOTE,
        "complete": bool(result.complete),
    }


#: what percentile mode means (said by the page and in summary.json)
PERCENTILE_NOTE = ("Percentile mode ranks this slide's tiles against each other: it is relative (the top tile is always 1.0), "
                   "even on a slide where every score is low or every tile is out of domain.")


def geojson(result: HeatmapResult, threshold: float | None = None) -> dict:
    """A FeatureCollection QuPath imports as detections (one square per tile, measurements attached)."""
    t = result.threshold if threshold is None else float(threshold)
    features = []
    size = int(result.grid.tile0)
    for i in range(len(result.x)):
        x, y = int(result.x[i]), int(result.y[i])
        positive = bool(result.scores[i] >= t)
        measurements = {"score": float(result.scores[i]), "tissue_fraction": float(result.tissue[i])}
        measurements.update({f"p_{c}": float(result.probabilities[i, j]) for j, c in enumerate(result.classes)})
        measurements.update({name: float(values[i]) for name, values in result.columns.items()})  # booleans as 0/1 (QuPath measurements are numbers)
        features.append({
            "type": "Feature",
            "id": f"tile-{x}-{y}",
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": "Positive" if positive else "Negative", "color": [200, 0, 0] if positive else [0, 0, 200]},
                "measurements": measurements,
                "isLocked": False,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def _versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("openslide-python", "openslide-bin", "tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-image", "tifffile"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def manifest(result: HeatmapResult) -> dict:
    """How the result was made: slide and model identity, grid, parameters, timings, package versions."""
    return {
        "kind": "histodash-heatmap",
        "version": 1,
        "slide": {"name": result.slide_name, "hash": result.slide_hash},
        "model": {"id": result.model_id, "sha256": result.model_sha256, "classes": list(result.classes), "threshold": result.threshold},
        "grid": result.grid.to_dict(),
        "params": dict(result.params),
        "timings": dict(result.timings),
        "n_tiles": result.n_tiles,
        "n_cached": int(result.cached.sum()) if len(result.cached) else 0,
        "complete": result.complete,
        "versions": _versions(),
    }


def result_files(result: HeatmapResult, *, thumbnail: np.ndarray | None = None, threshold: float | None = None, png: bytes | None = None) -> dict[str, bytes]:
    """The five result files as ``{name: bytes}`` in :data:`FILE_NAMES` order (``png``: an already rendered
    heatmap PNG to use as is; otherwise the default rendering over ``thumbnail``)."""
    if png is None:
        from engine.heatmap.overlay import render_overlay
        from engine.render import png_bytes

        png = png_bytes(render_overlay(result, thumbnail))
    return {
        "tiles.csv": tiles_csv(result).encode(),
        "heatmap.png": png,
        "tiles.geojson": json.dumps(geojson(result, threshold)).encode(),
        "summary.json": json.dumps(summary(result, threshold), indent=2).encode(),
        "manifest.json": json.dumps(manifest(result), indent=2, default=str).encode(),
    }


def save(result: HeatmapResult, out_dir: Path | str, *, thumbnail: np.ndarray | None = None, threshold: float | None = None) -> dict[str, Path]:
    """Write :func:`result_files` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in result_files(result, thumbnail=thumbnail, threshold=threshold).items():
        paths[name] = out / name
        paths[name].write_bytes(data)
    return paths


def export_files(result: HeatmapResult, *, thumbnail: np.ndarray | None = None, threshold: float | None = None, anonymise: bool = False,
                 png: bytes | None = None) -> dict[str, bytes]:
    """What the page offers for download: ``{file name: bytes}`` (tiles CSV, heatmap PNG, GeoJSON, summary, manifest).

    File names start with the slide's stem, or with its pseudonym when ``anonymise``. No server paths.
    """
    result = result.anonymised() if anonymise else result
    stem = Path(result.slide_name).stem
    return {f"{stem}_{name}": data for name, data in result_files(result, thumbnail=thumbnail, threshold=threshold, png=png).items()}


def load(out_dir: Path | str) -> HeatmapResult:
    """Read back a result written by :func:`save`."""
    out = Path(out_dir)
    meta = json.loads((out / "manifest.json").read_text())
    frame = pd.read_csv(out / "tiles.csv")
    classes = tuple(meta["model"]["classes"])
    probs = frame[[f"p_{c}" for c in classes]].to_numpy(np.float64) if len(frame) else np.zeros((0, len(classes)))
    columns = {c: frame[c].to_numpy() for c in frame.columns if c not in builtin_columns(classes) and pd.api.types.is_numeric_dtype(frame[c])}
    return HeatmapResult(
        grid=TileGrid(**meta["grid"]), x=frame["x"].to_numpy(np.int64), y=frame["y"].to_numpy(np.int64),
        tissue=frame["tissue"].to_numpy(np.float64), probabilities=probs, scores=frame["score"].to_numpy(np.float64),
        cached=frame["cached"].to_numpy(bool), classes=classes, model_id=meta["model"]["id"],
        model_sha256=meta["model"]["sha256"], threshold=float(meta["model"]["threshold"]),
        slide_name=meta["slide"]["name"], slide_hash=meta["slide"]["hash"], params=frozen(meta.get("params", {})),
        timings=frozen(meta.get("timings", {})), complete=bool(meta.get("complete", True)), columns=columns,
    )

