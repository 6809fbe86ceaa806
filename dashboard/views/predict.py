"""Tile prediction: class probabilities for this session's tiles, whether each looks like the model's training tiles
(in domain) and how sure the model is; stain normalisation is the model card's unless the user picks another (with a warning)."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import sidebar, state
from dashboard.common import disclaimer, guarded, show_error
from engine.exports import safe_csv
from engine.imageio import read_image
from engine.limits import inference_slot, wait_message
from engine.normalization import choice_warning
from engine.normalization import describe as describe_normalization
from engine.privacy import anonymise_frame

RESULT_KEY = "predict_result"

st.title("Tile prediction")
card = sidebar.selected_card()
tiles = state.tiles()
if card is None:
    st.error("No model is registered, so nothing can be predicted. See the README: 'Adding a model'.")
    st.stop()
if not tiles:
    st.info("No tiles yet: add some on the Upload page.")
    st.page_link("views/upload.py", label="Go to Upload", icon=":material/upload:")
    st.stop()

st.caption(f"Model **{card.id}** — score = {card.score_name} ({' + '.join(card.positive_classes) or card.classes[-1]}); input {card.input_px} px; card threshold {card.threshold:.3f} ({card.threshold_method or 'not stated'}).")

choices = {"card": f"As the model card says: {describe_normalization(card)}", "none": "None", "macenko": "Macenko", "vahadane": "Vahadane (staintools, slower)"}
method = st.selectbox("Stain normalisation", list(choices), format_func=choices.get, key="predict_normalization",
                      help="The model card's setting is what the model was trained with. Anything else can change its scores.")
if choice_warning(card, method):  # said as soon as it is chosen, before predicting
    st.warning(choice_warning(card, method), icon=":material/warning:")
with st.form("predict_form"):
    reference_file = st.file_uploader("Reference tile (Macenko/Vahadane only)", type=["jpg", "jpeg", "png", "tif", "tiff"], help="Default: the published Macenko reference stains.")
    submitted = st.form_submit_button(f"Predict {len(tiles)} tile(s)", type="primary")


def make_normalizer():
    if method in ("card", "none") or reference_file is None:
        return method  # the predictor resolves it against the card
    from engine.stain import get_normalizer

    return get_normalizer(method, read_image(reference_file.getvalue(), name=reference_file.name))


if submitted:
    try:
        from engine.predict import TilePredictor

        bar = st.progress(0.0, text="Loading model…")
        predictor = TilePredictor(card, normalizer=make_normalizer())
        normalizer = predictor.normalizer

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"{done}/{total} tiles")

        def on_wait(place: int) -> None:
            bar.progress(0.0, text=f"{wait_message(place).capitalize()} (other users' work is running)…")

        with inference_slot(on_wait=on_wait):  # one global limit on heavy inference across all users
            result = predictor.predict_paths([t.path for t in tiles], progress=progress)
        # Show the user's file names, not server paths.
        names = {t.path: t.name for t in tiles}
        frame = result.to_frame()
        frame["path"] = frame["path"].map(lambda p: names.get(p, p))
        stored = {t.path: Path(t.path).name for t in tiles}  # messages name the user's file, not the stored copy
        frame["error"] = [e if not isinstance(e, str) else e.replace(f"'{stored[p]}'", f"'{names[p]}'") for p, e in zip(result.to_frame()["path"], frame["error"])]
        st.session_state[RESULT_KEY] = {"card_id": card.id, "result": result, "frame": frame, "paths": [t.path for t in tiles], "normalize": normalizer is not None, "method": method, "normalizer": normalizer}
        bar.empty()
    except Exception as err:  # noqa: BLE001 - shown as a message; the previous result stays below
        show_error(err, context="Prediction")

saved = st.session_state.get(RESULT_KEY)
if not saved:
    st.stop()
result, frame = saved["result"], saved["frame"].copy()
if saved["card_id"] != card.id:
    st.warning(f"These results are from model '{saved['card_id']}'. Press Predict to run '{card.id}'.")

if result.normalization_warning:
    st.warning(f"These results: {result.normalization_warning}", icon=":material/warning:")
if result.domain_warning:
    st.error(result.domain_warning, icon=":material/report:")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Tiles", len(frame))
m2.metric("From cache", f"{result.n_cached}/{len(frame)}")
m3.metric("Unreadable", result.n_errors)
m4.metric("Time", f"{result.seconds:.2f} s")

threshold = st.slider(f"Threshold on {result.score_name}", 0.0, 1.0, float(result.threshold), 0.01, help="Default: the model card's threshold.")
frame["label"] = [result.label_for(s, threshold) if pd.notna(s) else None for s in frame["score"]]

f1, f2, f3 = st.columns([1, 1, 2])
label_filter = f1.multiselect("Show labels", sorted(frame["label"].dropna().unique()), default=sorted(frame["label"].dropna().unique()))
sort_by = f2.selectbox("Sort by", ["score ↓", "score ↑", "name"])
score_range = f3.slider("Score range", 0.0, 1.0, (0.0, 1.0), 0.01)
view = frame[(frame["label"].isin(label_filter) & frame["score"].between(*score_range)) | frame["error"].notna()]
view = view.sort_values("path" if sort_by == "name" else "score", ascending=sort_by != "score ↓", na_position="last")

table, gallery = st.tabs(["Table", "Gallery"])
with table:
    prob_cols = [c for c in view.columns if c.startswith("p_")]
    st.dataframe(
        view,
        hide_index=True,
        column_config={
            "score": st.column_config.ProgressColumn(result.score_name, min_value=0.0, max_value=1.0, format="%.3f"),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in prob_cols},
            "in_domain": st.column_config.CheckboxColumn("in domain", help="Looks like the model's training tiles (out-of-domain detector on the card)."),
            "domain_score": st.column_config.NumberColumn("domain score", format="%.1f", help="Distance to the training tiles' features; in domain up to the card's threshold."),
            "uncertainty": st.column_config.NumberColumn("uncertainty", format="%.3f", help="Spread of the score under Monte Carlo dropout."),
        },
    )
    anonymise = st.toggle("Anonymise names", key="predict_anonymise", help="The CSV names each tile by a stable pseudonym (tile-…) instead of its file name; the same tile name always gets the same pseudonym on this server.")
    export = anonymise_frame(view, "path", "tile") if anonymise else view
    st.download_button("Download CSV", safe_csv(export), file_name=f"histodash_predictions_{result.model_id}.csv", mime="text/csv")
with gallery:
    paths = dict(zip(frame["path"], saved["paths"]))
    per_row = 5
    rows = view[view["error"].isna()].head(50)
    for start in range(0, len(rows), per_row):
        cols = st.columns(per_row)
        for col, (_, row) in zip(cols, rows.iloc[start : start + per_row].iterrows()):
            col.image(state.preview_file(paths[row["path"]], row["path"]), width="stretch")
            flag = row.get("in_domain")
            ood = " · :red[out of domain]" if flag is not None and pd.notna(flag) and not bool(flag) else ""
            col.caption(f"**{row['label']}** · {row['score']:.3f}{ood}\n\n{row['path']}")

if saved["normalize"] and saved["normalizer"] is not None:
    st.subheader("Stain normalisation: before / after")
    pick = st.selectbox("Tile", list(paths.keys()))
    with guarded("Normalisation preview"):
        rgb = read_image(paths[pick])
        info = saved["normalizer"].transform_with_info(rgb)
        a, b = st.columns(2)
        a.image(rgb, caption="Original", width="stretch")
        b.image(info.image, caption="Normalised" if info.normalized else f"Unchanged: {info.reason}", width="stretch")
disclaimer()
