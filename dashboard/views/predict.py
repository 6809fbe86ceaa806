"""Tile prediction: class probabilities for this session's tiles, with optional stain normalisation.

Predict runs in a background worker (``dashboard.background``) with progress and Cancel; the result is kept
in the browser session's workspace (``state.put``), so a refresh, a second tab or a restart shows it again.
The result view is a fragment: its widgets (threshold, filters, sorting) redraw only the view.
"""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import background, sidebar, state
from dashboard.common import disclaimer, guarded, show_error
from dashboard.tilework import export_frame, make_normalizer, predict_tiles, score_text
from engine.config import get_settings
from engine.exports import safe_csv
from engine.imageio import read_image
from engine.normalization import choice_warning
from engine.normalization import describe as describe_normalization
from engine.privacy import anonymise_frame

RESULT_KEY, TASK = "predict_result", "predict"
MAX_UPLOAD_MB = max(1, get_settings().max_upload_bytes // (1024 * 1024))


@st.cache_resource(max_entries=4, show_spinner=False)
def normalizer_for(card_sha: str, method: str, reference_key: str, _card, _reference):
    return make_normalizer(_card, method, _reference)


@st.cache_data(max_entries=64, show_spinner=False)
def normalised_preview(path: str, card_sha: str, method: str, reference_key: str, _card, _reference):
    rgb = read_image(path)
    return rgb, normalizer_for(card_sha, method, reference_key, _card, _reference).transform_with_info(rgb)


def reference_key(reference) -> str:
    import hashlib

    return "default" if reference is None else hashlib.sha256(reference.tobytes()).hexdigest()[:16]


@st.fragment
def result_view(saved: dict) -> None:
    result, frame = saved["result"], saved["frame"].copy()
    threshold = st.slider(f"Threshold on {result.score_name}", 0.0, 1.0, float(result.threshold), 0.01, key="predict_threshold", help="Default: the model card's threshold.")
    frame["label"] = [result.label_for(s, threshold) if pd.notna(s) else None for s in frame["score"]]
    labels = [result.positive_label, result.negative_label]
    counts = frame["label"].value_counts()
    f1, f2, f3 = st.columns([1, 1, 2])
    label_filter = f1.multiselect("Show labels", labels, default=labels, key="predict_labels", format_func=lambda x: f"{x} ({counts.get(x, 0)})")
    sort_by = f2.selectbox("Sort by", ["score ↓", "score ↑", "name"], key="predict_sort")
    score_range = f3.slider("Score range", 0.0, 1.0, (0.0, 1.0), 0.01, key="predict_range")
    view = frame[(frame["label"].isin(label_filter) & frame["score"].between(*score_range)) | frame["error"].notna()]
    view = view.sort_values("path" if sort_by == "name" else "score", ascending=sort_by != "score ↓", na_position="last")
    shown = export_frame(view, result, threshold, normalized=saved["normalize"])
    st.caption(f"{len(view)} of {len(frame)} tile(s) shown.")
    table, gallery = st.tabs(["Table", "Gallery"])
    with table:
        prob_cols = [c for c in shown.columns if c.startswith("p_")]
        st.dataframe(shown, hide_index=True, column_config={
            "score": st.column_config.ProgressColumn(result.score_name, min_value=0.0, max_value=1.0, format="%.3f"),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in prob_cols},
            "in_domain": st.column_config.CheckboxColumn("in domain", help="Looks like the model's training tiles (out-of-domain detector on the card)."),
            "domain_score": st.column_config.NumberColumn("domain score", format="%.1f", help="Distance to the training tiles' features; in domain up to the card's threshold."),
            "uncertainty": st.column_config.NumberColumn("uncertainty", format="%.3f", help="Spread of the score under Monte Carlo dropout.")})
        anonymise = st.toggle("Anonymise names", key="predict_anonymise", help="The CSV names each tile by a stable pseudonym (tile-…) instead of its file name; the same tile name always gets the same pseudonym on this server.")
        export = anonymise_frame(shown, "path", "tile") if anonymise else shown
        st.download_button("Download CSV", safe_csv(export), file_name=f"histodash_predictions_{result.model_id}.csv", mime="text/csv")
    with gallery:
        paths = dict(zip(frame["path"], saved["paths"]))
        rows = view[view["error"].isna() & view["path"].map(lambda p: Path(paths[p]).exists())].head(50)  # not removed since
        for start in range(0, len(rows), 5):
            for col, (_, row) in zip(st.columns(5), rows.iloc[start : start + 5].iterrows()):
                with col, guarded(row["path"]):
                    col.image(state.preview_file(paths[row["path"]], row["path"]), width="stretch")
                    flag = row.get("in_domain")
                    ood = " · :red[out of domain]" if flag is not None and pd.notna(flag) and not bool(flag) else ""
                    col.caption(f"**{row['label']}** · {row['score']:.3f}{ood}\n\n{row['path']}")
    if saved["normalize"]:
        st.subheader("Stain normalisation: before / after")
        pick = st.selectbox("Tile", list(paths.keys()), key="predict_norm_pick")
        with guarded("Normalisation preview"):
            ref = saved.get("reference")
            rgb, info = normalised_preview(paths[pick], card.weights_sha256, saved["method"], reference_key(ref), card, ref)
            a, b = st.columns(2)
            a.image(rgb, caption="Original", width="stretch")
            b.image(info.image, caption="Normalised" if info.normalized else f"Unchanged: {info.reason}", width="stretch")


