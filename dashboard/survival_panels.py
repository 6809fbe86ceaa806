"""What the Cohort survival page draws: one function per tab (rendering only; the numbers come from engine.survival).

The Cox and risk-score tabs hold their own forms; each submit makes ONE engine call
(:func:`engine.survival.cox_analysis`, :func:`engine.survival.risk_analysis`) and keeps the previous
result when it fails. Every CSV download goes through :func:`engine.exports.safe_csv`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.common import guarded, show_error
from engine import survival as sv
from engine.errors import InvalidInputError
from engine.exports import safe_csv

CHART_CONFIG = {"toImageButtonOptions": {"format": "png", "scale": 3, "filename": "histodash-survival"}, "displaylogo": False}
COX_KEY, RISK_KEY = "survival_cox", "survival_risk"


def read_upload(upload, state_key: str, encoding: str | None = None) -> None:
    """Read an uploaded table once per file (and encoding); a failure keeps the table shown before."""
    key = (upload.file_id, encoding)
    if st.session_state.get(f"{state_key}_key") != key:
        st.session_state[f"{state_key}_key"] = key
        with guarded(f"Reading {upload.name}"):
            st.session_state[state_key] = sv.load_table(upload.getvalue(), upload.name, encoding=encoding)


def with_features(table: sv.Table) -> sv.Table:
    """The expander that joins per-patient features from another table; returns the table to analyse (joined or not)."""
    with st.expander("Add per-patient features from another table (e.g. slide scores from `python -m engine cohort-scores`)"):
        feat_file = st.file_uploader("Features table", type=["csv", "tsv", "txt", "xlsx"], key="survival_feat_upload")
        if feat_file is not None:
            read_upload(feat_file, "survival_features")
        features = st.session_state.get("survival_features")
        if features is not None:
            c1, c2, c3, c4 = st.columns(4)
            left_id = c1.selectbox("Patient id (cohort table)", list(table.frame.columns), key="survival_join_left")
            right_id = c2.selectbox(f"Patient id ({features.name})", list(features.frame.columns), key="survival_join_right")
            id_chars = c3.number_input("Use the first N characters of its ids (0 = all; TCGA: 12)", 0, 200, 0, key="survival_join_chars")
            aggregate = c4.checkbox("Average several rows per patient", key="survival_join_agg")
            if st.button("Join features", key="survival_join_button"):
                with guarded("Joining features"):
                    st.session_state["survival_join"] = (table.id, sv.join_tables(table, features, left_id, right_id, id_chars=int(id_chars) or None,
                                                                                   aggregate=aggregate))
        joined = st.session_state.get("survival_join")
        if joined and joined[0] == table.id and st.button("Remove the joined features", key="survival_join_remove"):
            st.session_state.pop("survival_join")
    joined = st.session_state.get("survival_join")
    if not joined or joined[0] != table.id:
        return table
    st.caption(f"Using **{joined[1].name}**: {len(joined[1].frame)} patients with features.")
    return joined[1]


def csv_button(label: str, frame: pd.DataFrame, name: str) -> None:
    st.download_button(label, safe_csv(frame), file_name=name, mime="text/csv", key=f"survival_dl_{name}")


def figure(fig, name: str, key: str) -> None:
    """The chart, an offline HTML download, and PNG/SVG files where kaleido (static export) is installed."""
    st.plotly_chart(fig, config=CHART_CONFIG, key=key)
    st.download_button("Figure (HTML, offline; SVG from its camera button)", sv.figure_html(fig).encode(), file_name=f"{name}.html",
                       mime="text/html", key=f"survival_dl_{name}.html")
    if not sv.image_export_available():
        return
    state_key = f"survival_img_{name}"
    if st.button("Prepare PNG and SVG files", key=f"survival_prep_{name}"):
        with guarded("Figure export"):
            st.session_state[state_key] = {fmt: sv.figure_image(fig, fmt) for fmt in ("png", "svg")}
    for fmt, mime in (("png", "image/png"), ("svg", "image/svg+xml")):
        if fmt in st.session_state.get(state_key, {}):
            st.download_button(f"Figure ({fmt.upper()})", st.session_state[state_key][fmt], file_name=f"{name}.{fmt}", mime=mime,
                               key=f"survival_dl_{name}.{fmt}")


def km_tab(res: sv.AnalysisResult) -> None:
    km = res.km
    with guarded("Kaplan–Meier figure"):
        figure(sv.km_figure(km, res.test, title=""), "kaplan_meier", "survival_km_chart")
        st.caption("Shaded: 95 % log-log confidence bands; +: censored; dashed: median survival. PNG: the camera button on the figure.")
    st.subheader("Median survival")
    st.dataframe(km.medians_frame(), hide_index=True)
    st.caption("Median and 95 % CI as R's print.survfit; empty where the curve (or its limit) never reaches 0.5 (not reached).")
    st.subheader("Survival at chosen times")
    at = km.survival_at(res.times) if res.times else pd.DataFrame()
    st.dataframe(at, hide_index=True)
    c1, c2, c3 = st.columns(3)
    with c1:
        csv_button("Medians (CSV)", km.medians_frame(), "km_medians.csv")
    with c2:
        csv_button("Survival at times (CSV)", at, "km_survival_at_times.csv")
    with c3:
        csv_button("All curve steps (CSV)", km.to_frame(), "km_curves.csv")


def tests_tab(res: sv.AnalysisResult) -> None:
    if res.cohort.group_col is None:
        st.caption("Choose a group column, or strata from a continuous column, to compare groups.")
    if res.test is not None:
        t = res.test
        st.metric(t.test_name, sv.format_p(t.p), help=f"chi² = {t.chi2:.3f} on {t.df} df")
        st.dataframe(t.to_frame(), hide_index=True)
        csv_button("Test (CSV)", t.to_frame(), "logrank.csv")
    if res.pairwise is not None:
        st.subheader(f"Pairwise {res.pairwise.test_name} tests (Holm-adjusted)")
        st.dataframe(res.pairwise.to_frame(), hide_index=True)
        csv_button("Pairwise tests (CSV)", res.pairwise.to_frame(), "pairwise_logrank.csv")
    if res.hr is not None:
        st.subheader(f"Hazard ratios against '{res.hr.reference_group}' (Cox, Efron ties)")
        st.dataframe(res.hr.to_frame(), hide_index=True)
        figure(sv.forest_figure(res.hr), "hazard_ratios_forest", "survival_hr_forest")
        csv_button("Hazard ratios (CSV)", res.hr.to_frame(), "hazard_ratios.csv")


def cut_tab(res: sv.AnalysisResult) -> None:
    st.warning("An optimal cut-point is chosen to make the groups differ as much as possible, so its unadjusted p-value "
               "and hazard ratio are **biased** (too optimistic). Report the corrected p-value and check the cut on an "
               "independent cohort.", icon=":material/warning:")
    scan = res.scan
    if scan is None:
        st.caption("Choose *optimal cut-point* as the strata (with a continuous column) and press Analyse to scan every cut-off.")
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Optimal cut (low ≤ cut)", f"{scan.cutpoint:g}")
    c2.metric("Corrected p (Lausen–Schumacher 1992)", f"{scan.p_lausen92:.3g}")
    c3.metric("Permutation p", "—" if scan.p_permutation is None else f"{scan.p_permutation:.3g}",
              help=f"{scan.n_permutations} permutations, seed {scan.seed}")
    figure(sv.cutpoint_figure(scan), "cutpoint", "survival_cut_chart")
    st.caption(f"Maximally selected log-rank statistic |Z| = {scan.statistic:.3f} (as R maxstat, smethod = \"LogRank\"), "
               f"cut-offs leaving at least {scan.minprop:.0%} of the {scan.n} patients per group.")
    csv_button("p-value versus cut-off (CSV)", scan.to_frame(), "cutpoint_scan.csv")


def cox_tab(table: sv.Table, res: sv.AnalysisResult, defaults: tuple[str, ...]) -> None:
    spec = res.spec
    with st.form(f"survival_cox_form_{table.id}"):
        options = [c for c in table.numeric_columns if c not in (spec.time, spec.event)]
        covs = st.multiselect("Covariates (numeric)", options, default=[c for c in defaults if c in options], key=f"survival_cox_covs_{table.id}")
        c1, c2 = st.columns(2)
        with_groups = c1.checkbox("Add the current strata as a factor", value=False, key=f"survival_cox_groups_{table.id}")
        penalizer = c2.number_input("Penaliser (0 = none; ridge on standardised covariates)", 0.0, 10.0, 0.0, 0.05, key=f"survival_cox_pen_{table.id}")
        if st.form_submit_button("Fit Cox model"):
            try:
                st.session_state[COX_KEY] = sv.cox_analysis(table, res, spec, sv.CoxSpec(tuple(covs), with_groups, penalizer))
            except Exception as err:  # noqa: BLE001 - a message; the previous model stays
                show_error(err, context="Cox model")
    found = st.session_state.get(COX_KEY)
    if found is None or found.table_id != table.id:
        return
    cox = found.model
    for w in cox.warnings:
        st.warning(w)
    c1, c2, c3 = st.columns(3)
    c1.metric("Concordance (Harrell's C)", f"{cox.concordance:.3f}")
    c2.metric("Patients / events", f"{cox.n} / {cox.n_events}")
    c3.metric("Penaliser", f"{cox.penalizer:g}")
    st.dataframe(cox.to_frame(), hide_index=True)
    if found.univariable is not None:
        with st.expander("Univariable models (each covariate alone, same patients)"):
            st.dataframe(found.univariable, hide_index=True)
            csv_button("Univariable models (CSV)", found.univariable, "cox_univariable.csv")
    figure(sv.forest_figure(cox), "cox_forest", "survival_cox_forest")
    csv_button("Cox model (CSV)", cox.to_frame(), "cox_model.csv")
    if cox.ph_test is not None:
        st.subheader("Proportional hazards (Schoenfeld residuals)")
        st.caption("Score test per term and globally, as R's cox.zph(fit, transform = \"km\"); small p suggests the "
                   "hazard ratio changes over time." + (" With a penaliser the test ignores the penalty." if cox.penalizer else ""))
        st.dataframe(cox.ph_test, hide_index=True)
        csv_button("PH test (CSV)", cox.ph_test, "cox_zph.csv")
        term = st.selectbox("Residual plot for", list(cox.summary.term), key="survival_cox_sch_term")
        figure(sv.schoenfeld_figure(cox, term, res.cohort.time_unit), "schoenfeld", "survival_sch_chart")


def risk_tab(table: sv.Table, res: sv.AnalysisResult, defaults: tuple[str, ...]) -> None:
    st.caption("PathoSig workflow: features → (penalised) Cox on the discovery cohort → risk score = Σ coef × feature → "
               "cut at the discovery median → the validation cohort gets the frozen coefficients and cut-off.")
    spec = res.spec
    with st.form(f"survival_risk_form_{table.id}"):
        options = [c for c in table.numeric_columns if c not in (spec.time, spec.event)]
        feats = st.multiselect("Features", options, default=[c for c in defaults if c in options], key=f"survival_risk_feats_{table.id}")
        c1, c2 = st.columns(2)
        pen = c1.number_input("Penaliser", 0.0, 10.0, 0.1, 0.05, key=f"survival_risk_pen_{table.id}")
        l1 = c2.slider("L1 ratio (0 = ridge, 1 = lasso)", 0.0, 1.0, 0.0, 0.1, key=f"survival_risk_l1_{table.id}")
        split = st.radio("Validation cohort", ["Split this table 50/50 (seeded, stratified by event)", "Upload a validation table"],
                         key=f"survival_risk_val_{table.id}").startswith("Split")
        val_file = st.file_uploader("Validation table (same columns)", type=["csv", "tsv", "txt", "xlsx"], key="survival_val_upload")
        if st.form_submit_button("Build risk score"):
            try:
                if not split and val_file is None:
                    raise InvalidInputError("No validation table uploaded.", "Upload one, or split this table.")
                validation = None if split else sv.load_table(val_file.getvalue(), val_file.name)
                st.session_state[RISK_KEY] = sv.risk_analysis(table, spec, sv.RiskSpec(tuple(feats), pen, l1, validation))
            except Exception as err:  # noqa: BLE001 - a message; the previous risk score stays
                show_error(err, context="Risk score")
    found = st.session_state.get(RISK_KEY)
    if found is None or found[0] != table.id:
        return
    risk = found[1]
    m = risk.model
    st.metric("Frozen cut-off (discovery median score)", f"{m.cutoff_:.4g}")
    st.dataframe(m.coefficients_frame(), hide_index=True)
    c1, c2 = st.columns(2)
    with c1:
        csv_button("Coefficients (CSV)", m.coefficients_frame().assign(cutoff=m.cutoff_), "risk_score_coefficients.csv")
    with c2:
        st.download_button("Frozen model: coefficients + cut-off (JSON)", m.to_json().encode(), file_name="risk_score_model.json",
                           mime="application/json", key="survival_dl_risk_json")
    st.dataframe(risk.summary_frame(), hide_index=True)
    for outcome in (risk.discovery, risk.validation):
        if outcome is None:
            continue
        st.subheader(f"{outcome.name.capitalize()} cohort ({outcome.cohort.n} patients)")
        if outcome.message:
            st.error(outcome.message)
        figure(sv.km_figure(outcome.km, outcome.logrank, title=f"{outcome.name.capitalize()} cohort: risk groups"), f"risk_km_{outcome.name}",
               f"survival_risk_km_{outcome.name}")
        csv_button(f"{outcome.name.capitalize()} scores (CSV)", outcome.scores_frame(), f"risk_scores_{outcome.name}.csv")
    st.caption("Each cohort's risk group uses the discovery coefficients and cut-off unchanged: validation p-values are not optimistic.")
