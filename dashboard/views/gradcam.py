"""Grad-CAM: which regions of a tile drove the model's call (Grad-CAM, Grad-CAM++, integrated gradients).

Input: this session's tiles, a direct upload, the tile prediction results, or a slide region passed
in the URL (``?slide=<id>&x=..&y=..&size=..``, from the Slide heatmap page). Session state keeps the
last good result and the path of its tile; an error is shown as a message and leaves them as they were.
TensorFlow is only imported (through ``engine.gradcam``) when a map is computed or layers are listed.
"""

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import sidebar, state
from dashboard.common import disclaimer, guarded, session_id, session_workspace, show_error
from engine.errors import InvalidInputError
from engine.gradcam import COLORMAPS, METHOD_LABELS, METHODS, PREDICTED, SCORE
from engine.imageio import read_image, to_png_bytes
from engine.limits import inference_slot, wait_message
from engine.privacy import pseudonym

RESULT_KEY, GALLERY_KEY, PREDICT_KEY = "gradcam_result", "gradcam_gallery", "predict_result"
SOURCES = {"session": "This session's tiles", "upload": "Upload a tile", "predict": "Prediction results", "slide": "Slide region"}

NOTE = """
**What a saliency map can tell you.** Which regions of *this* tile the model's output was most
sensitive to, for the chosen class: a check that the model looks at tissue (nuclei, glands) rather
than at background, pen marks, folds, blur or the tile border.

**What it cannot tell you.** It is not a segmentation of tumour, not a measure of how much tumour
there is, and not evidence that the model is right: a wrong call has a map too. Grad-CAM works at
the coarse resolution of the chosen layer (often 7×7 cells or fewer, upsampled), so it cannot point
at single cells; maps change with the layer and the method; a bright region says "this mattered to
the score", not "this is malignant". An empty map means no positive evidence for that class at that
layer. Use it to question a model, never to make or confirm a diagnosis.
"""


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def explainer_for(card_id: str, sha256: str, models_dir: str):
    from engine.gradcam import Explainer
    from engine.registry import Registry

    return Explainer.from_card(Registry(models_dir).get(card_id))


def _tile_file(name: str, rgb: np.ndarray) -> str:
    """Keep a tile that is not already on disk (upload, slide region) in the session workspace."""
    folder = session_workspace() / "gradcam"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(rgb.tobytes()).hexdigest()[:16]}.png"
    if not path.exists():
        path.write_bytes(to_png_bytes(rgb))
    return str(path)


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"The link's '{name}' is not a whole number ({value!r}).") from None
    if not low <= number <= high:
        raise InvalidInputError(f"The link's '{name}' = {number} is outside {low}…{high}.")
    return number


def slide_region(params) -> tuple[str, np.ndarray]:
    """The slide tile named in the URL, or a HistoDashError saying why not."""
    try:
        from engine.slides import open_slide
        from engine.uploads import resolve_slide_id
    except ImportError:
        raise InvalidInputError("This link points at a slide region, but this HistoDash has no slide reader (engine.slides).", "Upload the tile instead.") from None
    x, y = (_int_param(k, params.get(k), 0, 10**7) for k in ("x", "y"))
    size = _int_param("size", params.get("size"), 16, 4096)
    path = resolve_slide_id(params.get("slide"), session=session_id())
    with open_slide(path) as slide:
        rgb = slide.read_region((x, y), 0, (size, size))
    return f"{Path(path).name} @ ({x}, {y}) {size} px", np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)


def label_of(score: float) -> str:
    """The card's positive/negative label of a score at the card's threshold."""
    from engine.predict import labels_from_card

    positive, negative = labels_from_card(card)
    return positive if score >= card.threshold else negative


def download_stem(name: str) -> str:
    """The file-name stem of a download: the tile's own name, or its stable pseudonym when anonymising."""
    return pseudonym(name) if st.session_state.get("gradcam_anonymise") else Path(name).stem


def panels(rgb: np.ndarray, result, cmap: str, opacity: float, key: str) -> None:
    """Original / map / overlay side by side, each with a PNG download."""
    stem = download_stem(key)
    images = [
        ("Original", to_png_bytes(rgb), "original"),
        (f"{result.method_label} map", result.map_png(cmap), "map"),
        ("Overlay", result.overlay_png(rgb, cmap=cmap, opacity=opacity), "overlay"),
    ]
    for col, (caption, png, kind) in zip(st.columns(3), images, strict=True):
        col.image(png, caption=caption, width="stretch")
        col.download_button(f"PNG: {kind}", png, file_name=f"{stem}_{kind}.png", mime="image/png", key=f"dl_{kind}_{key}")