st.title("Tile prediction")
card = sidebar.selected_card()
tiles = state.tiles()
sid = state.session_id()
if card is None:
    st.error("No model is registered, so nothing can be predicted. See the README: 'Adding a model'.")
    st.stop()
if not tiles:
    st.info("No tiles yet: add some on the Upload page.")
    st.page_link("views/upload.py", label="Go to Upload", icon=":material/upload:")
    st.stop()

st.caption(f"Model **{card.id}** — score = {score_text(card)}; input {card.input_px} px; card threshold {card.threshold:.3f} ({card.threshold_method or 'not stated'}).")
choices = {"card": f"As the model card says: {describe_normalization(card)}", "none": "None", "macenko": "Macenko", "vahadane": "Vahadane (staintools, slower)"}
method = st.selectbox("Stain normalisation", list(choices), format_func=choices.get, key="predict_normalization",
                      help="The model card's setting is what the model was trained with. Anything else can change its scores.")
if choice_warning(card, method):  # said as soon as it is chosen, before predicting
    st.warning(choice_warning(card, method), icon=":material/warning:")
with st.form("predict_form", enter_to_submit=False):
    reference_file = st.file_uploader("Reference tile (Macenko/Vahadane only, optional)", type=["jpg", "jpeg", "png", "tif", "tiff"], max_upload_size=MAX_UPLOAD_MB,
                                      help="Default: the published Macenko reference stains.")
    submitted = st.form_submit_button(f"Predict {len(tiles)} tile(s)", type="primary", disabled=background.active(sid, TASK) is not None)

if submitted:
    try:
        reference = read_image(reference_file.getvalue(), name=reference_file.name) if reference_file is not None and method in ("macenko", "vahadane") else None
        task = background.submit(sid, TASK, predict_tiles, card, tiles, method=method, reference=reference,
                                 key=RESULT_KEY, label=f"Predicting {len(tiles)} tile(s)")
        background.run_or_show(task)
    except Exception as err:  # noqa: BLE001 - shown as a message; the previous result stays below
        show_error(err, context="Prediction")
task = background.get(sid, TASK)
if task is not None and task.active:
    background.status(sid, TASK)
elif task is not None and task.state == "cancelled" and task.finished and not task.seen_error:
    task.seen_error = True
    st.info("Prediction cancelled; the previous result (if any) is shown below.")
if (err := background.failure(task)) is not None:
    show_error(err, context="Prediction")
background.collect(task)

saved = state.get(RESULT_KEY)
if not saved:
    disclaimer()
    st.stop()
result = saved["result"]
if saved["card_id"] != card.id:
    st.warning(f"These results are from model '{saved['card_id']}'. Press Predict to run '{card.id}'.")
elif saved.get("tiles") is not None and saved["tiles"] != [t.sha256 for t in tiles]:
    st.info("Tiles were added or removed since these results: press Predict to include them.")
if result.normalization_warning:
    st.warning(f"These results: {result.normalization_warning}", icon=":material/warning:")
if result.domain_warning:
    st.error(result.domain_warning, icon=":material/report:")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Tiles", len(saved["frame"]))
m2.metric("From cache", f"{result.n_cached}/{len(saved['frame'])}")
m3.metric("Unreadable", result.n_errors)
m4.metric("Time", f"{result.seconds:.2f} s")
result_view(saved)
disclaimer()
