"""Pieces of the Training page: the jobs table, user-facing architecture names, the log without TensorFlow's start-up noise."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.jobs import describe_progress, format_duration, list_visible
from engine.privacy import strip_server_paths
from engine.training.config import ARCHITECTURE_LABELS

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
