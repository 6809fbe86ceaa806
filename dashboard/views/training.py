"""Training: configure a Keras training job, watch it live, cancel it, use the model it registers.

Jobs run in their own processes (engine.jobs), so this page only submits, reads records and draws.
It never imports TensorFlow. The selected job's id lives in ``st.query_params["job"]`` and in the
browser session's state (``state.put("training_job")``): a refresh, a new tab or a dashboard restart
re-attaches to it. The jobs table redraws itself while a job runs; Enter in a field does not submit.
"""


import streamlit as st

from dashboard import state
from dashboard.common import disclaimer, guarded, session_id, session_workspace, show_error
from dashboard.jobs_view import architecture_label, jobs_table, live, results, show_log
from engine.config import get_settings
from engine.errors import HistoDashError, storage_errors
from engine.jobs import get_runner, list_visible
from engine.privacy import strip_server_paths
from engine.registry import Registry
from engine.training.config import ARCHITECTURES, OPTIMIZERS
from engine.training.submit import check_submission
from engine.uploads import safe_filename, save_bytes

DEMO = get_settings().shared_data / "lc25000-lung-224"
JOB_KEY = "training_job"

st.title("Training")
st.caption("Train a tile classifier on labelled tiles: a folder with one subfolder per class, a CSV manifest (path, label, optional patient) "
           "or a zip of class folders. Jobs run in the background: close the browser or restart the dashboard, they go on.")
runner = get_runner()
SID = session_id()
try:
    records = list_visible(runner, SID, "train")  # a job on this session's uploaded zip is listed for this session only
except HistoDashError as err:
    show_error(err, context="Jobs")
    records = []


# ----------------------------------------------------------------------------- the form
demo = DEMO.is_dir()
with st.expander("New training job", expanded=not records or not st.query_params.get("job")), st.form("train_form", enter_to_submit=False):
    c1, c2 = st.columns([3, 1])
    data = c1.text_input("Dataset: folder, CSV manifest or .zip (server path)", value=str(DEMO) if demo else "",
                         placeholder="/data/tiles", help="Folder of class subfolders (optionally class/patient/tile), a CSV with path,label[,patient] or a zip of class folders.")
    upload = c2.file_uploader("…or upload a .zip", type=["zip"], help="A zip of class folders; it is checked and extracted safely.")
    c1, c2, c3 = st.columns(3)
    label_column = c1.text_input("Label column (manifest)", value="tissue_class" if demo else "label")
    positive = c2.text_input("Positive classes (score)", value="lung_aca, lung_scc" if demo else "", help="Comma-separated; their summed probability is the score. Default: the last class.")
    registered = [c.id for c in Registry().cards()]
    init_from = c3.selectbox("Start from", ["(from scratch)", *registered], help="Fine-tune from a registered model (weights copied by layer name). No ImageNet download.")
    c1, c2, c3, c4 = st.columns(4)
    architecture = c1.selectbox("Architecture", list(ARCHITECTURES), format_func=architecture_label)
    input_px = c2.number_input("Input px (0 = architecture default)", 0, 1024, 64 if demo else 0, step=8)
    epochs = c3.number_input("Epochs", 1, 1000, 5)
    batch_size = c4.number_input("Batch size", 1, 1024, 32)
    c1, c2, c3, c4 = st.columns(4)
    learning_rate = c1.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f")
    optimizer = c2.selectbox("Optimiser", OPTIMIZERS)
    normalization = c3.selectbox("Stain normalisation", ["none", "macenko"], help="Macenko is applied before resizing, exactly as at prediction time.")
    class_weights = c4.selectbox("Class weights", ["balanced", "none"])
    st.markdown("**Augmentation** (training tiles only)")
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    flip = c1.checkbox("Flips", True)
    rotate90 = c2.checkbox("90° rotations", True)
    rotation = c3.number_input("Rotation (turns)", 0.0, 1.0, 0.0, 0.05)
    zoom = c4.number_input("Zoom", 0.0, 1.0, 0.1, 0.05)
    shift = c5.number_input("Shift", 0.0, 1.0, 0.1, 0.05)
    jitter = c6.number_input("Colour jitter", 0.0, 1.0, 0.05, 0.01)
    st.markdown("**Split and schedule**")
    c1, c2, c3, c4 = st.columns(4)
    method = c1.radio("Split by patient/group", ["holdout", "kfold"], format_func=lambda m: "train/val/test" if m == "holdout" else "stratified group k-fold", horizontal=True)
    val = c2.number_input("Validation fraction", 0.05, 0.5, 0.15, 0.05)
    test = c3.number_input("Test fraction", 0.0, 0.5, 0.15, 0.05)
    folds = c4.number_input("Folds (k-fold)", 2, 20, 5)
    c1, c2, c3, c4 = st.columns(4)
    patience = c1.number_input("Early-stopping patience", 0, 100, 5, help="Epochs without validation-loss improvement (0 = off). The best epoch's weights are kept.")
    lr_patience = c2.number_input("LR-on-plateau patience", 0, 100, 2)
    seed = c3.number_input("Seed", 0, 2**31 - 1, 42)
    max_images = c4.number_input("Max images (0 = all)", 0, 10**7, 1500 if demo else 0, help="A stratified random subset, for quick trials.")
    c1, c2, c3, c4 = st.columns([1.8, 1.8, 1.3, 1.3])
    model_id = c1.text_input("Model id (optional)", placeholder="automatic: <architecture>-<date>-<time>")
    name = c2.text_input("Model name (optional)")
    members = c3.number_input("Ensemble members", 1, 8, 1, help="Lung CNNs only: this many networks, trained one after another (each for all the epochs), "
                              "saved as one model that averages their logits. Costs that many times the training and prediction time.")
    freeze = c4.checkbox("Freeze backbone", False, help="ResNet50 / InceptionV3 / EfficientNetB0 heads: train only the head.")
    submitted = st.form_submit_button("Start training", type="primary")

