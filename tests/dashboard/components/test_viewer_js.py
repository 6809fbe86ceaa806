"""The viewer's client-side heatmap arithmetic (frontend/heatmap.js, run by node) against the engine's Python.

mode_values and value_canvas are compared with engine.heatmap, the Gaussian with scipy's gaussian_filter, the
normalised blur with engine.render.normalized_blur, the colour lookup with engine.render.colorize.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest

from dashboard.components.viewer import FRONTEND
from engine import render
from engine.heatmap import MODES, HeatmapResult, TileGrid, mode_values, value_canvas
from engine.overlay import b64

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (make run / make test install nodejs with npm)")

RUNNER = r"""
const H = require(process.argv[1]);
const f64 = (b) => H.decode(b, Float64Array);
const out = (a) => Buffer.from(new Float64Array(a).buffer).toString("base64");
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const q = JSON.parse(input);
  const r = {};
  const s = f64(q.scores);
  r.modes = {};
  for (const m of H.MODES) r.modes[m] = out(H.modeValues(s, m, q.threshold));
  const xs = H.decode(q.x, Int32Array), ys = H.decode(q.y, Int32Array);
  const c = H.valueCanvas(xs, ys, f64(q.values), q.tile0, q.scale, q.w, q.h);
  r.mean = out(c.mean);
  r.covered = out(Array.from(c.covered));
  const a = H.valueCanvas(xs, ys, f64(q.values), q.stride0, q.stride0, q.aw, q.ah);  // tiles = canvas pixels: the placing path
  r.aligned = out(a.mean);
  r.blurred = out(H.blurCanvas(c.mean, c.covered, q.w, q.h, q.sigma));
  r.wide = out(H.blurCanvas(c.mean, c.covered, q.w, q.h, 12.0));
  r.gauss = out(H.gaussianFilter(f64(q.field), q.fw, q.fh, q.fsigma));
  const lut = H.decode(q.lut, Uint8Array);
  const rgba = H.colourise(c.mean, c.covered, lut, new Uint8ClampedArray(4 * q.w * q.h));
  r.rgba = Buffer.from(rgba.buffer).toString("base64");
  r.rint = [0.5, 1.5, 2.5, -0.5, 2.4999, 127.5, 128.5].map(H.rint);
  r.bar = H.scaleBar(q.um_per_px);
  process.stdout.write(JSON.stringify(r));
});
"""


def f64(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), "<f8")


def run_node(query: dict) -> dict:
    proc = subprocess.run([NODE, "-e", RUNNER, str(FRONTEND / "heatmap.js")], input=json.dumps(query), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def make_result(x, y, scores, tile0, stride0, w0, h0) -> HeatmapResult:
    n = len(x)
    grid = TileGrid(w0, h0, tile0, stride0, 0, 1.0, tile0, tile0)
    return HeatmapResult(grid=grid, x=np.asarray(x), y=np.asarray(y), tissue=np.ones(n), probabilities=np.c_[1 - scores, scores],
                         scores=np.asarray(scores, float), cached=np.zeros(n, bool), classes=("a", "b"), model_id="m", model_sha256="0" * 64,
                         threshold=0.4365, slide_name="s", slide_hash="h")


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(11)
    tile0, stride0, w0, h0 = 100, 50, 1230, 870  # half-overlapping tiles: several tiles per canvas pixel
    gx, gy = np.meshgrid(np.arange(0, w0 - tile0 + 1, stride0), np.arange(0, h0 - tile0 + 1, stride0))
    keep = rng.random(gx.size) < 0.7
    x, y = gx.ravel()[keep], gy.ravel()[keep]
    scores = rng.random(len(x))
    scores[:12] = np.round(scores[:12], 1)  # ties (percentile ranks average them)
    scores[12], scores[13], scores[14] = 0.4365, 0.3, 0.7  # exactly at the threshold and at the extreme bounds
    result = make_result(x, y, scores, tile0, stride0, w0, h0)
    scale, (h, w) = 20.0, (44, 62)
    field = rng.random((9, 13))
    query = {
        "scores": b64(scores, "float64"), "threshold": 0.4365, "x": b64(x, "int32"), "y": b64(y, "int32"),
        "values": b64(scores, "float64"), "tile0": tile0, "scale": scale, "w": w, "h": h, "sigma": 1.7,
        "stride0": stride0, "aw": int(np.ceil(w0 / stride0)), "ah": int(np.ceil(h0 / stride0)),
        "field": b64(field, "float64"), "fw": 13, "fh": 9, "fsigma": 6.0,  # a kernel wider than the array: repeated reflection
        "lut": b64(render.colour_lut("viridis"), "uint8"), "um_per_px": 2.37,
    }
    aligned = make_result(x, y, scores, stride0, stride0, w0, h0)  # the same tiles without overlap: one canvas pixel each
    return {"result": result, "aligned": aligned, "ashape": (query["ah"], query["aw"]), "scores": scores, "scale": scale, "shape": (h, w),
            "field": field, "out": run_node(query)}


@pytest.mark.parametrize("mode", MODES)
def test_mode_values_match_the_engine(case, mode):
    js = f64(case["out"]["modes"][mode])
    py = mode_values(case["scores"], mode, threshold=0.4365)
    np.testing.assert_array_equal(np.isnan(js), np.isnan(py))
    np.testing.assert_array_equal(js[~np.isnan(js)], py[~np.isnan(py)])  # bit for bit, ties and bounds included


def test_value_canvas_matches_the_engine(case):
    mean, covered = value_canvas(case["result"], case["scores"], case["scale"], case["shape"])
    js_mean = f64(case["out"]["mean"]).reshape(case["shape"])
    np.testing.assert_array_equal(f64(case["out"]["covered"]).reshape(case["shape"]).astype(bool), covered)
    np.testing.assert_allclose(js_mean[covered], mean[covered], rtol=0, atol=1e-12)


def test_aligned_tiles_take_the_placing_path_with_the_same_result(case):
    mean, covered = value_canvas(case["aligned"], case["scores"], 50.0, case["ashape"])
    js = f64(case["out"]["aligned"]).reshape(case["ashape"])
    np.testing.assert_array_equal(np.isnan(js), ~covered)
    np.testing.assert_allclose(js[covered], mean[covered], rtol=0, atol=1e-12)  # the engine's summed areas round; placing does not
    r, c = case["aligned"].y // 50, case["aligned"].x // 50
    np.testing.assert_array_equal(js[r, c], case["scores"])  # each tile's own value, exactly


def test_blur_matches_scipy(case):
    from scipy.ndimage import gaussian_filter

    np.testing.assert_allclose(f64(case["out"]["gauss"]).reshape(9, 13), gaussian_filter(case["field"], 6.0), rtol=0, atol=1e-12)
    mean, covered = value_canvas(case["result"], case["scores"], case["scale"], case["shape"])
    ref = render.normalized_blur(mean, covered, 1.7)
    js = f64(case["out"]["blurred"]).reshape(case["shape"])
    np.testing.assert_allclose(js[covered], ref[covered], rtol=0, atol=1e-12)
    assert np.isnan(js[~covered]).all()
    # a wide kernel (radius 48 px) runs on a 2× pooled canvas: close to scipy's exact result, not equal
    exact = render.normalized_blur(mean, covered, 12.0)
    wide = f64(case["out"]["wide"]).reshape(case["shape"])
    assert np.abs(wide[covered] - exact[covered]).max() < 0.03


def test_colours_are_the_engine_lookup(case):
    mean, covered = value_canvas(case["result"], case["scores"], case["scale"], case["shape"])
    rgba = np.frombuffer(base64.b64decode(case["out"]["rgba"]), np.uint8).reshape(*case["shape"], 4)
    ref = render.colorize(mean, "viridis")  # the engine's lookup (float32 index, round half to even)
    # (a value within rounding noise of a colour-step boundary may fall either side of it)
    boundary = np.abs((np.nan_to_num(mean).astype(np.float32) * np.float32(255)) % 1 - 0.5) < 1e-4
    ok = covered & ~boundary
    assert ok.sum() > 0.9 * covered.sum()
    np.testing.assert_array_equal(rgba[ok][:, :3], ref[ok])
    assert (rgba[covered][:, 3] == 255).all() and (rgba[~covered][:, 3] == 0).all()
    assert case["out"]["rint"] == [float(v) for v in np.rint([0.5, 1.5, 2.5, -0.5, 2.4999, 127.5, 128.5])]


def test_scale_bar_is_a_round_length(case):
    bar = case["out"]["bar"]
    assert bar["um"] in (100, 200, 500, 1000) and bar["label"].endswith(("µm", "mm"))
    assert bar["px"] == pytest.approx(bar["um"] / 2.37)
    assert 50 <= bar["px"] <= 250
