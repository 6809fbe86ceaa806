"""What the slide viewer draws over a slide, as small JSON-ready payloads (the browser does the drawing).

* :func:`tiles_payload` — one heatmap result as per-tile arrays: ``x``, ``y`` (level 0) and every numeric
  per-tile column of :meth:`HeatmapResult.to_frame` (``score``, ``p_<class>``…, ``tissue``, and whatever
  later branches add: ``in_domain``, ``uncertainty``, ``cluster``…). No column list is written here: any
  numeric column becomes a selectable layer in the viewer.
* :func:`grid_payload` — the tiles a run will score (before it runs) or has scored.
* :func:`mask_payload` — the tissue mask as a small PNG with its level-0 scale.
* :func:`colormaps_payload` — 256 × 3 lookup tables from :mod:`engine.render` (one source of colours for the
  PNG export, the CLI, Grad-CAM and the viewer).
* :func:`parse_geojson` — annotations from a GeoJSON file (a QuPath export) as level-0 shapes.

Arrays travel as base64 of little-endian ``int32`` (coordinates) / ``float64`` (values, NaN = missing):
a few bytes per tile, sent once per page run.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math

import numpy as np

from engine.errors import InvalidInputError
from engine.render import COLORMAPS, colour_lut

#: frame columns that are geometry or bookkeeping, not per-tile measures
STRUCTURAL_COLUMNS = ("x", "y", "width", "height", "cached")
MAX_GEOJSON_BYTES = 20 * 1024 * 1024
MAX_SHAPES = 20_000
MAX_VERTICES = 500_000


def b64(values, dtype) -> str:
    """Base64 of ``values`` as a little-endian array of ``dtype``."""
    return base64.b64encode(np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<"))).tobytes()).decode("ascii")


def numeric_columns(frame) -> list[str]:
    """The per-tile measure columns of a result frame (numeric or boolean, not geometry/bookkeeping)."""
    out = []
    for name in frame.columns:
        if name in STRUCTURAL_COLUMNS:
            continue
        kind = frame[name].dtype.kind
        if kind in "biuf":
            out.append(str(name))
    return out


def tiles_payload(result, *, job_id: str | None = None, score_name: str | None = None) -> dict:
    """The per-tile arrays of one :class:`engine.heatmap.HeatmapResult` for the viewer.

    ``id`` names this result (the viewer redraws only when it changes); ``slide_hash`` ties it to its slide:
    the page passes it only when it equals the shown slide's hash. ``score_name``: what the model card calls
    the score (``p(malignant)``…).
    """
    frame = result.to_frame()
    found = numeric_columns(frame)
    # score first, then the class probabilities, then the rest (the viewer's layer menu keeps this order)
    columns = sorted(found, key=lambda c: (c != "score", not c.startswith("p_"), found.index(c)))
    g = result.grid
    return {
        "id": f"{job_id or 'result'}:{result.slide_hash}:{result.model_sha256[:12]}",
        "slide_hash": result.slide_hash,
        "n": int(result.n_tiles),
        "tile0": int(g.tile0),
        "stride0": int(g.stride0),
        "width0": int(g.width0),
        "height0": int(g.height0),
        "x": b64(result.x, "int32"),
        "y": b64(result.y, "int32"),
        "columns": {c: b64(frame[c].to_numpy(np.float64), "float64") for c in columns},
        "score_column": "score",
        "score_name": score_name or "score",
        "classes": list(result.classes),
        "threshold": float(result.threshold),
        "model_id": result.model_id,
    }


def grid_payload(x, y, tile0: int) -> dict:
    """Tile squares (level-0 top-left ``x``, ``y``, side ``tile0``) for the viewer's tile-grid layer."""
    return {"n": int(len(x)), "tile0": int(tile0), "x": b64(x, "int32"), "y": b64(y, "int32")}


def mask_payload(mask) -> dict:
    """A :class:`engine.tissue.TissueMask` as a PNG (white = tissue) with its level-0 px per mask px."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask.mask, np.uint8) * 255).save(buf, format="PNG", optimize=True)
    h, w = mask.mask.shape
    return {
        "png": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
        "width0": float(w * mask.scale_x), "height0": float(h * mask.scale_y),
    }


@functools.lru_cache(maxsize=4)
def colormaps_payload(names: tuple[str, ...] = COLORMAPS) -> dict:
    """``{name: base64 of 256 × 3 uint8}`` from :mod:`engine.render`'s colour tables (those of the PNG export)."""
    return {name: b64(colour_lut(name), "uint8") for name in names}


