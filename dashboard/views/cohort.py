"""Cohort: a folder of slides + a clinical table → one background job → a patient table for Cohort survival."""

from __future__ import annotations

from pathlib import Path

import plotly.express as px
import streamlit as st

from dashboard import handoff, sidebar
from dashboard.common import disclaimer, guarded, session_id, session_workspace
from engine.cohort.job import library_folders, submit_cohort
from engine.cohort.patients import AGGREGATIONS
from engine.cohort.pipeline import gallery_tiles, load_result, slide_files
from engine.errors import HistoDashError
from engine.jobs import format_duration, get_runner
from engine.slides import SlideLibrary
from engine.survival import read_table
from engine.tissue import DEFAULT_MIN_TISSUE
from engine.uploads import safe_filename, slide_id_for, uploads_dir

SID, QP = session_id(), st.query_params
st.title("Cohort")
st.caption("Slides → tile scores and features (the model's penultimate layer) → phenotype clusters → one row per patient, "
           "joined to the clinical table. Runs as a background job: on the lab's Ray cluster when one is configured.")
card = sidebar.selected_card()
runner = get_runner()
library = SlideLibrary.configured()


def job():
    try:
        return runner.get(QP["cohort_job"]) if "cohort_job" in QP else None
    except HistoDashError:
        del QP["cohort_job"]
        return None


# ----------------------------------------------------------------------------- inputs
c1, c2 = st.columns(2)
folders = library_folders(library.root) if library else []
folder = c1.selectbox("Slide folder (library)", folders, format_func=lambda f: "/" + f, key="cohort_folder") if folders else None
if library is None:
    c1.info("No slide library is configured (HISTODASH_SLIDES_DIR): only this session's uploaded slides can be used.")
up_dir = uploads_dir(SID)
mine = sorted(p.name for p in up_dir.iterdir() if p.is_file()) if up_dir.is_dir() else []
picked = c2.multiselect("Also this session's uploaded slides (Slide heatmap page)", mine, key="cohort_uploads")
clinical_file = st.file_uploader("Clinical table (patient id, time, event, covariates)", type=["csv", "tsv", "txt", "xlsx"], key="cohort_clinical")
clinical_path, clinical_cols = None, []
if clinical_file is not None:
    with guarded(f"Reading {clinical_file.name}"):
        clinical_cols = list(read_table(clinical_file.getvalue(), name=clinical_file.name).columns)
        clinical_path = session_workspace() / "cohort" / safe_filename(clinical_file.name)
        clinical_path.parent.mkdir(parents=True, exist_ok=True)
        clinical_path.write_bytes(clinical_file.getvalue())
c1, c2, c3 = st.columns(3)
how = c1.radio("Slide → patient", ["File-name pattern", "Clinical-table column"], key="cohort_mapping", disabled=not clinical_cols)
params: dict = {}
if how == "File-name pattern" or not clinical_cols:
    params["patient_pattern"] = c2.text_input("Pattern (its first group is the patient id)", r"^([^_.]+)", key="cohort_pattern")
else:
    params["slide_column"] = c2.selectbox("Column of slide names", clinical_cols, key="cohort_slide_col")
params["clinical_id"] = c3.selectbox("Patient id column", clinical_cols, key="cohort_id_col") if clinical_cols else None
c1, c2, c3, c4, c5 = st.columns(5)
params["clusters"] = int(c1.number_input("Phenotype clusters K", 0, 500, 50, key="cohort_k", help="0: scores only"))
params["discovery"] = c2.slider("Discovery share (fits the clusters)", 0.1, 1.0, 0.5, 0.05, key="cohort_disc")
params["aggregate"] = c3.selectbox("Several slides per patient", list(AGGREGATIONS), format_func=AGGREGATIONS.get, key="cohort_agg")
params["tile_px"] = int(c4.number_input("Tile (px at level 0)", 16, 4096, int(card.input_px) if card else 224, key="cohort_tile"))
params["min_tissue"] = c5.slider("Min. tissue per tile", 0.0, 1.0, DEFAULT_MIN_TISSUE, 0.05, key="cohort_tissue")
params.update(model_id=card.id if card else None, clinical=str(clinical_path) if clinical_path else None, patient_column=params.get("clinical_id"))
if folder is not None:
    params["slide_dir"] = str(library.resolve(folder))
