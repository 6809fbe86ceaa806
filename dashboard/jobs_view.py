"""Pieces of the Training page: the jobs table, a running job's live panel, a finished job's results, user-facing
architecture names, the log without TensorFlow's start-up noise."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.jobs import describe_progress, format_duration, list_visible
from engine.privacy import strip_server_paths
from engine.registry import Registry
from engine.training.config import ARCHITECTURE_LABELS

STATE_ICON = {"queued": ":material/schedule:", "running": ":material/play_circle:", "succeeded": ":material/check_circle:",
              "failed": ":material/error:", "cancelled": ":material/stop_circle:", "damaged": ":material/broken_image:",
              "unknown": ":material/help:"}

# TensorFlow's C++ start-up lines (absl format, written before its logging is set up): kept in the log file, not shown.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|E\d{4} .*oneDNN)")


def architecture_label(arch: str) -> str:
    """The architecture's name for users (no internal references such as "(REFERENCE §4)")."""
    return re.sub(r"\s*\((?:REFERENCE|project)[^)]*\)", "", ARCHITECTURE_LABELS.get(arch, arch)).strip() or arch


def clean_log(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not TF_NOISE.match(line))


def jobs_frame(recs) -> pd.DataFrame:
    return pd.DataFrame([{
        "job": r.id, "state": f"{r.state}" + (" · cancelling" if r.active and r.cancel_requested else ""),
        "progress": r.fraction if r.active else (1.0 if r.state == "succeeded" else None),
        "now": describe_progress(r) if r.active else "", "architecture": architecture_label(str(r.params.get("architecture", ""))),
        "data": Path(str(r.params.get("data", ""))).name, "model": (r.result or {}).get("model_id", ""),
        "AUC": ((r.result or {}).get("headline") or {}).get("auc"), "quality": ((r.result or {}).get("quality") or {}).get("status", ""),
        "time": format_duration(r.elapsed_s),
        "error": strip_server_paths(r.error or "")[:200],
    } for r in recs])


def jobs_table(runner, session: str) -> None:
    """The training jobs this browser session may open (:func:`engine.jobs.list_visible`): state, a progress bar,
    what each is doing now, results; fits the page width."""
    recs = list_visible(runner, session, "train")
    st.dataframe(jobs_frame(recs), hide_index=True, width="stretch", column_config={
        "job": st.column_config.TextColumn("job", width="medium"), "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent", width="small"),
        "now": st.column_config.TextColumn("now", width="medium"), "AUC": st.column_config.NumberColumn("AUC", format="%.3f", width="small"),
        "error": st.column_config.TextColumn("error", width="medium", help="Shortened; the job's own panel shows all of it.")})


def use_model(model_id: str) -> None:
    st.session_state["model_id"] = model_id


def curves(metrics: list[dict]):
    """Loss and validation AUC per epoch (None before the first epoch)."""
    rows = [m for m in metrics if "epoch" in m]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    frame["x"] = range(1, len(frame) + 1)
    fig = go.Figure()
    for col, name in (("loss", "loss"), ("val_loss", "validation loss"), ("val_auc", "validation AUC")):
        if col in frame and frame[col].notna().any():
            fig.add_scatter(x=frame["x"], y=frame[col], name=name, mode="lines+markers", yaxis="y2" if col == "val_auc" else "y")
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch" + (" (all folds)" if "fold" in frame else "") + (" (members one after another)" if "member" in frame else ""),
                      yaxis=dict(title="loss"), yaxis2=dict(title="AUC", overlaying="y", side="right", range=[0, 1.01]), legend=dict(orientation="h"))
    return fig


def show_log(runner, job_id: str, n: int = 25):
    st.code(clean_log(strip_server_paths(runner.log_tail(job_id, n + 8))) or "(empty log)", language=None)


@st.fragment(run_every=2)
def live(runner, job_id: str) -> None:
    """A running job, redrawn every 2 s: state, progress, curves, Cancel, the log's tail."""
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
    show_log(runner, job_id)


def results(rec) -> None:
    """A finished job: its model (red when it failed the quality check), metrics, curves, confusion, ROC, Use this model."""
    res = rec.result or {}
    quality = res.get("quality") or {}
    failed = quality.get("status") == "failed"
    summary = (f"**{res.get('model_id')}** · {res.get('n_tiles')} tiles ({res.get('n_skipped', 0)} unreadable skipped) · "
               f"{res.get('epochs_run')} epoch(s)" + (f" × {res['members']} ensemble members" if res.get("members") else "")
               + f", best {res.get('best_epoch')} · {format_duration(res.get('wall_s'))}")
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