if submitted:
    with guarded("Training job"):
        path = data.strip()
        if upload is not None:
            name = safe_filename(upload.name, fallback="tiles.zip")  # never a path ('..' stayed one)
            with storage_errors(f"'{name}' could not be saved"):  # the workspace folder on a full disk
                folder = session_workspace() / "training"
            path = str(save_bytes(upload.getvalue(), folder, name))  # a full disk: a message, nothing half-written
        config = {
            "data": path, "architecture": architecture, "input_px": int(input_px) or None, "epochs": int(epochs), "batch_size": int(batch_size),
            "learning_rate": float(learning_rate), "optimizer": optimizer, "normalization": normalization, "class_weights": class_weights,
            "init_from": None if init_from == "(from scratch)" else init_from, "label_column": label_column.strip() or "label",
            "positive_classes": positive, "seed": int(seed), "max_images": int(max_images) or None,
            "augmentation": {"flip": flip, "rotate90": rotate90, "rotation": rotation, "zoom": zoom, "shift": shift, "color_jitter": jitter},
            "split": {"method": method, "val": val, "test": test, "folds": int(folds)},
            "early_stopping_patience": int(patience), "reduce_lr_patience": int(lr_patience), "model_id": model_id.strip() or None, "name": name.strip(), "freeze_backbone": freeze,
            "ensemble": int(members),
        }
        # data from this session's uploads or the configured data roots only; every check before the job is queued
        cfg, found = check_submission(config, roots=[session_workspace(), *get_settings().data_roots], runner=runner)
        job_id = runner.submit("train", cfg.to_dict(), owner=SID)
        st.query_params["job"] = job_id
        state.put(JOB_KEY, job_id)
        st.success(f"Job **{job_id}** queued: {found.summary()}.")

# ----------------------------------------------------------------------------- job list
records = list_visible(runner, SID, "train") if submitted else records
wanted = st.query_params.get("job") or state.get(JOB_KEY)  # the URL, else this browser's last job (a new tab)
if wanted and wanted not in {r.id for r in records}:  # no such job, or another session's: one message, the id not repeated
    st.warning("The job in the link is not in this job list (there is no such job, or it belongs to another browser session); showing the newest instead.")
if not records:
    st.info("No training jobs yet.")
    disclaimer()
    st.stop()

st.subheader("Jobs")
(st.fragment(run_every=2)(jobs_table) if any(r.active for r in records) else jobs_table)(runner, SID)  # live while a job runs

ids = [r.id for r in records]
current = wanted if wanted in ids else ids[0]
states = {r.id: r.state for r in records}
chosen = st.selectbox("Show job", ids, index=ids.index(current), format_func=lambda i: f"{i} ({states[i]})")
if chosen != st.query_params.get("job"):
    st.query_params["job"] = chosen
if chosen != state.get(JOB_KEY):
    state.put(JOB_KEY, chosen)


# ----------------------------------------------------------------------------- one job
with guarded("Job"):
    rec = runner.get(chosen)
    st.subheader(f"Job {rec.id}")
    if rec.active:
        live(runner, rec.id)
    elif rec.state == "succeeded":
        results(rec)
        with st.expander("Log"):
            show_log(runner, rec.id, 200)
    else:
        if rec.state == "failed":
            st.error(f"The job failed: {strip_server_paths(rec.error or '')}")
        else:
            st.warning("The job was cancelled. Its log is kept below.")
        show_log(runner, rec.id, 60)
    with st.expander("Configuration"):
        st.json(strip_server_paths(rec.params), expanded=False)  # the user's file names, never server paths
disclaimer()
