"""Cohort survival analysis: Kaplan–Meier, log-rank tests, Cox models, cut-points and risk scores.

Numbers agree with R's ``survival`` package (see ``tests/engine/survival/test_survival.py`` and ``tests/r_reference``)::

    from engine import survival as sv
    cohort = sv.prepare_cohort(sv.load_demo("lung"), time="time", event="status", group="sex")
    result = sv.analyse(sv.demo_table("lung"), sv.AnalysisSpec("time", "status", "sex"))  # what the page calls
    km = sv.kaplan_meier(cohort)              # per-group curves, log-log CIs, R medians
    test = sv.logrank_test(cohort)             # == survdiff(Surv(time, status) ~ sex, lung)
    hr = sv.group_hazard_ratios(cohort)        # == coxph(..., ties = "efron")
    fig = sv.km_figure(km, test)

No Streamlit here; plotly only builds figures.
"""

from engine.survival.compare import WEIGHTINGS, LogRankResult, PairwiseResult, describe_test, holm, logrank_test, pairwise_logrank
from engine.survival.cox import CoxResult, cox_zph, fit_cox, group_hazard_ratios, univariable_cox
from engine.survival.cutpoint import (
    SPLIT_METHODS,
    CutpointResult,
    cut_labels,
    logrank_scores,
    optimal_cutpoint,
    parse_cuts,
    pvalue_lausen92,
    split_points,
    stratify,
)
from engine.survival.data import (
    DEFAULT_DEMO,
    DEMO_COHORTS,
    TIME_UNITS,
    Cohort,
    DemoCohort,
    EventCoding,
    coerce_events,
    convert_time,
    join_features,
    load_demo,
    prepare_cohort,
    read_table,
    require_groups,
    split_discovery_validation,
)
from engine.survival.km import KMCurve, KMResult, default_risk_times, kaplan_meier, r_median
from engine.survival.riskscore import HIGH, LOW, RiskScoreModel, RiskScoreResult, risk_score_workflow
from engine.survival.service import (
    BACKGROUND_WORK,
    DEFAULT_TIMES,
    STRATA,
    AnalysisResult,
    AnalysisSpec,
    BackgroundAnalysis,
    CoxAnalysis,
    CoxSpec,
    RiskSpec,
    Table,
    analyse,
    cox_analysis,
    demo_table,
    join_tables,
    load_table,
    risk_analysis,
)

__all__ = [
    "WEIGHTINGS",
    "LogRankResult",
    "PairwiseResult",
    "describe_test",
    "holm",
    "logrank_test",
    "pairwise_logrank",
    "CoxResult",
    "cox_zph",
    "fit_cox",
    "group_hazard_ratios",
    "univariable_cox",
    "SPLIT_METHODS",
    "CutpointResult",
    "cut_labels",
    "logrank_scores",
    "optimal_cutpoint",
    "parse_cuts",
    "pvalue_lausen92",
    "split_points",
    "stratify",
    "DEFAULT_DEMO",
    "DEMO_COHORTS",
    "TIME_UNITS",
    "Cohort",
    "DemoCohort",
    "EventCoding",
    "coerce_events",
    "convert_time",
    "join_features",
    "load_demo",
    "prepare_cohort",
    "read_table",
    "require_groups",
    "split_discovery_validation",
    "KMCurve",
    "KMResult",
    "default_risk_times",
    "kaplan_meier",
    "r_median",
    "HIGH",
    "LOW",
    "RiskScoreModel",
    "RiskScoreResult",
    "risk_score_workflow",
    "BACKGROUND_WORK",
    "DEFAULT_TIMES",
    "STRATA",
    "AnalysisResult",
    "AnalysisSpec",
    "BackgroundAnalysis",
    "CoxAnalysis",
    "CoxSpec",
    "RiskSpec",
    "Table",
    "analyse",
    "cox_analysis",
    "demo_table",
    "join_tables",
    "load_table",
    "risk_analysis",
    "km_figure",
    "forest_figure",
    "cutpoint_figure",
    "schoenfeld_figure",
    "figure_html",
    "format_p",
    "figure_image",
    "image_export_available",
]


def __getattr__(name):  # plotly figures on demand, so the CLI does not import plotly
    if name in {"km_figure", "forest_figure", "cutpoint_figure", "schoenfeld_figure", "figure_html", "format_p", "figure_image",
                "image_export_available"}:
        from engine.survival import plots

        return getattr(plots, name)
    raise AttributeError(name)
