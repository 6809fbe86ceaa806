/*
 * HistoDash slide viewer: the heatmap arithmetic, free of any DOM (node runs it in the tests).
 *
 * The same definitions as the engine (engine.heatmap): mode_values (raw / percentiles / binarise /
 * extreme), value_canvas (tile squares averaged onto a canvas, rounded to the nearest canvas pixel edge),
 * the normalised Gaussian blur of engine.render.normalized_blur (scipy.ndimage.gaussian_filter: mode
 * "reflect", truncate 4.0) and the colour lookup of engine.render.lut_index (rint(float32(value) * 255), half to
 * even as numpy does). The colour tables themselves come from engine.render, sent by the page.
 */
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.HistoHeatmap = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  const EXTREME_LOW = 0.3;
  const EXTREME_HIGH = 0.7;
  const MODES = ["raw", "percentiles", "binarise", "extreme"];

  function decode(b64, Type) {
    let bytes;
    if (typeof atob === "function") {
      const s = atob(b64);
      bytes = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    } else {
      const buf = Buffer.from(b64, "base64");
      bytes = new Uint8Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
    }
    if (Type === Uint8Array) return bytes;
    return new Type(bytes.buffer, 0, bytes.byteLength / Type.BYTES_PER_ELEMENT);
  }

  /* numpy's rint: round half to even */
  function rint(x) {
    const f = Math.floor(x);
    const d = x - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }

  /* scipy.stats.rankdata(method="average"): ranks 1..n, ties get their mean rank; any NaN → all NaN.
     (A typed-array sort, then one mean rank per distinct value: fast enough for 10^5–10^6 tiles.) */
  function averageRanks(values) {
    const n = values.length;
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) if (Number.isNaN(values[i])) { out.fill(NaN); return out; }
    const sorted = Float64Array.from(values).sort();
    const rank = new Map();
    let i = 0;
    while (i < n) {
      let j = i;
      while (j + 1 < n && sorted[j + 1] === sorted[i]) j++;
      rank.set(sorted[i], (i + j) / 2 + 1);
      i = j + 1;
    }
    for (let k = 0; k < n; k++) out[k] = rank.get(values[k]);
    return out;
  }

  /* engine.heatmap.mode_values */
  function modeValues(values, mode, threshold, low = EXTREME_LOW, high = EXTREME_HIGH) {
    const n = values.length;
    const out = new Float64Array(n);
    if (mode === "raw") { out.set(values); return out; }
    if (mode === "percentiles") {
      if (n <= 1) { out.fill(1); return out; }
      const r = averageRanks(values);
      for (let i = 0; i < n; i++) out[i] = (r[i] - 1) / (n - 1);
      return out;
    }
    if (mode === "binarise") {
      for (let i = 0; i < n; i++) out[i] = values[i] >= threshold ? 1 : 0;
      return out;
    }
    if (mode === "extreme") {
      for (let i = 0; i < n; i++) { const v = values[i]; out[i] = (v <= low || v >= high) ? v : NaN; }
      return out;
    }
    throw new Error("unknown mode " + mode);
  }

  /* finite min and max */
  function range(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return lo <= hi ? [lo, hi] : [0, 1];
  }

  /* values outside [0, 1] (a cluster id, an uncertainty) are scaled min–max to [0, 1] for colouring */
  function normalise(values) {
    const [lo, hi] = range(values);
    if (lo >= 0 && hi <= 1) return { values, lo: 0, hi: 1 };
    const span = hi - lo || 1;
    const out = new Float64Array(values.length);
    for (let i = 0; i < values.length; i++) out[i] = (values[i] - lo) / span;
    return { values: out, lo, hi };
  }

  function clip(v, lo, hi) { return v < lo ? lo : v > hi ? hi : v; }

  /* engine.heatmap.value_canvas: mean of the (non-NaN) values of the tiles covering each canvas pixel */
  function valueCanvas(xs, ys, values, tile0, scale, w, h) {
    if (tile0 === scale) {  // tiles are whole canvas pixels: place them (averaging any duplicates) without the summed areas
      let aligned = true;
      for (let i = 0; i < xs.length && aligned; i++) aligned = xs[i] % scale === 0 && ys[i] % scale === 0;
      if (aligned) return placeCanvas(xs, ys, values, scale, w, h);
    }
    const W = w + 1;
    const acc = new Float64Array((h + 1) * W);
    const cnt = new Float64Array((h + 1) * W);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (Number.isNaN(v)) continue;
      const c0 = clip(rint(xs[i] / scale), 0, w), c1 = clip(rint((xs[i] + tile0) / scale), 0, w);
      const r0 = clip(rint(ys[i] / scale), 0, h), r1 = clip(rint((ys[i] + tile0) / scale), 0, h);
      acc[r0 * W + c0] += v; acc[r0 * W + c1] -= v; acc[r1 * W + c0] -= v; acc[r1 * W + c1] += v;
      cnt[r0 * W + c0] += 1; cnt[r0 * W + c1] -= 1; cnt[r1 * W + c0] -= 1; cnt[r1 * W + c1] += 1;
    }
    // cumulative sums down the rows, then along them: numpy's cumsum(0).cumsum(1), in the same order (same rounding)
    for (let r = 1; r <= h; r++) for (let c = 0; c <= w; c++) { acc[r * W + c] += acc[(r - 1) * W + c]; cnt[r * W + c] += cnt[(r - 1) * W + c]; }
    for (let r = 0; r <= h; r++) for (let c = 1; c <= w; c++) { acc[r * W + c] += acc[r * W + c - 1]; cnt[r * W + c] += cnt[r * W + c - 1]; }
    const mean = new Float64Array(w * h);
    const covered = new Uint8Array(w * h);
    for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
      const k = Math.round(cnt[r * W + c]);
      if (k > 0) { mean[r * w + c] = acc[r * W + c] / k; covered[r * w + c] = 1; } else mean[r * w + c] = NaN;
    }
    return { mean, covered };
  }

  function placeCanvas(xs, ys, values, scale, w, h) {
    const sum = new Float64Array(w * h), cnt = new Uint32Array(w * h);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (Number.isNaN(v)) continue;
      const c = xs[i] / scale, r = ys[i] / scale;
      if (c < 0 || r < 0 || c >= w || r >= h) continue;
      sum[r * w + c] += v; cnt[r * w + c] += 1;
    }
    const mean = new Float64Array(w * h), covered = new Uint8Array(w * h);
    for (let k = 0; k < w * h; k++) { if (cnt[k]) { mean[k] = cnt[k] === 1 ? sum[k] : sum[k] / cnt[k]; covered[k] = 1; } else mean[k] = NaN; }
    return { mean, covered };
  }

  function gaussianKernel(sigma) {
    const radius = Math.floor(4.0 * sigma + 0.5);
    const k = new Float64Array(2 * radius + 1);
    let sum = 0;
    for (let i = -radius; i <= radius; i++) { k[i + radius] = Math.exp(-0.5 / (sigma * sigma) * i * i); sum += k[i + radius]; }
    for (let i = 0; i < k.length; i++) k[i] /= sum;
    return { k, radius };
  }

  /* scipy's "reflect" boundary (d c b a | a b c d | d c b a) */
  function reflect(i, n) {
    if (n === 1) return 0;
    const p = 2 * n;
    i = ((i % p) + p) % p;
    return i < n ? i : p - 1 - i;
  }

  function correlateAxis(src, w, h, kernel, alongRows) {
    const { k, radius } = kernel;
    const out = new Float64Array(w * h);
    const n = alongRows ? h : w;
    const idx = new Int32Array(n + 2 * radius);
    for (let i = -radius; i < n + radius; i++) idx[i + radius] = reflect(i, n);
    if (alongRows) {
      for (let c = 0; c < w; c++) for (let r = 0; r < h; r++) {
        let s = 0;
        for (let j = 0; j < k.length; j++) s += k[j] * src[idx[r + j] * w + c];
        out[r * w + c] = s;
      }
    } else {
      for (let r = 0; r < h; r++) {
        const row = r * w;
        for (let c = 0; c < w; c++) {
          let s = 0;
          for (let j = 0; j < k.length; j++) s += k[j] * src[row + idx[c + j]];
          out[row + c] = s;
        }
      }
    }
    return out;
  }

  /* scipy.ndimage.gaussian_filter(a, sigma) on a (h, w) array: axis 0 then axis 1 */
  function gaussianFilter(a, w, h, sigma) {
    const kernel = gaussianKernel(sigma);
    return correlateAxis(correlateAxis(a, w, h, kernel, true), w, h, kernel, false);
  }

  /* the normalised blur of engine.heatmap.render_overlay: untouched pixels stay uncovered. A wide kernel
     (radius > maxRadius px) is applied on a canvas mean-pooled by f (σ / f), then read back per pixel: the
     same result to the eye at a fraction of the cost; narrower kernels are exactly scipy's. */
  function blurCanvas(mean, covered, w, h, sigma, maxRadius = 24) {
    const num = new Float64Array(w * h), den = new Float64Array(w * h);
    for (let i = 0; i < w * h; i++) { num[i] = covered[i] && !Number.isNaN(mean[i]) ? mean[i] : 0; den[i] = covered[i]; }
    const f = Math.floor(4.0 * sigma + 0.5) > maxRadius ? Math.ceil((4.0 * sigma + 0.5) / maxRadius) : 1;
    let gn, gd, pw = w;
    if (f === 1) {
      gn = gaussianFilter(num, w, h, sigma); gd = gaussianFilter(den, w, h, sigma);
    } else {
      pw = Math.ceil(w / f);
      const ph = Math.ceil(h / f);
      const pn = new Float64Array(pw * ph), pd = new Float64Array(pw * ph), pc = new Float64Array(pw * ph);
      for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
        const k = Math.floor(r / f) * pw + Math.floor(c / f);
        pn[k] += num[r * w + c]; pd[k] += den[r * w + c]; pc[k] += 1;
      }
      for (let k = 0; k < pn.length; k++) { pn[k] /= pc[k]; pd[k] /= pc[k]; }
      gn = gaussianFilter(pn, pw, ph, sigma / f); gd = gaussianFilter(pd, pw, ph, sigma / f);
    }
    const out = new Float64Array(w * h);
    for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
      const i = r * w + c, k = f === 1 ? i : Math.floor(r / f) * pw + Math.floor(c / f);
      out[i] = covered[i] ? gn[k] / Math.max(gd[k], 1e-9) : NaN;
    }
    return out;
  }

  /* RGBA pixels: lut[rint(v * 255)] where covered, transparent elsewhere (opacity applied when drawing) */
  function colourise(mean, covered, lut, rgba) {
    for (let i = 0; i < mean.length; i++) {
      const v = mean[i];
      const o = 4 * i;
      if (!covered[i] || Number.isNaN(v)) { rgba[o + 3] = 0; continue; }
      const j = 3 * clip(rint(Math.fround(Math.fround(v) * 255)), 0, 255); // engine.render.lut_index: float32, round half to even
      rgba[o] = lut[j]; rgba[o + 1] = lut[j + 1]; rgba[o + 2] = lut[j + 2]; rgba[o + 3] = 255;
    }
    return rgba;
  }

  /* the canvas scale (level-0 px per canvas px) for a result: one pixel per stride when tiles align with it */
  function canvasScale(tile0, stride0, width0, height0, maxPixels = 4e6) {
    let m = tile0 % stride0 === 0 ? 1 : 4;
    while (m > 1 && (width0 / (stride0 / m)) * (height0 / (stride0 / m)) > maxPixels) m = m / 2;
    let scale = stride0 / m;
    while ((width0 / scale) * (height0 / scale) > maxPixels) scale *= 2;
    return scale;
  }

  /* the tile (index) whose square holds level-0 point (x, y), nearest centre first; -1 when none */
  function makeTileIndex(xs, ys, tile0, stride0) {
    const map = new Map();
    for (let i = 0; i < xs.length; i++) map.set(Math.round(xs[i] / stride0) * 1e7 + Math.round(ys[i] / stride0), i);
    return function find(x, y) {
      let best = -1, bestD = Infinity;
      const cLo = Math.floor((x - tile0) / stride0), cHi = Math.floor(x / stride0);
      const rLo = Math.floor((y - tile0) / stride0), rHi = Math.floor(y / stride0);
      for (let c = Math.max(cLo, 0); c <= cHi; c++) for (let r = Math.max(rLo, 0); r <= rHi; r++) {
        const i = map.get(c * 1e7 + r);
        if (i === undefined) continue;
        if (x < xs[i] || x >= xs[i] + tile0 || y < ys[i] || y >= ys[i] + tile0) continue;
        const d = (xs[i] + tile0 / 2 - x) ** 2 + (ys[i] + tile0 / 2 - y) ** 2;
        if (d < bestD) { bestD = d; best = i; }
      }
      return best;
    };
  }

  /* a round scale-bar length (1, 2 or 5 × 10^k µm) close to targetPx screen pixels */
  function scaleBar(umPerScreenPx, targetPx = 120) {
    const raw = umPerScreenPx * targetPx;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const um = [1, 2, 5, 10].map((f) => f * p).reduce((a, b) => (Math.abs(b - raw) < Math.abs(a - raw) ? b : a));
    const label = um >= 1000 ? `${+(um / 1000).toPrecision(3)} mm` : um >= 1 ? `${+um.toPrecision(3)} µm` : `${+(um * 1000).toPrecision(3)} nm`;
    return { um, px: um / umPerScreenPx, label };
  }

  return {
    EXTREME_LOW, EXTREME_HIGH, MODES, decode, rint, averageRanks, modeValues, range, normalise, valueCanvas,
    gaussianFilter, blurCanvas, colourise, canvasScale, makeTileIndex, scaleBar,
  };
});
