"""Viewer payloads (engine.overlay): per-tile arrays round-trip, any numeric column is a layer, GeoJSON annotations."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest

from engine import overlay
from engine.errors import InvalidInputError
from engine.heatmap import HeatmapResult, TileGrid
from engine.render import COLORMAPS, colour_lut
from engine.tissue import TissueMask


def result(n=5) -> HeatmapResult:
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], n)
    return HeatmapResult(grid=TileGrid(1000, 800, 100, 100, 0, 1.0, 100, 96), x=np.arange(n) * 100, y=np.full(n, 200), tissue=rng.random(n),
                         probabilities=p, scores=p[:, 0] + p[:, 2], cached=np.zeros(n, bool), classes=("aca", "n", "scc"), model_id="m",
                         model_sha256="ab" * 32, threshold=0.4365, slide_name="s.svs", slide_hash="quickhash1:xyz")


def decode(s, dtype):
    return np.frombuffer(base64.b64decode(s), dtype)


def test_tiles_payload_round_trips_and_orders_layers():
    r = result()
    p = overlay.tiles_payload(r, job_id="heatmap-1", score_name="p(malignant)")
    json.dumps(p)  # JSON-ready
    np.testing.assert_array_equal(decode(p["x"], "<i4"), r.x)
    np.testing.assert_array_equal(decode(p["columns"]["score"], "<f8"), r.scores)  # float64: binarise at the threshold is exact
    assert list(p["columns"]) == ["score", "p_aca", "p_n", "p_scc", "tissue"]
    assert p["threshold"] == 0.4365 and p["slide_hash"] == r.slide_hash and p["score_name"] == "p(malignant)"
    assert p["tile0"] == 100 and p["n"] == 5 and "heatmap-1" in p["id"]


def test_any_numeric_column_becomes_a_layer(monkeypatch):
    r = result()
    frame = r.to_frame().assign(uncertainty=np.linspace(0, 2, 5), cluster=np.array([0, 1, 2, 1, 0]), in_domain=np.array([True, False, True, True, True]), note=list("abcde"))
    monkeypatch.setattr(HeatmapResult, "to_frame", lambda self: frame)
    cols = overlay.tiles_payload(r)["columns"]
    assert {"uncertainty", "cluster", "in_domain"} <= set(cols) and "note" not in cols and "cached" not in cols and "x" not in cols
    np.testing.assert_array_equal(decode(cols["in_domain"], "<f8"), [1, 0, 1, 1, 1])
    assert overlay.numeric_columns(pd.DataFrame({"x": [1], "a": [0.5], "b": ["t"]})) == ["a"]


def test_grid_mask_and_colour_tables():
    g = overlay.grid_payload(np.array([0, 144]), np.array([288, 288]), 144)
    np.testing.assert_array_equal(decode(g["y"], "<i4"), [288, 288])
    mask = np.zeros((30, 40), bool)
    mask[5:10, 10:30] = True
    m = overlay.mask_payload(TissueMask(mask, 25.0, 25.0, 0.8))
    assert m["width0"] == 1000 and m["height0"] == 750
    from io import BytesIO

    from PIL import Image

    png = np.asarray(Image.open(BytesIO(base64.b64decode(m["png"].split(",", 1)[1]))))
    np.testing.assert_array_equal(png > 127, mask)
    luts = overlay.colormaps_payload()
    assert set(luts) == set(COLORMAPS)
    np.testing.assert_array_equal(decode(luts["viridis"], np.uint8).reshape(256, 3), colour_lut("viridis"))  # one source of colours


QUPATH = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "id": "a", "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [200, 10], [200, 150], [10, 10]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[[[0, 0], [5, 0], [5, 5], [0, 0]]], [[[9, 9], [12, 9], [12, 12], [9, 9]]]]},
         "properties": {"name": "islands"}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [100.5, 50.25]]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7, 8]}, "properties": {"objectType": "detection"}},
    ],
}


def test_qupath_geojson_is_read_in_level0_pixels():
    shapes = overlay.parse_geojson(json.dumps(QUPATH).encode(), name="qupath.geojson")
    assert [s["type"] for s in shapes] == ["polygon", "polygon", "polygon", "line", "point"]
    assert shapes[0]["label"] == "Tumor" and shapes[0]["colour"] == [200, 0, 0] and shapes[0]["rings"][0][1] == [200.0, 10.0]
    assert shapes[1]["label"] == shapes[2]["label"] == "islands" and shapes[1]["colour"] is None
    assert shapes[3]["rings"] == [[[0.0, 0.0], [100.5, 50.25]]] and shapes[4]["label"] == "detection"
    # a JSON list of features and a single feature (other QuPath export forms), and a UTF-8 BOM
    assert len(overlay.parse_geojson(json.dumps(QUPATH["features"]))) == 5
    assert len(overlay.parse_geojson(b"\xef\xbb\xbf" + json.dumps(QUPATH["features"][0]).encode())) == 1


@pytest.mark.parametrize("data, words", [
    (b"\x89PNG not json", "is not a JSON file"),
    (b'{"type": "Topology"}', "not GeoJSON"),
    (json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, "x"]]]}}).encode(), "not valid GeoJSON"),
    (json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, float("nan")]]]}}).encode(), "not valid GeoJSON"),
    (json.dumps({"type": "Feature", "geometry": {"type": "Hexagon", "coordinates": []}}).encode(), "unknown geometry"),
])
def test_bad_annotation_files_are_messages(data, words):
    with pytest.raises(InvalidInputError) as info:
        overlay.parse_geojson(data, name="notes.geojson")
    assert words in str(info.value) and "notes.geojson" in str(info.value)


def test_too_many_shapes_is_refused(monkeypatch):
    monkeypatch.setattr(overlay, "MAX_SHAPES", 3)
    with pytest.raises(InvalidInputError, match="more than 3"):
        overlay.parse_geojson(json.dumps(QUPATH))