# --- GeoJSON annotations ------------------------------------------------------------------------


def _point(p) -> list[float]:
    if not isinstance(p, (list, tuple)) or len(p) < 2:
        raise ValueError("a coordinate is not [x, y]")
    x, y = float(p[0]), float(p[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError("a coordinate is not finite")
    return [round(x, 2), round(y, 2)]


def _shapes(geom, out: list) -> None:
    kind = geom.get("type") if isinstance(geom, dict) else None
    coords = geom.get("coordinates") if isinstance(geom, dict) else None
    if kind == "Polygon":
        out.append({"type": "polygon", "rings": [[_point(p) for p in ring] for ring in coords]})
    elif kind == "MultiPolygon":
        for poly in coords:
            out.append({"type": "polygon", "rings": [[_point(p) for p in ring] for ring in poly]})
    elif kind == "LineString":
        out.append({"type": "line", "rings": [[_point(p) for p in coords]]})
    elif kind == "MultiLineString":
        out.append({"type": "line", "rings": [[_point(p) for p in line] for line in coords]})
    elif kind == "Point":
        out.append({"type": "point", "rings": [[_point(coords)]]})
    elif kind == "MultiPoint":
        out.append({"type": "point", "rings": [[_point(p) for p in coords]]})
    elif kind == "GeometryCollection":
        for g in geom.get("geometries") or []:
            _shapes(g, out)
    elif kind is not None:
        raise ValueError(f"unknown geometry type {kind!r}")


def _colour(props: dict) -> list[int] | None:
    cls = props.get("classification")
    colour = (cls or {}).get("color") if isinstance(cls, dict) else None
    colour = colour if colour is not None else props.get("color")
    if isinstance(colour, (list, tuple)) and len(colour) >= 3:
        try:
            return [int(max(0, min(255, int(c)))) for c in colour[:3]]
        except (TypeError, ValueError):
            return None
    return None


def parse_geojson(data: bytes | str, *, name: str = "annotations") -> list[dict]:
    """Annotations of a GeoJSON file as ``[{"type": "polygon"|"line"|"point", "rings": [[[x, y], …], …],
    "label": str, "colour": [r, g, b] | None}, …]`` in level-0 pixels.

    Reads a FeatureCollection, a single Feature or geometry, or a JSON list of Features (QuPath writes all
    three, depending on version and what is exported). Coordinates are taken as level-0 pixels, as QuPath
    writes them. A file that is not GeoJSON raises :class:`InvalidInputError` naming the file.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_GEOJSON_BYTES:
        raise InvalidInputError(f"'{name}' is {len(raw) / 1e6:.1f} MB; annotation files up to {MAX_GEOJSON_BYTES // 2**20} MB are read.")
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"'{name}' is not a JSON file ({exc.__class__.__name__}).", "Export the annotations from QuPath as GeoJSON.") from exc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and "coordinates" in doc or isinstance(doc, dict) and doc.get("type") == "GeometryCollection":
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    elif isinstance(doc, list):
        features = doc
    else:
        raise InvalidInputError(f"'{name}' is JSON but not GeoJSON (no FeatureCollection, Feature or geometry).", "Export the annotations from QuPath as GeoJSON.")
    shapes: list[dict] = []
    vertices = 0
    try:
        for feature in features:
            if not isinstance(feature, dict):
                raise ValueError("a feature is not an object")
            props = feature.get("properties") or {}
            props = props if isinstance(props, dict) else {}
            cls = props.get("classification")
            label = props.get("name") or (cls.get("name") if isinstance(cls, dict) else None) or props.get("objectType") or ""
            found: list[dict] = []
            _shapes(feature.get("geometry"), found)
            for shape in found:
                shape["label"] = str(label)[:80]
                shape["colour"] = _colour(props)
                vertices += sum(len(r) for r in shape["rings"])
            shapes.extend(found)
            if len(shapes) > MAX_SHAPES or vertices > MAX_VERTICES:
                raise InvalidInputError(f"'{name}' has more than {MAX_SHAPES:,} shapes or {MAX_VERTICES:,} vertices; the viewer draws fewer.",
                                        "Export only the annotations (not every detection) from QuPath.")
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInputError(f"'{name}' is not valid GeoJSON: {exc}.", "Export the annotations from QuPath as GeoJSON.") from exc
    return shapes
