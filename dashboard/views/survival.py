"""Cohort survival: Kaplan–Meier strata, tests between groups, Cox models and PathoSig-style risk scores.

Every number comes from :mod:`engine.survival` (checked against R's survival package), one service call per
action: reading a table, joining features, Analyse (:func:`engine.survival.analyse`), Fit Cox model, Build risk
score (see dashboard/survival_panels.py). Tables are known by a content hash, so an edited re-upload never shows
the old table's results. A heavy analysis (an optimal cut-point with many permutations) runs on a worker thread
while a fragment shows its progress: the page stays usable. A failed action shows its message and leaves the
previous result on the page.
"""

from __future__ import annotations

import streamlit as st

from dashboard import handoff  # the Cohort page's "Open in Cohort survival" (branch cohort)
from dashboard import survival_panels as panels
from dashboard.common import disclaimer, show_error
from engine import survival as sv
from engine.survival.data import ENCODINGS

NONE = "(none)"
RESULT, JOB = "survival_result", "survival_job"
TABLE_TYPES = ["csv", "tsv", "txt", "xlsx"]

st.title("Cohort survival")
st.caption("Kaplan–Meier curves, log-rank tests, Cox models and risk scores for a table with one row per patient. "
           "Numbers equal R's survival package (log-log 95 % intervals, Efron ties).")


# ------------------------------------------------------------------------------------------- table
demo = None
handoff.receive()  # --- cohort hand-off: a patient table sent from the Cohort page becomes the uploaded table
if st.radio("Cohort", ["Demo cohort", "Upload a table"], horizontal=True, key="survival_source") == "Demo cohort":
    demo = sv.DEMO_COHORTS[st.selectbox("Demo cohort", list(sv.DEMO_COHORTS), format_func=lambda k: sv.DEMO_COHORTS[k].title, key="survival_demo")]
    st.caption(demo.description)
    table = sv.demo_table(demo.key)
else:
    c1, c2 = st.columns([4, 1])
    upload = c1.file_uploader("Cohort table (CSV, TSV or Excel; one row per patient)", type=TABLE_TYPES, key="survival_upload")
    encoding = c2.selectbox("Text encoding", ["detect", *ENCODINGS], key="survival_encoding", help="Detected by default (UTF-8, UTF-16, Windows-1252).")
    if upload is not None:
        panels.read_upload(upload, "survival_table", None if encoding == "detect" else encoding)
    if "survival_table" not in st.session_state:
        st.info("Upload a table with a follow-up time column, an event column and, optionally, groups and covariates.")
        disclaimer()
        st.stop()
    table = st.session_state["survival_table"]
    read_as = f" Read as {table.encoding}." if table.encoding not in ("", "utf-8", "xlsx") else ""
    st.caption(f"Table **{table.name}**: {len(table.frame)} rows, {table.frame.shape[1]} columns.{read_as}")

table = panels.with_features(table)


def idx(options: list, value, fallback: int = 0) -> int:
    return options.index(value) if value in options else fallback