busy = (rec := job()) is not None and rec.active
if st.button("Start the cohort job", type="primary", disabled=busy or card is None or (folder is None and not picked)):
    with guarded("Starting the cohort"):
        QP["cohort_job"] = submit_cohort(runner, {k: v for k, v in params.items() if v is not None}, uploads=[up_dir / n for n in picked], owner=SID)


# ----------------------------------------------------------------------------- the job
@st.fragment(run_every=1.5)
def panel():
    r = job()
    if r is None:
        return
    p = r.progress or {}
    if r.active:
        slides = f" · {p['slides_done']}/{p['slides_total']} slides" if p.get("slides_total") else ""
        eta = f" · about {format_duration(p['eta_s'])} left" if p.get("eta_s") is not None else ""
        st.progress(r.fraction, text=f"{r.state}: {p.get('done', 0):,}/{p.get('total', 0):,} tiles{slides}{eta} · {p.get('message', '')}")
        if st.button("Cancel", key="cohort_cancel"):
            runner.cancel(r.id)
        st.session_state["cohort_was_active"] = r.id
    elif st.session_state.pop("cohort_was_active", None) == r.id:
        st.rerun()  # the whole page, with the result
    elif r.state == "failed":
        st.error(f"The cohort job failed: {r.error}")
    elif r.state == "cancelled":
        st.warning("The cohort job was cancelled. Finished slides and chunks are stored: starting it again resumes from them.")


panel()
rec = job()
if rec is None or rec.state != "succeeded" or not rec.result:
    disclaimer()
    st.stop()

# ----------------------------------------------------------------------------- the result
with guarded("Loading the cohort"):
    res = load_result(rec.result["out_dir"])
    man, patients, slides = res["manifest"], res["patients"], res["slides"]
    m = st.columns(4)
    m[0].metric("Patients", len(patients))
    m[1].metric("Slides", man["n_slides"])
    m[2].metric("Tissue tiles", f"{man['n_tiles']:,}")
    m[3].metric("From the store", f"{man['n_from_store']:,}")
    for note in man["messages"]:
        st.info(note)
    st.subheader("Patient table")
    st.dataframe(patients, hide_index=True)
    d1, d2, d3 = st.columns(3)
    d1.download_button("patients.csv", (Path(rec.result["out_dir"]) / "patients.csv").read_bytes(), "patients.csv", "text/csv", key="cohort_dl_csv")
    if (parquet := Path(rec.result["out_dir"]) / "patients.parquet").exists():
        d2.download_button("patients.parquet", parquet.read_bytes(), "patients.parquet", "application/octet-stream", key="cohort_dl_parquet")
    if d3.button("Open in Cohort survival", type="primary", key="cohort_to_survival", help="The table, with its cluster columns chosen for the risk score"):
        cols = set(patients.columns)
        handoff.send_to_survival(f"cohort {rec.id}", patients, features=man["feature_columns"], time="time" if "time" in cols else None,
                                 event=next((c for c in ("event", "status") if c in cols), None))
        st.switch_page("views/survival.py")
    feats = man["feature_columns"]
    if feats:
        st.subheader("Cluster composition per patient")
        long = patients.melt(id_vars=[man["patient_id_column"]], value_vars=feats, var_name="cluster", value_name="share")
        st.plotly_chart(px.bar(long, x=man["patient_id_column"], y="share", color="cluster", height=420), key="cohort_bars")
    st.subheader("Per-slide results")
    st.dataframe(slides, hide_index=True)
    files = slide_files(rec.params)
    v1, v2 = st.columns([3, 1])
    shown = v1.selectbox("Slide", [n for n in slides.slide if n in files], key="cohort_view_slide", label_visibility="collapsed")
    if v2.button("Open in Slide heatmap", disabled=shown is None, key="cohort_to_viewer", help="The slide in the viewer, its cluster map a layer"):
        with guarded("Opening the slide"):
            target = {"slide": slide_id_for(Path(files[shown]), session=SID), "job": rec.id}
            st.switch_page("views/slides.py", query_params=target)
    if res["gallery"] is not None:
        st.subheader("Cluster gallery (tiles nearest each centre)")
        k = st.selectbox("Cluster", sorted(res["gallery"].cluster.unique()), key="cohort_gallery_k")
        cols = st.columns(4)
        for i, (caption, rgb) in enumerate(gallery_tiles(res["gallery"], k)):
            cols[i % 4].image(rgb, caption=caption, width="stretch")
disclaimer()
