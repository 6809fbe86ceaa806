"""Grad-CAM: which regions of a tile drove the model's call (Grad-CAM, Grad-CAM++, integrated gradients).

Input: this session's tiles, a direct upload, the tile prediction results, or a slide region passed
in the URL (``?slide=<id>&x=..&y=..&size=..``, from the Slide heatmap page). The model is loaded once per
server process and maps are computed in background workers (progress, Cancel); the last map and the
gallery are kept in the session's workspace (``state``), so a refresh shows them again. Colour map and
opacity redraw a fragment from cached renders, never recomputing. TensorFlow is only imported by workers.
"""

import streamlit as st

from dashboard import background, sidebar, state, tilework
from dashboard.common import disclaimer, show_error
from dashboard.gradcam_parts import SOURCES, gallery, panels, pick_tile, ranked, tile_file
from engine.config import get_settings
from engine.errors import InvalidInputError
from engine.gradcam import COLORMAPS, METHOD_LABELS, METHODS, PREDICTED, SCORE

RESULT_KEY, GALLERY_KEY, PREDICT_KEY = "gradcam_result", "gradcam_gallery", "predict_result"
TASK, GALLERY_TASK, LOAD_TASK = "gradcam", "gradcam_gallery", "gradcam_model"
MAX_UPLOAD_MB = max(1, get_settings().max_upload_bytes // (1024 * 1024))

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


def label_of(score: float) -> str:
    """The card's positive/negative label of a score at the card's threshold."""
    from engine.predict import labels_from_card

    positive, negative = labels_from_card(card)
    return positive if score >= card.threshold else negative


def task_messages(name: str, context: str) -> None:
    task = background.get(sid, name)
    if task is not None and task.active:
        background.status(sid, name, key_prefix="gc_")
    if (err := background.failure(task)) is not None:
        show_error(err, context=context)
    background.collect(task)


def gallery_section(saved_predict: dict | None, options: dict, cmap: str, opacity: float) -> None:
    st.subheader("Gallery: top-scoring tiles")
    if not saved_predict:
        st.caption("Run the Tile prediction page to get a gallery of its highest-scoring tiles here.")
        return
    if saved_predict["card_id"] != card.id:
        st.caption(f"The prediction results are from model '{saved_predict['card_id']}'; predict again with '{card.id}' for a gallery.")
        return
    ok = ranked(saved_predict)
    g1, g2 = st.columns([3, 1])
    k = g1.slider("Tiles", 1, max(2, min(12, len(ok))), min(6, len(ok)) or 1) if len(ok) else 0
    if g2.button("Compute gallery", disabled=not len(ok) or explainer is None or background.active(sid, GALLERY_TASK) is not None):
        rows = [(r.path, r.tile_file) for r in ok.head(k).itertuples()]
        background.run_or_show(background.submit(sid, GALLERY_TASK, tilework.explain_gallery, card, rows, **options, key=GALLERY_KEY, label="Computing the gallery"))
    task_messages(GALLERY_TASK, "Gallery")
    gallery(state.get(GALLERY_KEY) or [], cmap, opacity)


@st.fragment
def results(saved: dict | None, saved_predict: dict | None, options: dict) -> None:
    """The map, the gallery and their display controls: a change here redraws this part only, from cached renders."""
    v1, v2, v3 = st.columns([2, 2, 1])
    opacity = v1.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="gradcam_opacity")
    cmap = v2.selectbox("Colour map", COLORMAPS, key="gradcam_cmap")
    v3.toggle("Anonymise names", key="gradcam_anonymise", help="Downloads are named by a stable pseudonym (tile-…) instead of the tile's file name.")
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
        panels(saved, cmap, opacity)
    gallery_section(saved_predict, options, cmap, opacity)


st.title("Grad-CAM")
card = sidebar.selected_card()
sid = state.session_id()
if card is None:
    st.error("No model is registered, so there is nothing to explain. See the README: 'Adding a model'.")
    st.stop()
st.caption(f"Model **{card.id}** — classes {', '.join(card.classes)}; score = {tilework.score_text(card)}.")

params = st.query_params
sources = ["session", "upload", "predict"] + (["slide"] if params.get("slide") else [])
source = st.radio("Tile from", sources, index=len(sources) - 1 if "slide" in sources else 0, format_func=SOURCES.get, horizontal=True)
saved_predict = state.get(PREDICT_KEY)
try:
    tile_name, tile_rgb, tile_path = pick_tile(source, params, saved_predict, MAX_UPLOAD_MB)
except Exception as err:  # noqa: BLE001 - shown as a message; earlier results stay below
    show_error(err, context="Input")
    tile_name = tile_rgb = tile_path = None

explainer = tilework.loaded_explainer(card)
if explainer is None and background.active(sid, LOAD_TASK) is None:
    load = background.get(sid, LOAD_TASK)
    if load is None or load.state != "failed" or load.result is not None:
        background.run_or_show(background.submit(sid, LOAD_TASK, tilework.load_explainer, card, label="Loading the model"))
    explainer = tilework.loaded_explainer(card)
task_messages(LOAD_TASK, "Model")
layers = explainer.conv_layers() if explainer is not None else []
default_layer = explainer.default_layer().path if layers else None
targets = [PREDICTED, SCORE, *card.classes]
busy = background.active(sid, TASK) is not None
with st.form("gradcam_form", enter_to_submit=False):
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Method", METHODS, format_func=METHOD_LABELS.get, help="Grad-CAM (coarse, class-specific), Grad-CAM++ (better with several instances), integrated gradients (pixel-level).")
    layer_paths = [c.path for c in layers] or ["(no convolutional layer)"]
    layer = c2.selectbox("Layer", layer_paths, index=layer_paths.index(default_layer) if default_layer else 0, help="Default: the last convolutional feature map. Not used by integrated gradients.")
    target = c3.selectbox("Class", targets, format_func=lambda t: {PREDICTED: "predicted class", SCORE: f"score ({tilework.score_text(card)})"}.get(t, t))
    submitted = st.form_submit_button("Compute", type="primary", disabled=tile_rgb is None or busy)

if submitted and tile_rgb is not None:
    try:
        if explainer is None:
            raise InvalidInputError(f"Model '{card.id}' could not be loaded (see the message above).")
        path = tile_path or tile_file(tile_name, tile_rgb)
        background.run_or_show(background.submit(sid, TASK, tilework.explain_tile, card, tile_rgb, tile_name, path, method=method,
                                                 layer=layer if layers else None, target=target, key=RESULT_KEY, label="Computing the map"))
    except Exception as err:  # noqa: BLE001 - shown as a message; the previous result stays below
        show_error(err, context="Grad-CAM")
task_messages(TASK, "Grad-CAM")

results(state.get(RESULT_KEY), saved_predict, {"method": method, "layer": layer if layers else None, "target": target})

with st.expander("What Grad-CAM can and cannot tell a clinician", expanded=False):
    st.markdown(NOTE)
disclaimer()
