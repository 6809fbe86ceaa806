"""Home: what HistoDash does, the disclaimer, links to every page."""

from pathlib import Path

import streamlit as st

from dashboard.common import DISCLAIMER

PAGES = Path(__file__).resolve().parent

st.title(":material/biotech: HistoDash")
st.markdown(
    "Computational histopathology in the browser: predictions on H&E tiles, slide heatmaps, "
    "Grad-CAM explanations, cohort survival analysis and model training — one engine behind every page, "
    "running on this server, offline."
)
st.warning(DISCLAIMER, icon=":material/warning:")

LINKS = [
    ("upload", ":material/upload: Upload", "Add H&E tiles (JPEG, PNG, TIFF) or a .zip of tiles. Your uploads are private to this browser session."),
    ("predict", ":material/analytics: Tile prediction", "Class probabilities from the selected Keras model, with optional Macenko stain normalisation; CSV download."),
    ("gradcam", ":material/local_fire_department: Grad-CAM", "Where in a tile the model looked."),
    ("slides", ":material/map: Slide heatmap", "Tissue detection, tiling and batched inference over a whole-slide image."),
    ("survival", ":material/monitoring: Cohort survival", "Kaplan–Meier curves, log-rank tests, Cox models and pathology risk scores."),
    ("training", ":material/model_training: Training", "Launch, watch and cancel background training jobs; finished models appear in the model picker."),
    ("models", ":material/inventory_2: Models", "Every registered model's card; import a .keras model of your own (checked for code before it is loaded)."),
]
for name, label, text in LINKS:
    if (PAGES / f"{name}.py").exists():
        cols = st.columns([1, 3])
        cols[0].page_link(str(PAGES / f"{name}.py"), label=label)
        cols[1].markdown(text)

st.info(
    "**First time here?** Everything works on bundled demo data: *Upload → Load example tiles* (tiles cut from "
    "OpenSlide's CC0 test slide), then *Tile prediction* and *Grad-CAM*; the same slide is in the *Slide heatmap* "
    "library, and *Cohort survival* opens on a demo cohort.",
    icon=":material/science:",
)
st.divider()
st.caption(
    "The model in the sidebar is used by every page; its card (training data, metrics and the split they "
    "were measured on, threshold) is one click away. Results are cached on the server, so repeated runs are instant."
)
