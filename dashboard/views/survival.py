"""Cohort survival: Kaplan–Meier strata, tests between groups, Cox models and PathoSig-style risk scores.

Every number comes from :mod:`engine.survival` (checked against R's survival package). Page state lives
in ``st.session_state`` under ``survival_*`` keys; a failed analysis shows its message and leaves the
previous result on the page.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pandas as pd
import streamlit as st

from dashboard.common import disclaimer, guarded, show_error
from engine import survival as sv
from engine.errors import InvalidInputError
from engine.exports import safe_csv

NONE = "(none)"
STRATA = {"group column": "the group column as it is", "median": "median split", "tertiles": "tertiles",
          "quartiles": "quartiles", "manual": "manual cut-offs", "optimal": "optimal cut-point (maximally selected log-rank)"}
DEFAULT_TIMES = {"days": "365, 730", "weeks": "52, 104", "months": "12, 36, 60", "years": "1, 3, 5"}
CHART_CONFIG = {"toImageButtonOptions": {"format": "png", "scale": 3, "filename": "histodash-survival"}, "displaylogo": False}

st.title("Cohort survival")
st.caption("Kaplan–Meier curves, log-rank tests, Cox models and risk scores for a table with one row per patient. "
           "Numbers equal R's survival package (log-log 95 % intervals, Efron ties).")


# ------------------------------------------------------------------------------------------- table
def table_id(name: str, df: pd.DataFrame) -> str:
    return hashlib.sha1(f"{name}|{df.shape}|{list(df.columns)}".encode()).hexdigest()[:8]


source = st.radio("Cohort", ["Demo cohort", "Upload a table"], horizontal=True, key="survival_source")
if source == "Demo cohort":
    demo_key = st.selectbox("Demo cohort", list(sv.DEMO_COHORTS), format_func=lambda k: sv.DEMO_COHORTS[k].title,
                            key="survival_demo")
    demo = sv.DEMO_COHORTS[demo_key]
    st.caption(demo.description)
    table_name, table = f"demo:{demo_key}", sv.load_demo(demo_key)
else:
    demo = None
    upload = st.file_uploader("Cohort table (CSV, TSV or Excel; one row per patient)", type=["csv", "tsv", "txt", "xlsx"],
                              key="survival_upload")
    if upload is not None and st.session_state.get("survival_upload_id") != upload.file_id:
        st.session_state["survival_upload_id"] = upload.file_id
        with guarded(f"Reading {upload.name}"):
            st.session_state["survival_table"] = (upload.name, sv.read_table(upload.getvalue(), name=upload.name))
    if "survival_table" not in st.session_state:
        st.info("Upload a table with a follow-up time column, an event column and, optionally, groups and covariates.")
        disclaimer()
        st.stop()
    table_name, table = st.session_state["survival_table"]
    st.caption(f"Table **{table_name}**: {len(table)} rows, {table.shape[1]} columns.")

with st.expander("Add per-patient features from another table (e.g. slide scores from `python -m engine cohort-scores`)"):
    feat_file = st.file_uploader("Features table", type=["csv", "tsv", "txt", "xlsx"], key="survival_feat_upload")
    if feat_file is not None and st.session_state.get("survival_feat_id") != feat_file.file_id:
        st.session_state["survival_feat_id"] = feat_file.file_id
        with guarded(f"Reading {feat_file.name}"):
            st.session_state["survival_features"] = (feat_file.name, sv.read_table(feat_file.getvalue(), name=feat_file.name))
    if "survival_features" in st.session_state:
        feat_name, feat_table = st.session_state["survival_features"]
        c1, c2, c3, c4 = st.columns(4)
        left_id = c1.selectbox("Patient id (cohort table)", list(table.columns), key="survival_join_left")
        right_id = c2.selectbox(f"Patient id ({feat_name})", list(feat_table.columns), key="survival_join_right")
        id_chars = c3.number_input("Use the first N characters of its ids (0 = all; TCGA: 12)", 0, 200, 0, key="survival_join_chars")
        aggregate = c4.checkbox("Average several rows per patient", key="survival_join_agg")
        if st.button("Join features", key="survival_join_button"):
            with guarded("Joining features"):
                joined = sv.join_features(table, feat_table, left_id, right_id, id_chars=int(id_chars) or None, aggregate=aggregate)
                st.session_state["survival_join"] = {"base": table_name, "name": f"{table_name} + {feat_name}", "table": joined}
    joined = st.session_state.get("survival_join")
    if joined and joined["base"] == table_name and st.button("Remove the joined features", key="survival_join_remove"):
        st.session_state.pop("survival_join")
joined = st.session_state.get("survival_join")
if joined and joined["base"] == table_name:
    table_name, table = joined["name"], joined["table"]
    st.caption(f"Using **{table_name}**: {len(table)} patients with features.")

tid = table_id(table_name, table)
columns = list(table.columns)
numeric = [c for c in columns if pd.api.types.is_numeric_dtype(table[c])]


def idx(options: list, value, fallback: int = 0) -> int:
    return options.index(value) if value in options else fallback


# ------------------------------------------------------------------------------------------- mapping form
with st.form(f"survival_form_{tid}"):
    c1, c2, c3, c4 = st.columns(4)
    time_col = c1.selectbox("Time", columns, index=idx(columns, demo.time if demo else "time"), key=f"survival_time_{tid}")
    event_col = c2.selectbox("Event", columns, index=idx(columns, demo.event if demo else "status", min(1, len(columns) - 1)),
                             key=f"survival_event_{tid}",
                             help="0/1, 1/2 (R: 1 = censored, 2 = event), true/false, yes/no, dead/alive, event/censored.")
    groups = [NONE, *columns]
    group_col = c3.selectbox("Group", groups, index=idx(groups, demo.group if demo else NONE), key=f"survival_group_{tid}")
    unit = c4.selectbox("Time unit of the column", list(sv.TIME_UNITS), index=0, key=f"survival_unit_{tid}")
    c1, c2, c3, c4 = st.columns(4)
    strata = c1.selectbox("Strata", list(STRATA), format_func=STRATA.get, key=f"survival_strata_{tid}")
    split_col = c2.selectbox("Continuous column to split", numeric or [NONE], key=f"survival_split_{tid}",
                             index=idx(numeric, "age"))
    cuts_text = c3.text_input("Manual cut-offs", "", key=f"survival_cuts_{tid}", placeholder="e.g. 50, 65")
    show_choice = c4.selectbox("Show time in", ["same unit", *sv.TIME_UNITS], index=0, key=f"survival_show_{tid}")
    show_unit = unit if show_choice == "same unit" else show_choice
    c1, c2, c3, c4 = st.columns(4)
    minprop = c1.slider("Optimal cut: min. group share", 0.05, 0.4, 0.1, 0.05, key=f"survival_minprop_{tid}")
    n_perm = c2.number_input("Permutations (0 = none)", 0, 5000, 1000, 100, key=f"survival_perm_{tid}",
                             help="Permutation p-value of the optimal cut (seed fixed: 20240601).")
    weighting = c3.selectbox("Test", list(sv.WEIGHTINGS), format_func=sv.WEIGHTINGS.get, key=f"survival_test_{tid}")
    fh = c4.text_input("Fleming–Harrington p, q", "1, 0", key=f"survival_fh_{tid}")
    at_times = st.text_input("Survival at times (in the shown unit)", "", key=f"survival_at_{tid}",
                             placeholder="default: " + ", ".join(f"{u}: {t}" for u, t in DEFAULT_TIMES.items()))
    submitted = st.form_submit_button("Analyse", type="primary")


def analyse() -> dict:
    covs = [split_col] if strata not in ("group column",) and split_col != NONE else []
    cohort = sv.prepare_cohort(table, time_col, event_col, None if group_col == NONE or strata != "group column" else group_col,
                               covs, time_unit=unit).with_time_unit(show_unit)
    scan = cuts = None
    if strata != "group column":
        if split_col == NONE:
            raise InvalidInputError("The table has no numeric column to split.", "Use the group column instead.")
        cohort, cuts, scan = sv.stratify(cohort, split_col, strata, cuts=sv.parse_cuts(cuts_text) if strata == "manual" else None,
                                         **({"minprop": minprop, "n_permutations": int(n_perm)} if strata == "optimal" else {}))
    weights = sv.parse_cuts(fh, what="Fleming–Harrington weight")
    if len(weights) > 2:
        raise InvalidInputError("Fleming–Harrington takes two weights, p and q.", "Enter e.g. 1, 0 (R's survdiff rho = 1).")
    fh_p, fh_q = weights + [1.0, 0.0][len(weights):]
    times = sv.parse_cuts(at_times, what="Time") or sv.parse_cuts(DEFAULT_TIMES[show_unit])
    out = {"cohort": cohort, "km": sv.kaplan_meier(cohort), "scan": scan, "cuts": cuts, "times": times, "messages": [],
           "test": None, "pairwise": None, "hr": None, "settings": {"time": time_col, "event": event_col, "unit": unit}}
    if cohort.group_col is None:  # one curve: nothing to compare
        return out
    for key, fn in [("test", lambda: sv.logrank_test(cohort, weighting, fh_p, fh_q)),
                    ("pairwise", lambda: sv.pairwise_logrank(cohort, weighting, fh_p, fh_q) if len(cohort.group_order) > 2 else None),
                    ("hr", lambda: sv.group_hazard_ratios(cohort))]:
        try:
            out[key] = fn()
        except InvalidInputError as err:  # shown beside the curves, which are still valid
            if str(err) not in [str(m) for m in out["messages"]]:
                out["messages"].append(err)
    return out


previous = st.session_state.get("survival_result")
if submitted or (demo is not None and (previous is None or previous["tid"] != tid)):
    try:
        result = analyse()
        result["tid"] = tid
        if previous is None or previous["tid"] != tid:  # another table: its Cox and risk-score results no longer apply
            for key in ("survival_cox", "survival_cox_uni", "survival_risk"):
                st.session_state.pop(key, None)
        st.session_state["survival_result"] = result
    except Exception as err:  # noqa: BLE001 - a message; the previous result stays below
        show_error(err, context="Analysis")

res = st.session_state.get("survival_result")
if not res or res["tid"] != tid:
    st.info("Map the columns above and press **Analyse**.")
    disclaimer()
    st.stop()

cohort: sv.Cohort = res["cohort"]
km: sv.KMResult = res["km"]
st.info(f"{cohort.summary()}.", icon=":material/info:")
for msg in res["messages"]:
    show_error(msg, context="Tests between groups")


def csv_button(label: str, frame: pd.DataFrame, name: str) -> None:
    st.download_button(label, safe_csv(frame), file_name=name, mime="text/csv", key=f"survival_dl_{name}")


def html_button(fig, name: str) -> None:
    """HTML download always; PNG and SVG files too where kaleido (static export) is installed."""
    st.download_button("Figure (HTML, offline; SVG from its camera button)", sv.figure_html(fig).encode(), file_name=f"{name}.html",
                       mime="text/html", key=f"survival_dl_{name}.html")
    if not sv.image_export_available():
        return
    key = f"survival_img_{name}"
    if st.button("Prepare PNG and SVG files", key=f"survival_prep_{name}"):
        with guarded("Figure export"):
            st.session_state[key] = {fmt: sv.figure_image(fig, fmt) for fmt in ("png", "svg")}
    images = st.session_state.get(key)
    if images:
        for fmt, mime in (("png", "image/png"), ("svg", "image/svg+xml")):
            st.download_button(f"Figure ({fmt.upper()})", images[fmt], file_name=f"{name}.{fmt}", mime=mime, key=f"survival_dl_{name}.{fmt}")


tab_km, tab_tests, tab_cut, tab_cox, tab_risk = st.tabs(["Kaplan–Meier", "Tests", "Cut-point", "Cox model", "Risk score"])

with tab_km:
    with guarded("Kaplan–Meier figure"):
        fig = sv.km_figure(km, res["test"], title="")
        st.plotly_chart(fig, config=CHART_CONFIG, key="survival_km_chart")
        st.caption("Shaded: 95 % log-log confidence bands; +: censored; dashed: median survival. "
                   "PNG: the camera button on the figure.")
        html_button(fig, "kaplan_meier")
    st.subheader("Median survival")
    st.dataframe(km.medians_frame(), hide_index=True)
    st.caption("Median and 95 % CI as R's print.survfit; empty where the curve (or its limit) never reaches 0.5 (not reached).")
    st.subheader("Survival at chosen times")
    at = km.survival_at(res["times"]) if res["times"] else pd.DataFrame()
    st.dataframe(at, hide_index=True)
    c1, c2, c3 = st.columns(3)
    with c1:
        csv_button("Medians (CSV)", km.medians_frame(), "km_medians.csv")
    with c2:
        csv_button("Survival at times (CSV)", at, "km_survival_at_times.csv")
    with c3:
        csv_button("All curve steps (CSV)", km.to_frame(), "km_curves.csv")

with tab_tests:
    if cohort.group_col is None:
        st.caption("Choose a group column, or strata from a continuous column, to compare groups.")
    if res["test"] is not None:
        t = res["test"]
        st.metric(t.test_name, sv.format_p(t.p), help=f"chi² = {t.chi2:.3f} on {t.df} df")
        st.dataframe(t.to_frame(), hide_index=True)
        csv_button("Test (CSV)", t.to_frame(), "logrank.csv")
    if res["pairwise"] is not None:
        st.subheader(f"Pairwise {res['pairwise'].test_name} tests (Holm-adjusted)")
        st.dataframe(res["pairwise"].to_frame(), hide_index=True)
        csv_button("Pairwise tests (CSV)", res["pairwise"].to_frame(), "pairwise_logrank.csv")
    if res["hr"] is not None:
        st.subheader(f"Hazard ratios against '{res['hr'].reference_group}' (Cox, Efron ties)")
        st.dataframe(res["hr"].to_frame(), hide_index=True)
        fig = sv.forest_figure(res["hr"])
        st.plotly_chart(fig, config=CHART_CONFIG, key="survival_hr_forest")
        html_button(fig, "hazard_ratios_forest")
        csv_button("Hazard ratios (CSV)", res["hr"].to_frame(), "hazard_ratios.csv")

with tab_cut:
    scan = res["scan"]
    st.warning("An optimal cut-point is chosen to make the groups differ as much as possible, so its unadjusted p-value "
               "and hazard ratio are **biased** (too optimistic). Report the corrected p-value and check the cut on an "
               "independent cohort.", icon=":material/warning:")
    if scan is None:
        st.caption("Choose *optimal cut-point* as the strata (with a continuous column) and press Analyse to scan every cut-off.")
    else:
        c1, c2, c3 = st.columns(3)
        c1.metric("Optimal cut (low ≤ cut)", f"{scan.cutpoint:g}")
        c2.metric("Corrected p (Lausen–Schumacher 1992)", f"{scan.p_lausen92:.3g}")
        c3.metric("Permutation p", "—" if scan.p_permutation is None else f"{scan.p_permutation:.3g}",
                  help=f"{scan.n_permutations} permutations, seed {scan.seed}")
        fig = sv.cutpoint_figure(scan)
        st.plotly_chart(fig, config=CHART_CONFIG, key="survival_cut_chart")
        st.caption(f"Maximally selected log-rank statistic |Z| = {scan.statistic:.3f} (as R maxstat, smethod = \"LogRank\"), "
                   f"cut-offs leaving at least {scan.minprop:.0%} of the {scan.n} patients per group.")
        csv_button("p-value versus cut-off (CSV)", scan.to_frame(), "cutpoint_scan.csv")
        html_button(fig, "cutpoint")

with tab_cox:
    with st.form(f"survival_cox_form_{tid}"):
        options = [c for c in numeric if c not in (time_col, event_col)]
        covs = st.multiselect("Covariates (numeric)", options, default=[c for c in (demo.covariates if demo else ()) if c in options],
                              key=f"survival_cox_covs_{tid}")
        c1, c2 = st.columns(2)
        with_groups = c1.checkbox("Add the current strata as a factor", value=False, key=f"survival_cox_groups_{tid}")
        penalizer = c2.number_input("Penaliser (0 = none; ridge on standardised covariates)", 0.0, 10.0, 0.0, 0.05,
                                    key=f"survival_cox_pen_{tid}")
        fit_now = st.form_submit_button("Fit Cox model")
    if fit_now:
        try:
            if with_groups and res["cuts"] is not None:  # strata cut from a continuous column: the same cut-offs
                cc = sv.prepare_cohort(table, time_col, event_col, None, list(dict.fromkeys([*covs, split_col])), time_unit=unit)
                cc, _, _ = sv.stratify(cc, split_col, "manual", res["cuts"])
                cc = dataclasses.replace(cc, group_col=cohort.group_col)
            else:
                grp = group_col if with_groups and group_col != NONE else None
                if with_groups and grp is None:
                    raise InvalidInputError("No group column chosen, so there are no strata to add.", "Pick a group column.")
                cc = sv.prepare_cohort(table, time_col, event_col, grp, covs, time_unit=unit)
            cc = cc.with_time_unit(show_unit)
            model = sv.fit_cox(cc, covs, include_group=with_groups, penalizer=penalizer)
            st.session_state["survival_cox"] = model
            st.session_state["survival_cox_uni"] = sv.univariable_cox(cc, covs) if len(covs) > 1 else None
        except Exception as err:  # noqa: BLE001 - a message; the previous model stays
            show_error(err, context="Cox model")
    cox = st.session_state.get("survival_cox")
    if cox is not None:
        for w in cox.warnings:
            st.warning(w)
        c1, c2, c3 = st.columns(3)
        c1.metric("Concordance (Harrell's C)", f"{cox.concordance:.3f}")
        c2.metric("Patients / events", f"{cox.n} / {cox.n_events}")
        c3.metric("Penaliser", f"{cox.penalizer:g}")
        st.dataframe(cox.to_frame(), hide_index=True)
        uni = st.session_state.get("survival_cox_uni")
        if uni is not None:
            with st.expander("Univariable models (each covariate alone, same patients)"):
                st.dataframe(uni, hide_index=True)
                csv_button("Univariable models (CSV)", uni, "cox_univariable.csv")
        fig = sv.forest_figure(cox)
        st.plotly_chart(fig, config=CHART_CONFIG, key="survival_cox_forest")
        html_button(fig, "cox_forest")
        csv_button("Cox model (CSV)", cox.to_frame(), "cox_model.csv")
        if cox.ph_test is not None:
            st.subheader("Proportional hazards (Schoenfeld residuals)")
            st.caption("Score test per term and globally, as R's cox.zph(fit, transform = \"km\"); small p suggests the "
                       "hazard ratio changes over time." + (" With a penaliser the test ignores the penalty." if cox.penalizer else ""))
            st.dataframe(cox.ph_test, hide_index=True)
            csv_button("PH test (CSV)", cox.ph_test, "cox_zph.csv")
            term = st.selectbox("Residual plot for", list(cox.summary.term), key="survival_cox_sch_term")
            fig = sv.schoenfeld_figure(cox, term, cohort.time_unit)
            st.plotly_chart(fig, config=CHART_CONFIG, key="survival_sch_chart")
            html_button(fig, "schoenfeld")

with tab_risk:
    st.caption("PathoSig workflow: features → (penalised) Cox on the discovery cohort → risk score = Σ coef × feature → "
               "cut at the discovery median → the validation cohort gets the frozen coefficients and cut-off.")
    with st.form(f"survival_risk_form_{tid}"):
        options = [c for c in numeric if c not in (time_col, event_col)]
        feats = st.multiselect("Features", options, default=[c for c in (demo.features if demo else ()) if c in options],
                               key=f"survival_risk_feats_{tid}")
        c1, c2 = st.columns(2)
        r_pen = c1.number_input("Penaliser", 0.0, 10.0, 0.1, 0.05, key=f"survival_risk_pen_{tid}")
        r_l1 = c2.slider("L1 ratio (0 = ridge, 1 = lasso)", 0.0, 1.0, 0.0, 0.1, key=f"survival_risk_l1_{tid}")
        val_source = st.radio("Validation cohort", ["Split this table 50/50 (seeded, stratified by event)", "Upload a validation table"],
                              key=f"survival_risk_val_{tid}")
        val_file = st.file_uploader("Validation table (same columns)", type=["csv", "tsv", "txt", "xlsx"], key="survival_val_upload")
        build = st.form_submit_button("Build risk score")
    if build:
        try:
            if val_source.startswith("Split"):
                disc_df, val_df = sv.split_discovery_validation(table, 0.5, stratify=event_col)
            else:
                if val_file is None:
                    raise InvalidInputError("No validation table uploaded.", "Upload one, or split this table.")
                disc_df, val_df = table, sv.read_table(val_file.getvalue(), name=val_file.name)
            disc = sv.prepare_cohort(disc_df, time_col, event_col, covariates=feats, time_unit=unit).with_time_unit(show_unit)
            val = sv.prepare_cohort(val_df, time_col, event_col, covariates=feats, time_unit=unit).with_time_unit(show_unit)
            st.session_state["survival_risk"] = sv.risk_score_workflow(disc, val, feats, penalizer=r_pen, l1_ratio=r_l1)
        except Exception as err:  # noqa: BLE001 - a message; the previous risk score stays
            show_error(err, context="Risk score")
    risk = st.session_state.get("survival_risk")
    if risk is not None:
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
            fig = sv.km_figure(outcome.km, outcome.logrank, title=f"{outcome.name.capitalize()} cohort: risk groups")
            st.plotly_chart(fig, config=CHART_CONFIG, key=f"survival_risk_km_{outcome.name}")
            html_button(fig, f"risk_km_{outcome.name}")
            csv_button(f"{outcome.name.capitalize()} scores (CSV)", outcome.scores_frame(), f"risk_scores_{outcome.name}.csv")
        st.caption("Each cohort's risk group uses the discovery coefficients and cut-off unchanged: validation p-values are not optimistic.")

disclaimer()
