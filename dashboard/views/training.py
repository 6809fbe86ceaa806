"""Training: configure a Keras training job, watch it live, cancel it, use the model it registers.

Jobs run in their own processes (engine.jobs), so this page only submits, reads records and draws.
It never imports TensorFlow. The selected job's id lives in ``st.query_params["job"]`` and in the
browser session's state (``state.put("training_job")``): a refresh, a new tab or a dashboard restart
re-attaches to it. The jobs table redraws itself while a job runs; Enter in a field does not submit.
"""


import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import state
from dashboard.common import disclaimer, guarded, session_id, session_workspace, show_error
from dashboard.jobs_view import architecture_label, clean_log, jobs_table
from engine.config import get_settings
from engine.errors import HistoDashError, storage_errors
from engine.jobs import format_duration, get_runner, list_visible
from engine.privacy import strip_server_paths
from engine.registry import Registry
from engine.training.config import ARCHITECTURES, OPTIMIZERS
from engine.training.submit import check_submission
from engine.uploads import safe_filename, save_bytes

DEMO = get_settings().shared_data / "lc25000-lung-224"
JOB_KEY = "training_job"
STATE_ICON = {"queued": ":material/schedule:", "running": ":material/play_circle:", "succeeded": ":material/check_circle:",
              "failed": ":material/error:", "cancelled": ":material/stop_circle:", "damaged": ":material/broken_image:",
              "unknown": ":material/help:"}

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


def use_model(model_id: str) -> None:
    st.session_state["model_id"] = model_id


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
    c1, c2, c3 = st.columns([2, 2, 1])
    model_id = c1.text_input("Model id (optional)", placeholder="automatic: <architecture>-<date>-<time>")
    name = c2.text_input("Model name (optional)")
    freeze = c3.checkbox("Freeze backbone", False, help="ResNet50 / InceptionV3 / EfficientNetB0 heads: train only the head.")
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
def curves(metrics: list[dict]):
    rows = [m for m in metrics if "epoch" in m]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    frame["x"] = range(1, len(frame) + 1)
    fig = go.Figure()
    for col, name in (("loss", "loss"), ("val_loss", "validation loss"), ("val_auc", "validation AUC")):
        if col in frame and frame[col].notna().any():
            fig.add_scatter(x=frame["x"], y=frame[col], name=name, mode="lines+markers", yaxis="y2" if col == "val_auc" else "y")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch" + (" (all folds)" if "fold" in frame else ""),
                      yaxis=dict(title="loss"), yaxis2=dict(title="AUC", overlaying="y", side="right", range=[0, 1.01]), legend=dict(orientation="h"))
    return fig


def show_log(job_id: str, n: int = 25):
    st.code(clean_log(strip_server_paths(runner.log_tail(job_id, n + 8))) or "(empty log)", language=None)


@st.fragment(run_every=2)
def live(job_id: str) -> None:
    rec = runner.get(job_id)
    if not rec.active:  # finished while we watched: redraw the whole page with the results
        st.rerun()
    p = rec.progress
    st.markdown(f"{STATE_ICON.get(rec.state, STATE_ICON['unknown'])} **{rec.state}** · started {format_duration(rec.elapsed_s)} ago" if rec.started else f"{STATE_ICON['queued']} **queued**: waiting for a free worker slot")
    st.progress(rec.fraction, text=f"{p.get('message', '')} · ETA {format_duration(p.get('eta_s'))}" if p else "waiting…")
    if p.get("epochs"):
        c1, c2 = st.columns(2)
        c1.progress(min(p["epoch"] / p["epochs"], 1.0), text=f"epoch {p['epoch']}/{p['epochs']}")
        c2.progress(min(p["batch"] / p["batches"], 1.0), text=f"batch {p['batch']}/{p['batches']}" + (f" · loss {p['loss']:.4f}" if p.get("loss") is not None else ""))
    fig = curves(rec.metrics)
    if fig is not None:
        st.plotly_chart(fig, width="stretch", key=f"live-curves-{job_id}")
    if st.button("Cancel job", icon=":material/stop:", disabled=rec.cancel_requested, key=f"cancel-{job_id}"):
        runner.cancel(job_id)
        st.toast(f"Cancel requested for {job_id}")
    show_log(job_id)