# ------------------------------------------------------------------------------------------- mapping form
tid, columns, numeric = table.id, list(table.frame.columns), table.numeric_columns
handoff.preselect(tid, columns)  # --- cohort hand-off: its time, event and cluster features pre-selected
with st.form(f"survival_form_{tid}"):
    c1, c2, c3, c4 = st.columns(4)
    time_col = c1.selectbox("Time", columns, index=idx(columns, demo.time if demo else "time"), key=f"survival_time_{tid}")
    event_col = c2.selectbox("Event", columns, index=idx(columns, demo.event if demo else "status", min(1, len(columns) - 1)), key=f"survival_event_{tid}",
                             help="0/1, 1/2 (R: 1 = censored, 2 = event), true/false, yes/no, dead/alive, event/censored.")
    group_col = c3.selectbox("Group", [NONE, *columns], index=idx([NONE, *columns], demo.group if demo else NONE), key=f"survival_group_{tid}")
    unit = c4.selectbox("Time unit of the column", list(sv.TIME_UNITS), index=0, key=f"survival_unit_{tid}")
    c1, c2, c3, c4 = st.columns(4)
    strata = c1.selectbox("Strata", list(sv.STRATA), format_func=sv.STRATA.get, key=f"survival_strata_{tid}")
    split_col = c2.selectbox("Continuous column to split", numeric or [NONE], key=f"survival_split_{tid}", index=idx(numeric, "age"))
    cuts_text = c3.text_input("Manual cut-offs", "", key=f"survival_cuts_{tid}", placeholder="e.g. 50, 65")
    show_choice = c4.selectbox("Show time in", ["same unit", *sv.TIME_UNITS], index=0, key=f"survival_show_{tid}")
    c1, c2, c3, c4 = st.columns(4)
    minprop = c1.slider("Optimal cut: min. group share", 0.05, 0.4, 0.1, 0.05, key=f"survival_minprop_{tid}")
    n_perm = c2.number_input("Permutations (0 = none)", 0, 10000, 1000, 100, key=f"survival_perm_{tid}", help="Permutation p-value of the optimal cut (seed fixed: 20240601).")
    weighting = c3.selectbox("Test", list(sv.WEIGHTINGS), format_func=sv.WEIGHTINGS.get, key=f"survival_test_{tid}")
    fh = c4.text_input("Fleming–Harrington p, q", "1, 0", key=f"survival_fh_{tid}")
    at_times = st.text_input("Survival at times (in the shown unit)", "", key=f"survival_at_{tid}",
                             placeholder="default: " + ", ".join(f"{u}: {t}" for u, t in sv.DEFAULT_TIMES.items()))
    submitted = st.form_submit_button("Analyse", type="primary")

spec = sv.AnalysisSpec(time_col, event_col, None if group_col == NONE else group_col, unit, None if show_choice == "same unit" else show_choice,
                       strata, None if split_col == NONE else split_col, cuts_text, minprop, int(n_perm), weighting, fh, at_times)


def keep(result: sv.AnalysisResult) -> None:
    previous = st.session_state.get(RESULT)
    if previous is None or previous.table_id != result.table_id:  # another table: its Cox and risk-score results no longer apply
        for key in (panels.COX_KEY, panels.RISK_KEY):
            st.session_state.pop(key, None)
    st.session_state[RESULT] = result


previous = st.session_state.get(RESULT)
if submitted or (demo is not None and (previous is None or previous.table_id != tid) and JOB not in st.session_state):
    if spec.work(len(table.frame)) > sv.BACKGROUND_WORK:  # minutes of permutations: off the script thread
        st.session_state[JOB] = sv.BackgroundAnalysis(table, spec).start()
    else:
        try:
            keep(sv.analyse(table, spec))
        except Exception as err:  # noqa: BLE001 - a message; the previous result stays below
            show_error(err, context="Analysis")


@st.fragment(run_every=1.0)
def job_status() -> None:
    job = st.session_state.get(JOB)
    if job is None:
        return
    if not job.done:
        done, total = job.progress
        st.progress(done / max(total, 1), text=f"Analysing {job.table.name}: {done:,} of {total:,} permutations…")
        return
    st.session_state.pop(JOB)
    try:
        keep(job.result())
    except Exception as err:  # noqa: BLE001 - shown after the rerun
        st.session_state["survival_job_error"] = err
    st.rerun()


job_status()
if "survival_job_error" in st.session_state:
    show_error(st.session_state.pop("survival_job_error"), context="Analysis")

res = st.session_state.get(RESULT)
if not res or res.table_id != tid:
    st.info("Map the columns above and press **Analyse**.")
    disclaimer()
    st.stop()

st.info(f"{res.cohort.summary()}.", icon=":material/info:")
for msg in res.messages:
    show_error(msg, context="Tests between groups")
tab_km, tab_tests, tab_cut, tab_cox, tab_risk = st.tabs(["Kaplan–Meier", "Tests", "Cut-point", "Cox model", "Risk score"])
with tab_km:
    panels.km_tab(res)
with tab_tests:
    panels.tests_tab(res)
with tab_cut:
    panels.cut_tab(res)
with tab_cox:
    panels.cox_tab(table, res, demo.covariates if demo else ())
with tab_risk:
    panels.risk_tab(table, res, demo.features if demo else ())
disclaimer()