st.title("Grad-CAM")
card = sidebar.selected_card()
if card is None:
    st.error("No model is registered, so there is nothing to explain. See the README: 'Adding a model'.")
    st.stop()
st.caption(f"Model **{card.id}** — classes {', '.join(card.classes)}; score = {card.score_name} ({' + '.join(card.positive_classes) or card.classes[-1]}).")

# ---------------------------------------------------------------- input
params = st.query_params
sources = ["session", "upload", "predict"] + (["slide"] if params.get("slide") else [])
source = st.radio("Tile from", sources, index=len(sources) - 1 if "slide" in sources else 0, format_func=SOURCES.get, horizontal=True)
tile_name, tile_rgb, tile_path = None, None, None
saved_predict = st.session_state.get(PREDICT_KEY)
try:
    if source == "session":
        tiles = state.tiles()
        if not tiles:
            st.info("No tiles in this session yet: add some on the Upload page, or upload one here.")
        else:
            pick = st.selectbox("Tile", range(len(tiles)), format_func=lambda i: tiles[i].name)
            tile_name, tile_path = tiles[pick].name, tiles[pick].path
            tile_rgb = read_image(tile_path, name=tile_name)
    elif source == "upload":
        upload = st.file_uploader("Tile (JPEG, PNG, TIFF)", accept_multiple_files=False, key="gradcam_upload")
        if upload is not None:
            tile_name, tile_rgb = upload.name, read_image(upload.getvalue(), name=upload.name)
    elif source == "predict":
        if not saved_predict:
            st.info("No prediction results yet: run the Tile prediction page first.")
        else:
            frame = saved_predict["frame"].assign(tile_file=saved_predict["paths"])
            frame = frame[frame["error"].isna()].sort_values("score", ascending=False)
            pick = st.selectbox("Tile (highest score first)", range(len(frame)), format_func=lambda i: f"{frame.iloc[i]['path']} · {frame.iloc[i]['score']:.3f}")
            if len(frame):
                tile_name, tile_path = frame.iloc[pick]["path"], frame.iloc[pick]["tile_file"]
                tile_rgb = read_image(tile_path, name=tile_name)
    else:
        tile_name, tile_rgb = slide_region(params)
except Exception as err:  # noqa: BLE001 - shown as a message; earlier results stay below
    show_error(err, context="Input")
    tile_name = tile_rgb = None

# ---------------------------------------------------------------- controls
explainer = None
with guarded("Model"):
    explainer = explainer_for(card.id, card.weights_sha256, str(card.folder.parent) if card.folder else "")
layers = explainer.conv_layers() if explainer is not None else []
default_layer = explainer.default_layer().path if layers else None
targets = [PREDICTED, SCORE, *card.classes]
with st.form("gradcam_form"):
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Method", METHODS, format_func=METHOD_LABELS.get, help="Grad-CAM (coarse, class-specific), Grad-CAM++ (better with several instances), integrated gradients (pixel-level).")
    layer_paths = [c.path for c in layers] or ["(no convolutional layer)"]
    layer = c2.selectbox("Layer", layer_paths, index=layer_paths.index(default_layer) if default_layer else 0, help="Default: the last convolutional feature map. Not used by integrated gradients.")
    target = c3.selectbox("Class", targets, format_func=lambda t: {PREDICTED: "predicted class", SCORE: f"score ({' + '.join(card.positive_classes) or card.classes[-1]})"}.get(t, t))
    submitted = st.form_submit_button("Compute", type="primary", disabled=tile_rgb is None)
v1, v2, v3 = st.columns([2, 2, 1])
opacity = v1.slider("Opacity", 0.0, 1.0, 0.45, 0.05)
cmap = v2.selectbox("Colour map", COLORMAPS)
v3.toggle("Anonymise names", key="gradcam_anonymise", help="Downloads are named by a stable pseudonym (tile-…) instead of the tile's file name.")