def results(rec) -> None:
    res = rec.result or {}
    quality = res.get("quality") or {}
    failed = quality.get("status") == "failed"
    summary = (f"**{res.get('model_id')}** · {res.get('n_tiles')} tiles ({res.get('n_skipped', 0)} unreadable skipped) · "
               f"{res.get('epochs_run')} epoch(s), best {res.get('best_epoch')} · {format_duration(res.get('wall_s'))}")
    if failed:  # registered, but marked: red, with the reason, never selected by default
        st.error(f"Failed quality check: {'; '.join(quality.get('reasons', []))}. The model {summary} is registered but marked as failed "
                 f"and never selected by default. {quality.get('rule', '')}", icon=":material/error:")
    else:
        st.success(f"Registered model {summary}")
    metrics = res.get("metrics") or []
    keys = ["split", "n", "auc", "f1", "accuracy", "precision", "recall", "threshold", "accuracy_multiclass"]
    st.dataframe(pd.DataFrame([{k: m.get(k) for k in keys if k in m or k == "split"} for m in metrics]), hide_index=True, width="stretch")
    if res.get("cv"):
        st.markdown("**Cross-validation** (mean ± sd over folds): " + " · ".join(f"{k} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in res["cv"].items()))
    st.caption(f"Threshold {res.get('threshold')}: the F1-optimal cut-off on the validation split. Score = p({' + '.join(res.get('positive_classes', []))}).")
    c1, c2, c3 = st.columns(3)
    fig = curves(res.get("history") or rec.metrics)
    if fig is not None:
        c1.plotly_chart(fig, width="stretch", key=f"curves-{rec.id}")
    m = metrics[0] if metrics else {}
    if m.get("confusion"):
        classes = res.get("classes", [])
        cm = go.Figure(go.Heatmap(z=m["confusion"], x=classes, y=classes, colorscale="Blues", text=m["confusion"], texttemplate="%{text}"))
        cm.update_layout(title=f"Confusion ({m['split']})", xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed", height=300, margin=dict(l=10, r=10, t=40, b=10))
        c2.plotly_chart(cm, width="stretch", key=f"cm-{rec.id}")
    roc = go.Figure()
    for split, pts in (res.get("roc") or {}).items():
        if pts.get("fpr"):
            roc.add_scatter(x=pts["fpr"], y=pts["tpr"], name=split, mode="lines")
    roc.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), showlegend=False)
    roc.update_layout(title="ROC", xaxis_title="false-positive rate", yaxis_title="true-positive rate", height=300, margin=dict(l=10, r=10, t=40, b=10))
    c3.plotly_chart(roc, width="stretch", key=f"roc-{rec.id}")
    model_id = res.get("model_id")
    if model_id in [c.id for c in Registry().cards()]:
        if st.session_state.get("model_id") == model_id:
            st.info(f"**{model_id}** is the selected model on every page.")
        else:  # the callback runs before the next script run, so the sidebar (drawn first) already shows the model
            st.button("Use this model anyway" if failed else "Use this model", type="secondary" if failed else "primary",
                      icon=":material/warning:" if failed else ":material/check:", on_click=use_model, args=(model_id,))
    else:
        st.warning(f"The model '{model_id}' is no longer registered.")


with guarded("Job"):
    rec = runner.get(chosen)
    st.subheader(f"Job {rec.id}")
    if rec.active:
        live(rec.id)
    elif rec.state == "succeeded":
        results(rec)
        with st.expander("Log"):
            show_log(rec.id, 200)
    else:
        if rec.state == "failed":
            st.error(f"The job failed: {strip_server_paths(rec.error or '')}")
        else:
            st.warning("The job was cancelled. Its log is kept below.")
        show_log(rec.id, 60)
    with st.expander("Configuration"):
        st.json(strip_server_paths(rec.params), expanded=False)  # the user's file names, never server paths
disclaimer()
