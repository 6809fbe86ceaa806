"""Hand-offs between pages: the Cohort page's patient table → the Cohort survival page, in one click.

The Cohort page calls :func:`send_to_survival` and switches page; the survival page calls :func:`receive` before
its table choice (the sent table becomes its uploaded table) and :func:`preselect` once the table's widget id is
known (the feature columns are pre-selected for the risk score, time and event for the mapping form). Only
session state is used: nothing is written to disk, and another browser session never sees it.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import survival as sv
from engine.exports import safe_csv

PENDING, PRESET = "handoff_to_survival", "handoff_survival_preset"


def send_to_survival(name: str, table: pd.DataFrame, *, features: list[str], time: str | None = None, event: str | None = None) -> None:
    """Queue ``table`` for the survival page, as if uploaded there as ``<name>.csv`` (same reading, same content id)."""
    loaded = sv.load_table(safe_csv(table), f"{name}.csv")  # the bytes the page's download holds
    st.session_state[PENDING] = {"table": loaded, "features": list(features), "time": time, "event": event}


def receive() -> bool:
    """On the survival page: a table sent from the Cohort page replaces the page's table (its earlier results go)."""
    sent = st.session_state.pop(PENDING, None)
    if sent is None:
        return False
    st.session_state["survival_source"] = "Upload a table"
    st.session_state["survival_table"] = sent["table"]
    st.session_state[PRESET] = sent
    return True


def preselect(tid: str, columns: list[str]) -> None:
    """On the survival page, once: the sent table's time, event and feature columns chosen in its forms (widget keys of ``tid``,
    the table's content id)."""
    preset = st.session_state.get(PRESET)
    if not preset or preset["table"].id != tid:
        return
    st.session_state.pop(PRESET)
    if preset.get("time") in columns:
        st.session_state[f"survival_time_{tid}"] = preset["time"]
    if preset.get("event") in columns:
        st.session_state[f"survival_event_{tid}"] = preset["event"]
    st.session_state[f"survival_risk_feats_{tid}"] = [c for c in preset["features"] if c in columns]