def run(rgb: np.ndarray, name: str, waiting=None):
    if explainer is None:
        raise InvalidInputError(f"Model '{card.id}' could not be loaded (see the message above).")
    slot = st.empty() if waiting is None else waiting

    def on_wait(place: int) -> None:
        slot.info(f"{wait_message(place).capitalize()} (other users' work is running)…", icon=":material/hourglass_top:")

    try:
        with inference_slot(on_wait=on_wait):  # one global limit on heavy inference across all users
            return explainer.explain(rgb, method=method, layer=None if not layers else layer, target=target, name=name)
    finally:
        slot.empty()


if submitted and tile_rgb is not None:
    try:
        with st.spinner("Computing…"):
            result = run(tile_rgb, tile_name)
        st.session_state[RESULT_KEY] = {"result": result, "path": tile_path or _tile_file(tile_name, tile_rgb), "name": tile_name, "card_id": card.id}
    except Exception as err:  # noqa: BLE001 - shown as a message; the previous result stays below
        show_error(err, context="Grad-CAM")

# ---------------------------------------------------------------- result
saved = st.session_state.get(RESULT_KEY)
if saved:
    res = saved["result"]
    st.subheader(f"{saved['name']}")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric(f"p({res.target_class})", f"{res.score:.3f}")
    m2.metric("Predicted class", res.predicted_class)
    if saved["card_id"] == card.id and len(res.probabilities) == len(card.classes):
        score = sum(res.probabilities[i] for i in card.positive_indices)
        m3.metric(card.score_name, f"{score:.3f}", label_of(score), delta_color="off", help=f"Label at the card's threshold {card.threshold:.3f}.")
    m4.metric("Layer", (res.layer or "input pixels").rsplit("/", 1)[-1])
    if saved["card_id"] != card.id:
        st.warning(f"This map is from model '{saved['card_id']}'. Press Compute to explain with '{card.id}'.")
    if res.in_domain is False:
        st.error("This tile is out of domain: it looks unlike the tissue the model was trained on, so the score and its map may mean nothing.",
                 icon=":material/report:")
    if res.normalization_warning:
        st.warning(res.normalization_warning, icon=":material/warning:")
    st.caption(res.summary() + (" · from cache" if res.cached else f" · {res.seconds:.2f} s") + (f" · {res.note}" if res.note else ""))
    with guarded("Display"):
        panels(read_image(saved["path"]), res, cmap, opacity, key=saved["name"])

# ---------------------------------------------------------------- gallery
st.subheader("Gallery: top-scoring tiles")
if not saved_predict:
    st.caption("Run the Tile prediction page to get a gallery of its highest-scoring tiles here.")
elif saved_predict["card_id"] != card.id:
    st.caption(f"The prediction results are from model '{saved_predict['card_id']}'; predict again with '{card.id}' for a gallery.")
else:
    ok = saved_predict["frame"].assign(tile_file=saved_predict["paths"])
    ok = ok[ok["error"].isna()].sort_values("score", ascending=False)
    g1, g2 = st.columns([3, 1])
    k = g1.slider("Tiles", 1, max(2, min(12, len(ok))), min(6, len(ok)) or 1) if len(ok) else 0
    if g2.button("Compute gallery", disabled=not len(ok) or explainer is None):
        try:
            bar = st.progress(0.0)
            items = []
            for i, row in enumerate(ok.head(k).itertuples()):
                items.append({"name": row.path, "path": row.tile_file, "result": run(read_image(row.tile_file, name=row.path), row.path)})
                bar.progress((i + 1) / k, text=f"{i + 1}/{k} tiles")
            st.session_state[GALLERY_KEY] = items
            bar.empty()
        except Exception as err:  # noqa: BLE001
            show_error(err, context="Gallery")
    gallery = st.session_state.get(GALLERY_KEY) or []
    cols = st.columns(4)
    for i, item in enumerate(gallery):
        with cols[i % 4], guarded(item["name"]):
            res = item["result"]
            png = res.overlay_png(read_image(item["path"]), cmap=cmap, opacity=opacity)
            st.image(png, caption=f"{item['name']} · p({res.target_class}) {res.score:.3f}", width="stretch")
            st.download_button("PNG", png, file_name=f"{download_stem(item['name'])}_overlay.png", mime="image/png", key=f"dl_gallery_{i}")

with st.expander("What Grad-CAM can and cannot tell a clinician", expanded=False):
    st.markdown(NOTE)
disclaimer()
