/*
 * HistoDash slide viewer (a Streamlit components.v1 iframe).
 *
 * OpenSeadragon shows the slide's Deep Zoom tiles (token URLs of the dashboard's tile server). One canvas
 * over it draws, in level-0 coordinates: tissue mask, heatmap, tile grid, GeoJSON annotations, the
 * selected tile and a scale bar. Every display change is computed and drawn here (heatmap.js), never by a
 * Streamlit rerun; the component sends a value only for a tile click or "Use in downloads".
 *
 * window.HD exposes state for the browser tests (redraw counter, time of the last redraw, loaded levels).
 */
(function () {
  "use strict";
  const H = window.HistoHeatmap;
  const $ = (id) => document.getElementById(id);
  const HD = (window.HD = {
    viewer: null, slideKey: null, slide: null, tiles: null, tilesId: null, grid: null, gridRaw: null, mask: null, maskRaw: null,
    annotations: [], annotationsRaw: null, display: null, luts: {}, lutsRaw: null, heat: null, cache: null,
    selected: -1, seq: 0, redraws: 0, lastRedrawMs: null, renders: 0, loadedLevels: {}, failedTiles: 0, frameHeight: 0,
  });

  // --- Streamlit's component protocol (components.v1) -----------------------------------------------
  function post(type, data) { window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data || {}), "*"); }
  function sendValue(value) { post("streamlit:setComponentValue", { value, dataType: "json" }); }
  window.addEventListener("message", (event) => {
    const d = event.data;
    if (d && d.type === "streamlit:render") {
      try { render(d.args || {}); } catch (err) { showMessage("Viewer error: " + err.message); console.error(err); }
    }
  });

  // --- display state ------------------------------------------------------------------------------------
  const controls = ["layer", "mode", "colormap", "opacity", "threshold", "blur", "blank"];
  const shows = ["heatmap", "mask", "grid", "annotations"];

  function readDisplay() {
    return {
      layer: $("layer").value || "score", mode: $("mode").value, colormap: $("colormap").value,
      opacity: parseFloat($("opacity").value), threshold: clampNum($("threshold").value, 0, 1, cardThreshold()), // empty: the card's
      blur: clampNum($("blur").value, 0, 1e7, 0), blank: $("blank").checked,
      show: Object.fromEntries(shows.map((s) => [s, $("show-" + s).checked])),
    };
  }
  function cardThreshold() { return HD.tiles ? HD.tiles.threshold : HD.slide && HD.slide.threshold != null ? HD.slide.threshold : 0.5; }
  function clampNum(v, lo, hi, fallback) { const x = parseFloat(v); return Number.isFinite(x) ? Math.min(hi, Math.max(lo, x)) : fallback; }

  function writeDisplay(d) {
    if (d.layer && [...$("layer").options].some((o) => o.value === d.layer)) $("layer").value = d.layer;
    $("mode").value = d.mode; $("colormap").value = d.colormap; $("opacity").value = d.opacity;
    $("threshold").value = String(Math.round(+d.threshold * 1e4) / 1e4); $("blur").value = d.blur; $("blank").checked = !!d.blank;
    for (const s of shows) $("show-" + s).checked = !!(d.show || {})[s];
  }

  function onDisplayChange(event) {
    const t0 = event && event.timeStamp ? event.timeStamp : performance.now();
    const before = HD.display;
    HD.display = readDisplay();
    if (String(HD.display.threshold) !== $("threshold").value) $("threshold").value = String(HD.display.threshold);
    const d = HD.display;
    const heavy = !before || d.layer !== before.layer || d.mode !== before.mode || d.blur !== before.blur ||
      (d.threshold !== before.threshold && d.mode === "binarise");
    if (heavy) HD.cache = null;
    if (heavy || !before || d.colormap !== before.colormap) rebuildHeat();
    if (HD.viewer && HD.viewer.world.getItemCount()) HD.viewer.world.getItemAt(0).setOpacity(d.blank ? 0 : 1);
    drawLegend(); updateStatus(); drawOverlay();
    requestAnimationFrame(() => { HD.redraws += 1; HD.lastRedrawMs = performance.now() - t0; });
  }
  for (const id of controls) $(id).addEventListener(id === "threshold" || id === "blur" ? "change" : "input", onDisplayChange);
  for (const s of shows) $("show-" + s).addEventListener("input", onDisplayChange);
  $("apply").addEventListener("click", () => sendValue({ event: "display", display: readDisplay(), seq: ++HD.seq }));
  $("fullscreen").addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else $("app").requestFullscreen().catch((err) => showMessage("Full screen is not allowed here: " + err.message));
  });

  // --- render (a Streamlit page run) -------------------------------------------------------------------
  function render(args) {
    HD.renders += 1;
    HD.lastArgs = args;
    const height = args.height || 720;
    if (height !== HD.frameHeight) { HD.frameHeight = height; post("streamlit:setFrameHeight", { height }); }
    const lutsRaw = JSON.stringify(Object.keys(args.colormaps || {}));
    if (lutsRaw !== HD.lutsRaw) {
      HD.lutsRaw = lutsRaw;
      HD.luts = {};
      for (const [name, b64] of Object.entries(args.colormaps || {})) HD.luts[name] = H.decode(b64, Uint8Array);
      $("colormap").innerHTML = Object.keys(HD.luts).map((n) => `<option>${escapeHtml(n)}</option>`).join("");
    }
    const slide = args.slide;
    if (!slide) { showMessage("No slide."); return; }
    if (slide.key !== HD.slideKey) openSlide(slide); // a new slide: every layer of the old one is dropped first
    const oldTiles = HD.tilesId;
    setTiles(args.tiles && args.tiles.slide_hash === slide.hash ? args.tiles : null);
    setGrid(args.grid || null);
    setMask(args.mask || null);
    setAnnotations(args.annotations || []);
    // The page's display is only the starting state of a new viewer (what this viewer reported before it was
    // re-created); afterwards the browser's own settings win. A new result brings its model card's threshold
    // unless the page names one.
    const given = args.display || {};
    if (!HD.display) {
      const d = Object.assign({}, given);
      if (d.threshold === null || d.threshold === undefined) d.threshold = cardThreshold();
      writeDisplay(d);
      onDisplayChange(null);
    } else if (HD.tilesId !== oldTiles) {
      if (HD.tiles && (given.threshold === null || given.threshold === undefined)) $("threshold").value = String(HD.tiles.threshold);
      for (const k of shows) if (given.show && k in given.show) $("show-" + k).checked = !!given.show[k];
      HD.display = null;
      onDisplayChange(null);
    } else {
      drawLegend(); updateStatus(); drawOverlay();
    }
  }

  function openSlide(slide) {
    HD.slideKey = slide.key; HD.slide = slide;
    HD.tiles = null; HD.tilesId = null; HD.heat = null; HD.cache = null; HD.selected = -1; HD.loadedLevels = {};
    HD.grid = null; HD.gridRaw = null; HD.mask = null; HD.maskRaw = null; HD.annotations = []; HD.annotationsRaw = null;
    if (!HD.viewer) createViewer();
    showMessage("");
    HD.viewer.open(slide.dzi);
  }

  function createViewer() {
    const v = (HD.viewer = OpenSeadragon({
      element: $("osd"), prefixUrl: "node_modules/openseadragon/build/openseadragon/images/",
      drawer: "canvas", showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", navigatorSizeRatio: 0.18,
      showFullPageControl: false, showRotationControl: false, showHomeControl: true, autoHideControls: false,
      maxZoomPixelRatio: 4, visibilityRatio: 0.5, animationTime: 0.5, blendTime: 0, timeout: 60000,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true, scrollToZoom: true },
      keyboardNavEnabled: true,
    }));
    const canvas = document.createElement("canvas");
    canvas.className = "overlay";
    v.canvas.appendChild(canvas);
    HD.overlay = canvas;
    v.addHandler("open", () => { drawOverlay(); });
    v.addHandler("open-failed", () => showMessage("This slide's tiles could not be opened (its access token may have expired: reload the page)."));
    v.addHandler("update-viewport", drawOverlay);
    v.addHandler("resize", drawOverlay);
    v.addHandler("tile-loaded", (e) => { const l = e.tile.level; HD.loadedLevels[l] = (HD.loadedLevels[l] || 0) + 1; });
    v.addHandler("tile-load-failed", () => { HD.failedTiles += 1; });
    v.addHandler("canvas-click", (e) => {
      if (!e.quick) return;
      const i = tileAt(e.position);
      if (i < 0) return;
      HD.selected = i;
      drawOverlay();
      const T = HD.tiles;
      sendValue({ event: "tile", x: T.x[i], y: T.y[i], size: T.tile0, display: readDisplay(), seq: ++HD.seq });
    });
    v.canvas.addEventListener("pointermove", (e) => hover(e));
    v.canvas.addEventListener("pointerleave", () => { $("tooltip").style.display = "none"; });
  }

  // --- layers from the page ----------------------------------------------------------------------------
  function setTiles(t) {
    if (!t) { if (HD.tiles) { HD.tiles = null; HD.tilesId = null; HD.heat = null; HD.cache = null; HD.selected = -1; fillLayers(); } return; }
    if (t.id === HD.tilesId) return;
    const x = H.decode(t.x, Int32Array), y = H.decode(t.y, Int32Array);
    const columns = {};
    for (const [name, b64] of Object.entries(t.columns)) columns[name] = H.decode(b64, Float64Array);
    const scale = H.canvasScale(t.tile0, t.stride0, t.width0, t.height0, 2e6);
    HD.tiles = Object.assign({}, t, {
      x, y, columns, scale, w: Math.max(1, Math.ceil(t.width0 / scale)), h: Math.max(1, Math.ceil(t.height0 / scale)),
      find: H.makeTileIndex(x, y, t.tile0, t.stride0),
    });
    HD.tilesId = t.id; HD.cache = null; HD.selected = -1;
    fillLayers();
  }

  function fillLayers() {
    const names = HD.tiles ? Object.keys(HD.tiles.columns) : ["score"];
    const current = $("layer").value;
    $("layer").innerHTML = names.map((n) => `<option>${escapeHtml(n)}</option>`).join("");
    if (names.includes(current)) $("layer").value = current;
    $("layer").disabled = !HD.tiles;
  }

  function setGrid(g) {
    const raw = g ? g.n + ":" + g.tile0 + ":" + g.x.length + ":" + g.x.slice(0, 64) + g.y.slice(-64) : null;
    if (raw === HD.gridRaw) return;
    HD.gridRaw = raw;
    HD.grid = g ? { x: H.decode(g.x, Int32Array), y: H.decode(g.y, Int32Array), tile0: g.tile0 } : null;
  }

  function setMask(m) {
    const raw = m ? m.png.length + ":" + m.png.slice(-96) : null;
    if (raw === HD.maskRaw) return;
    HD.maskRaw = raw; HD.mask = null;
    if (!m) return;
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, c.width, c.height);
      for (let i = 0; i < px.data.length; i += 4) {
        const on = px.data[i] > 127;
        px.data[i] = 0; px.data[i + 1] = 190; px.data[i + 2] = 90; px.data[i + 3] = on ? 80 : 0;
      }
      ctx.putImageData(px, 0, 0);
      HD.mask = { canvas: c, width0: m.width0, height0: m.height0 };
      drawOverlay();
    };
    img.src = m.png;
  }

  function setAnnotations(a) {
    const raw = a.length + ":" + (a.length ? JSON.stringify(a[0]).slice(0, 200) + JSON.stringify(a[a.length - 1]).slice(0, 200) : "");
    if (raw === HD.annotationsRaw) return;
    HD.annotationsRaw = raw; HD.annotations = a;
  }

  // --- the heatmap canvas ------------------------------------------------------------------------------
  function rebuildHeat() {
    const T = HD.tiles, d = HD.display;
    if (!T || !d) { HD.heat = null; return; }
    if (!HD.cache) {
      const raw = T.columns[d.layer] || T.columns[T.score_column];
      let values = H.modeValues(raw, d.mode, d.threshold);
      let lo = 0, hi = 1;
      if (d.mode === "raw" || d.mode === "extreme") { const n = H.normalise(values); values = n.values; lo = n.lo; hi = n.hi; }
      const { mean, covered } = H.valueCanvas(T.x, T.y, values, T.tile0, T.scale, T.w, T.h);
      const shown = d.blur > 0 ? H.blurCanvas(mean, covered, T.w, T.h, d.blur / T.scale) : mean;
      HD.cache = { shown, covered, lo, hi };
    }
    let canvas = HD.heat && HD.heat.canvas;
    if (!canvas || canvas.width !== T.w || canvas.height !== T.h) { canvas = document.createElement("canvas"); canvas.width = T.w; canvas.height = T.h; }
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(T.w, T.h);
    H.colourise(HD.cache.shown, HD.cache.covered, HD.luts[d.colormap] || HD.luts.viridis, img.data);
    ctx.putImageData(img, 0, 0);
    HD.heat = { canvas, scale: T.scale, lo: HD.cache.lo, hi: HD.cache.hi };
  }

  // --- drawing ---------------------------------------------------------------------------------------
  function imageFrame() {
    const v = HD.viewer;
    if (!v || !v.world.getItemCount() || !HD.slide) return null;
    const item = v.world.getItemAt(0);
    const p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(HD.slide.width0, HD.slide.height0));
    return { x: p0.x, y: p0.y, s: (p1.x - p0.x) / HD.slide.width0, item };
  }

  function drawOverlay() {
    const c = HD.overlay;
    if (!c) return;
    const box = HD.viewer.container.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const W = Math.round(box.width), Hh = Math.round(box.height);
    if (c.width !== Math.round(W * dpr) || c.height !== Math.round(Hh * dpr)) {
      c.width = Math.round(W * dpr); c.height = Math.round(Hh * dpr); c.style.width = W + "px"; c.style.height = Hh + "px";
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, Hh);
    const f = imageFrame();
    if (!f || !HD.display) return;
    const d = HD.display, show = d.show || {};
    if (show.mask && HD.mask) {
      // the mask is thumbnail-sized: zoomed in far, it fades to an outline-light tint so cells stay visible
      const maskPx = (HD.mask.width0 / HD.mask.canvas.width) * f.s;
      ctx.imageSmoothingEnabled = true; ctx.globalAlpha = maskPx <= 2 ? 1 : Math.max(0.25, 1 - (maskPx - 2) / 16);
      ctx.drawImage(HD.mask.canvas, f.x, f.y, HD.mask.width0 * f.s, HD.mask.height0 * f.s);
    }
    if (show.heatmap && HD.heat) drawHeat(ctx, f, W, Hh, d.opacity);
    ctx.globalAlpha = 1;
    if (show.grid) drawGrid(ctx, f, W, Hh);
    if (show.annotations && HD.annotations.length) drawAnnotations(ctx, f);
    if (HD.tiles && HD.selected >= 0) {
      const T = HD.tiles, i = HD.selected;
      ctx.lineWidth = 3; ctx.strokeStyle = "#ffffff"; ctx.strokeRect(f.x + T.x[i] * f.s, f.y + T.y[i] * f.s, T.tile0 * f.s, T.tile0 * f.s);
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#d62728"; ctx.strokeRect(f.x + T.x[i] * f.s, f.y + T.y[i] * f.s, T.tile0 * f.s, T.tile0 * f.s);
    }
    drawScaleBar(ctx, f, Hh);
  }

  function drawHeat(ctx, f, W, Hh, opacity) {
    const heat = HD.heat, k = heat.scale * f.s; // screen px per heat-canvas px
    const sx0 = Math.max(0, Math.floor(-f.x / k)), sy0 = Math.max(0, Math.floor(-f.y / k));
    const sx1 = Math.min(heat.canvas.width, Math.ceil((W - f.x) / k)), sy1 = Math.min(heat.canvas.height, Math.ceil((Hh - f.y) / k));
    if (sx1 <= sx0 || sy1 <= sy0) return;
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = opacity;
    ctx.drawImage(heat.canvas, sx0, sy0, sx1 - sx0, sy1 - sy0, f.x + sx0 * k, f.y + sy0 * k, (sx1 - sx0) * k, (sy1 - sy0) * k);
  }

  function drawGrid(ctx, f, W, Hh) {
    const g = HD.tiles ? { x: HD.tiles.x, y: HD.tiles.y, tile0: HD.tiles.tile0 } : HD.grid;
    if (!g) return;
    const side = g.tile0 * f.s;
    if (side < 3) return; // too small to see: zoom in
    ctx.lineWidth = 1; ctx.strokeStyle = "rgba(30, 60, 220, 0.8)";
    ctx.beginPath();
    for (let i = 0; i < g.x.length; i++) {
      const x = f.x + g.x[i] * f.s, y = f.y + g.y[i] * f.s;
      if (x > W || y > Hh || x + side < 0 || y + side < 0) continue;
      ctx.rect(x, y, side, side);
    }
    ctx.stroke();
  }

  function drawAnnotations(ctx, f) {
    ctx.lineWidth = 2;
    for (const a of HD.annotations) {
      const col = a.colour ? `rgb(${a.colour[0]},${a.colour[1]},${a.colour[2]})` : "#ffcc00";
      ctx.strokeStyle = col; ctx.fillStyle = col;
      if (a.type === "point") {
        for (const ring of a.rings) for (const p of ring) { ctx.beginPath(); ctx.arc(f.x + p[0] * f.s, f.y + p[1] * f.s, 4, 0, 2 * Math.PI); ctx.fill(); }
        continue;
      }
      ctx.beginPath();
      for (const ring of a.rings) ring.forEach((p, j) => (j ? ctx.lineTo : ctx.moveTo).call(ctx, f.x + p[0] * f.s, f.y + p[1] * f.s));
      if (a.type === "polygon") { ctx.closePath(); ctx.globalAlpha = 0.12; ctx.fill("evenodd"); ctx.globalAlpha = 1; }
      ctx.stroke();
    }
  }

  function drawScaleBar(ctx, f, Hh) {
    const mpp = HD.slide && HD.slide.mpp;
    if (!mpp || !(f.s > 0)) return;
    const bar = H.scaleBar(mpp / f.s);
    const x = 12, y = Hh - 18;
    ctx.globalAlpha = 0.85; ctx.fillStyle = "#ffffff"; ctx.fillRect(x - 6, y - 20, bar.px + 12, 30); ctx.globalAlpha = 1;
    ctx.fillStyle = "#111111"; ctx.fillRect(x, y, bar.px, 4);
    ctx.fillRect(x, y - 4, 1.5, 8); ctx.fillRect(x + bar.px - 1.5, y - 4, 1.5, 8);
    ctx.font = "12px sans-serif"; ctx.textBaseline = "bottom"; ctx.fillText(bar.label, x, y - 3);
    HD.scaleBarLabel = bar.label;
  }

  function drawLegend() {
    const legend = $("legend");
    const d = HD.display;
    if (!HD.tiles || !d || !(d.show || {}).heatmap) { legend.style.display = "none"; return; }
    legend.style.display = "block";
    const lut = HD.luts[d.colormap] || HD.luts.viridis;
    const c = $("colourbar"), ctx = c.getContext("2d");
    for (let i = 0; i < c.height; i++) {
      const j = 3 * Math.round((1 - i / (c.height - 1)) * 255);
      ctx.fillStyle = `rgb(${lut[j]},${lut[j + 1]},${lut[j + 2]})`; ctx.fillRect(0, i, c.width, 1);
    }
    const lo = HD.heat ? HD.heat.lo : 0, hi = HD.heat ? HD.heat.hi : 1;
    let ticks;
    if (d.mode === "binarise") ticks = [[1, `≥ ${fmt(d.threshold)}`], [0, `< ${fmt(d.threshold)}`]];
    else if (d.mode === "percentiles") ticks = [[1, "100th"], [0.5, "50th"], [0, "0th"]];
    else ticks = [[1, fmt(hi)], [0.5, fmt((lo + hi) / 2)], [0, fmt(lo)]];
    const markT = d.mode === "raw" && lo === 0 && hi === 1 ? d.threshold : null;
    $("legend-ticks").innerHTML = ticks.map(([v, t]) => `<span style="top:${(1 - v) * 100}%">${escapeHtml(t)}</span>`).join("") +
      (markT !== null ? `<span style="top:${(1 - markT) * 100}%;left:0;color:#b00">◀ ${fmt(markT)}</span>` : "");
    const name = d.layer === "score" && HD.tiles.score_name ? HD.tiles.score_name : d.layer;
    $("legend-title").textContent = `${name} · ${d.mode}`;
  }

  function updateStatus() {
    const T = HD.tiles, d = HD.display;
    let text = HD.slide ? (HD.slide.mpp ? `${fmt(HD.slide.mpp)} µm/px` : "µm/px unknown: no scale bar") : "";
    if (T && d) {
      const s = T.columns[T.score_column];
      let k = 0;
      for (const v of s) if (v >= d.threshold) k++;
      text = `${T.n.toLocaleString()} tiles · ${k.toLocaleString()} (${(100 * k / Math.max(1, T.n)).toFixed(1)}%) with ${T.score_name || "score"} ≥ ${fmt(d.threshold)} · click a tile to open it · ` + text;
    } else if (HD.slide) text = "No heatmap of this slide yet · " + text;
    $("status").textContent = text;
  }

  // --- hover and click -------------------------------------------------------------------------------
  function tileAt(position) {
    if (!HD.tiles || !HD.viewer || !HD.viewer.world.getItemCount()) return -1;
    const p = HD.viewer.world.getItemAt(0).viewerElementToImageCoordinates(position);
    return HD.tiles.find(p.x, p.y);
  }

  function hover(e) {
    const tip = $("tooltip");
    const rect = HD.viewer.canvas.getBoundingClientRect();
    const pos = new OpenSeadragon.Point(e.clientX - rect.left, e.clientY - rect.top);
    const i = tileAt(pos);
    if (i < 0) { tip.style.display = "none"; return; }
    const T = HD.tiles;
    const lines = [`${T.score_name || "score"} ${fmt3(T.columns[T.score_column][i])}`];
    for (const [name, col] of Object.entries(T.columns)) if (name !== T.score_column) lines.push(`${name} ${fmt3(col[i])}`);
    lines.push(`x ${T.x[i]}, y ${T.y[i]} (level 0)`);
    tip.textContent = lines.join("\n");
    tip.style.display = "block";
    const main = $("main").getBoundingClientRect();
    tip.style.left = Math.min(e.clientX - main.left + 14, main.width - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(e.clientY - main.top + 14, main.height - tip.offsetHeight - 4) + "px";
  }

  // --- helpers ---------------------------------------------------------------------------------------
  function fmt(v) { return Number.isFinite(v) ? (+v.toPrecision(4)).toString() : "–"; }
  function fmt3(v) { return Number.isFinite(v) ? v.toFixed(3) : "–"; }
  function escapeHtml(s) { return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]); }
  function showMessage(text) { const m = $("message"); m.textContent = text; m.style.display = text ? "block" : "none"; }

  /* for the browser tests: level-0 point → position in this frame's viewport */
  HD.imageToPage = function (x, y) {
    const item = HD.viewer.world.getItemAt(0);
    const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
    const r = HD.viewer.canvas.getBoundingClientRect();
    return { x: r.left + p.x, y: r.top + p.y };
  };
  HD.readDisplay = readDisplay;
  HD.render = render; // the bench renders a large synthetic heatmap through the same path

  if (typeof OpenSeadragon === "undefined") showMessage("OpenSeadragon is not installed on this server (run `make run`, which runs npm ci).");
  post("streamlit:componentReady", { apiVersion: 1 });
})();
