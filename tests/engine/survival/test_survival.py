"""engine.survival: numbers against R's survival package, validation messages, CLI, cut-points, risk scores.

Reference values live in tests/r_reference/*.csv, written by tests/r_reference/make_reference.R (R 4.2.2,
survival 3.5-3, maxstat 0.7-25; the R call is quoted above each block of that script). The data both sides
use is R's own (lung.csv, veteran.csv exported from R). Tolerance: relative 1e-6 (absolute 1e-12 near 0).
When ``Rscript`` with the survival package is on PATH, ``test_r_live`` re-runs the script and checks the
committed values against a fresh R run.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from engine import survival as sv
from engine.cli import main as cli_main
from engine.errors import CorruptFileError, InvalidInputError, UnsupportedFormatError
from tests.conftest import ROOT

REF = ROOT / "tests" / "r_reference"
RTOL, ATOL = 1e-6, 1e-12
MAX_REL: dict[str, float] = {}


def close(quantity: str, ours, ref, rtol: float = RTOL) -> None:
    """Assert ours == ref elementwise (NaN and inf in the same places) and record the largest relative difference."""
    a = np.asarray(ours, float).ravel()
    b = np.asarray(ref, float).ravel()
    assert a.shape == b.shape, quantity
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{quantity}: NA positions differ")
    np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=f"{quantity}: Inf positions differ")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.any():
        rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), ATOL / rtol)
        MAX_REL[quantity] = max(MAX_REL.get(quantity, 0.0), float(rel.max()))
        np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=ATOL, err_msg=quantity)


@pytest.fixture(scope="module", autouse=True)
def _report_differences():
    yield
    if MAX_REL:  # shown with `pytest -s`: the largest relative difference to R per quantity
        print("\nlargest relative difference to R:")
        for k, v in sorted(MAX_REL.items()):
            print(f"  {k:<28} {v:.2e}")


def read_ref(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / name, na_values=["NA"], keep_default_na=False)


@pytest.fixture(scope="module")
def lung() -> pd.DataFrame:
    return read_ref("lung.csv")


@pytest.fixture(scope="module")
def veteran() -> pd.DataFrame:
    return read_ref("veteran.csv")


@pytest.fixture(scope="module")
def datasets(lung, veteran):
    return {"lung": lung, "veteran": veteran, "tiny": read_ref("tiny.csv")}


def cohort_for(datasets, dataset: str, group: str | None, covariates=()):
    df = datasets[dataset]
    if group == "":
        group = None
    return sv.prepare_cohort(df, "time", "status", group, covariates)


# --------------------------------------------------------------------------------------------------
# Data identity and the demo
# --------------------------------------------------------------------------------------------------
def test_lifelines_lung_is_r_lung(lung):
    ours = sv.load_demo("lung")
    assert list(ours.columns) == list(lung.columns)
    # lifelines recodes R's status 1/2 (censored/dead) as 0/1; everything else is identical
    pd.testing.assert_frame_equal(ours.astype(float), lung.assign(status=lung.status - 1).astype(float), check_exact=True)


def test_demo_cohort_mapping_is_valid():
    for demo in sv.DEMO_COHORTS.values():
        c = sv.prepare_cohort(demo.load(), demo.time, demo.event, demo.group, demo.covariates + demo.features)
        assert c.n > 100 and c.n_events > 50 and len(c.group_order) >= 2


# --------------------------------------------------------------------------------------------------
# Kaplan–Meier vs R survfit(conf.type = "log-log")
# --------------------------------------------------------------------------------------------------
KM_CASES = [("lung", "sex"), ("lung", ""), ("veteran", "celltype"), ("lung", "ph.ecog"), ("tiny", "case")]


@pytest.mark.parametrize("dataset,group", KM_CASES)
def test_km_matches_r(datasets, dataset, group):
    r = read_ref("km.csv")
    r = r[(r.dataset == dataset) & (r.group_col.fillna("") == group)]
    if dataset == "tiny":
        r = r[r.dataset == "tiny"]
    km = sv.kaplan_meier(cohort_for(datasets, dataset, group if dataset != "tiny" else "case"))
    ours = km.to_frame()
    if group == "":
        ours["group"] = "all"
    r = r.assign(stratum=r.stratum.astype(str).str.replace(r"\.0$", "", regex=True))
    m = ours.merge(r, left_on=["group", "time"], right_on=["stratum", "time"], how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), "different step times from R"
    for col in ("n_risk", "n_event", "n_censor"):
        np.testing.assert_array_equal(m[f"{col}_x"], m[f"{col}_y"])
    close("km surv", m.surv_x, m.surv_y)
    close("km std.err", m.std_err_x, m.std_err_y)
    close("km lower (log-log)", m.lower_x, m.lower_y)
    close("km upper (log-log)", m.upper_x, m.upper_y)


def test_lifelines_own_ci_is_r_loglog(lung):
    """lifelines' default KM interval (exponential Greenwood) is R's conf.type = "log-log"."""
    from lifelines import KaplanMeierFitter

    r = read_ref("km.csv")
    r = r[(r.dataset == "lung") & (r.group_col == "sex") & (r.stratum.astype(str) == "1")]
    d = lung[lung.sex == 1]
    kmf = KaplanMeierFitter().fit(d.time, d.status - 1)
    ci = kmf.confidence_interval_.loc[r.time.to_numpy()]
    ok = r.lower.notna().to_numpy()
    close("lifelines KM CI", ci.iloc[ok, 0], r.lower[ok])
    close("lifelines KM CI", ci.iloc[ok, 1], r.upper[ok])


@pytest.mark.parametrize("dataset,group", KM_CASES)
def test_medians_match_r_print_survfit(datasets, dataset, group):
    r = read_ref("km_median.csv")
    r = r[(r.dataset == dataset) & (r.group_col.fillna("") == group)]
    km = sv.kaplan_meier(cohort_for(datasets, dataset, group))
    names = [str(s).removesuffix(".0") for s in r.stratum] if group else ["all"]
    for name, (_, row) in zip(names, r.iterrows(), strict=True):
        c = km[name]
        assert (c.n, c.events) == (row.n, row.events)
        close("median", c.median, row["median"])
        close("median CI", c.median_ci, [row.lcl, row.ucl])


def test_survival_at_times_matches_r(datasets):
    r = read_ref("km_at_times.csv")
    for (dataset, group), rr in r.groupby(["dataset", "group_col"]):
        km = sv.kaplan_meier(cohort_for(datasets, dataset, group))
        ours = km.survival_at(sorted(rr.time.unique()))
        rr = rr.assign(stratum=rr.stratum.astype(str))
        m = ours.merge(rr, left_on=["group", "time"], right_on=["stratum", "time"])
        assert len(m) == len(rr)
        np.testing.assert_array_equal(m.n_risk_x, m.n_risk_y)
        close("survival at times", m.surv_x, m.surv_y)
        close("survival at times CI", m[["lower_x", "upper_x"]], m[["lower_y", "upper_y"]])


# --------------------------------------------------------------------------------------------------
# Tests between groups vs R survdiff / p.adjust
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", read_ref("logrank.csv").to_dict("records"), ids=lambda r: f"{r['dataset']}-{r['group_col']}-rho{r['rho']}")
def test_logrank_matches_r_survdiff(datasets, row):
    c = cohort_for(datasets, row["dataset"], row["group_col"])
    res = sv.logrank_test(c) if row["rho"] == 0 else sv.logrank_test(c, "fleming-harrington", p=row["rho"], q=0)
    assert res.df == row["df"]
    close("log-rank chi2", res.chi2, row["chisq"])
    close("log-rank p", res.p, row["p"])


def test_pairwise_holm_matches_r(veteran):
    r = read_ref("pairwise_veteran.csv")
    res = sv.pairwise_logrank(sv.prepare_cohort(veteran, "time", "status", "celltype")).to_frame()
    assert list(zip(res.a, res.b, strict=True)) == list(zip(r.a, r.b, strict=True))
    close("pairwise chi2", res.chi2, r.chisq)
    close("pairwise p", res.p, r.p)
    close("pairwise p (Holm)", res.p_holm, r.p_holm)


def slow_weighted_logrank(time, event, group, weight_fn):
    """Obvious two-group weighted log-rank (O - E)^2 / V, for checking lifelines' weightings."""
    time, event, group = map(np.asarray, (time, event, group))
    g1 = group == np.unique(group)[0]
    o_e = v = 0.0
    for t in np.unique(time[event == 1]):
        at = time >= t
        n, n1 = at.sum(), (at & g1).sum()
        d, d1 = ((time == t) & (event == 1)).sum(), ((time == t) & (event == 1) & g1).sum()
        w = weight_fn(n)
        o_e += w * (d1 - d * n1 / n)
        if n > 1:
            v += w * w * d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return o_e ** 2 / v


@pytest.mark.parametrize("weighting,fn", [("wilcoxon", lambda n: n), ("tarone-ware", np.sqrt)])
def test_weighted_logrank_against_slow_reference(lung, weighting, fn):
    c = sv.prepare_cohort(lung, "time", "status", "sex")
    res = sv.logrank_test(c, weighting)
    close(f"{weighting} chi2 (vs slow)", res.chi2, slow_weighted_logrank(c.data.time, c.data.event, c.data.group, fn), rtol=1e-9)
    assert res.test_name == sv.describe_test(weighting)


def test_holm_matches_p_adjust_example():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") -> 0.030 0.060 0.060 0.020
    np.testing.assert_allclose(sv.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


# --------------------------------------------------------------------------------------------------
# Cox vs R coxph(ties = "efron"), concordance, cox.zph
# --------------------------------------------------------------------------------------------------
COX_MODELS = {
    "lung_age_sex_ecog": ("lung", None, ["age", "sex", "ph.ecog"]),
    "veteran_celltype": ("veteran", "celltype", []),
    "veteran_karno_age_trt_prior": ("veteran", None, ["karno", "age", "trt", "prior"]),
    "lung_sex": ("lung", None, ["sex"]),
}


@pytest.mark.parametrize("model", list(COX_MODELS))
def test_cox_matches_r_coxph(datasets, model):
    dataset, group, covs = COX_MODELS[model]
    c = sv.prepare_cohort(datasets[dataset], "time", "status", group, covs)
    res = sv.fit_cox(c, covs, include_group=group is not None)
    r = read_ref("cox.csv")
    r = r[r.model == model]
    fit = read_ref("cox_fit.csv").set_index("model").loc[model]
    assert res.n == fit.n and res.n_events == fit.nevent
    s = res.summary
    close("cox coef", s.coef, r.coef)
    close("cox se", s.se, r.se)
    close("cox z", s.z, r.z)
    close("cox p", s.p, r.p)
    close("cox HR and CI", s[["hr", "hr_lower", "hr_upper"]], r[["hr", "hr_lower", "hr_upper"]])
    close("cox loglik", res.log_likelihood, fit.loglik)
    close("concordance", res.concordance, fit.concordance)
    x = sv.cox.design_matrix(c, covs, group is not None).to_numpy()
    _, conc, disc, tied = sv.cox.concordance(c.data.time, c.data.event, x @ s.coef.to_numpy())
    assert (conc, disc, tied) == (fit.concordant, fit.discordant, fit.tied_x)
    if model in set(read_ref("cox_zph.csv").model):
        z = read_ref("cox_zph.csv")
        z = z[z.model == model]
        assert list(res.ph_test.term) == list(z.term)
        close("cox.zph chisq", res.ph_test.chi2, z.chisq)
        close("cox.zph p", res.ph_test.p, z.p)


def test_univariable_cox_matches_r(lung):
    uni = sv.univariable_cox(sv.prepare_cohort(lung, "time", "status", None, ["sex"]), ["sex"])
    r = read_ref("cox.csv").query("model == 'lung_sex'")
    close("cox coef", uni.coef, r.coef)
    close("cox se", uni.se, r.se)
    close("concordance", uni.concordance, read_ref("cox_fit.csv").set_index("model").loc["lung_sex", "concordance"])


def test_group_hazard_ratios_reference_is_first_group(veteran):
    hr = sv.group_hazard_ratios(sv.prepare_cohort(veteran, "time", "status", "celltype"))
    assert hr.reference_group == "adeno"
    assert list(hr.summary.term) == ["celltype=large", "celltype=smallcell", "celltype=squamous"]


def test_penalised_cox_shrinks_towards_zero(lung):
    c = sv.prepare_cohort(lung, "time", "status", None, ["age", "sex", "ph.ecog"])
    plain = sv.fit_cox(c, ["age", "sex", "ph.ecog"], ph_test=False).coefficients
    pen = sv.fit_cox(c, ["age", "sex", "ph.ecog"], penalizer=0.5, ph_test=False).coefficients
    assert (pen.abs() < plain.abs()).all()


# --------------------------------------------------------------------------------------------------
# Optimal cut-point vs R maxstat
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", read_ref("maxstat.csv").to_dict("records"), ids=lambda r: r["variable"])
def test_optimal_cutpoint_matches_r_maxstat(lung, row):
    d = lung[lung[row["variable"]].notna()]
    res = sv.optimal_cutpoint(d.time, d.status - 1, d[row["variable"]], variable=row["variable"], minprop=row["minprop"])
    assert res.cutpoint == row["cutpoint"]
    close("maxstat statistic", res.statistic, row["statistic"])
    close("maxstat p (Lau92)", res.p_lausen92, row["p_lau92"])
    curve = read_ref("maxstat_curve.csv")
    curve = curve[curve.variable == row["variable"]]
    np.testing.assert_array_equal(res.curve.cut, curve.cut)
    close("maxstat curve", res.curve.statistic, curve.stat)


def test_permutation_pvalue_is_reproducible(lung):
    d = lung[lung["ph.karno"].notna()]
    a = sv.optimal_cutpoint(d.time, d.status - 1, d["ph.karno"], n_permutations=200, seed=7)
    b = sv.optimal_cutpoint(d.time, d.status - 1, d["ph.karno"], n_permutations=200, seed=7)
    assert a.p_permutation == b.p_permutation
    assert 1 / 201 <= a.p_permutation <= 1
    # the corrected p-value is far larger than the smallest unadjusted one: the optimal cut is biased
    assert a.p_lausen92 > a.curve.p_unadjusted.min()


def test_stratify_methods(lung):
    c = sv.prepare_cohort(lung, "time", "status", None, ["age"])
    med, pts, _ = sv.stratify(c, "age", "median")
    assert pts == [float(np.median(c.data.age))] and med.group_order == ("low (≤ 63)", "high (> 63)")
    ter, pts, _ = sv.stratify(c, "age", "tertiles")
    np.testing.assert_allclose(pts, np.quantile(c.data.age, [1 / 3, 2 / 3]))
    assert len(ter.group_order) == 3
    man, pts, _ = sv.stratify(c, "age", "manual", sv.parse_cuts("70; 50"))
    assert pts == [50.0, 70.0] and man.group_order == ("≤ 50", "50–70", "> 70")
    counts = man.data.group.value_counts()
    assert counts["≤ 50"] == (c.data.age <= 50).sum() and counts["> 70"] == (c.data.age > 70).sum()
    opt, pts, scan = sv.stratify(c, "age", "optimal", minprop=0.1)
    assert pts == [70.0] and scan is not None
    with pytest.raises(InvalidInputError, match="not a number"):
        sv.parse_cuts("50, abc")
    with pytest.raises(InvalidInputError, match="not prepared as a numeric covariate"):
        sv.stratify(c, "wt.loss")


# --------------------------------------------------------------------------------------------------
# Event coercion and validation messages
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values,expected,desc", [
    ([0, 1, 1, 0], [0, 1, 1, 0], "0 → censored, 1 → event"),
    ([1, 2, 2, 1], [0, 1, 1, 0], "1 → censored, 2 → event (R survival"),
    ([True, False, True], [1, 0, 1], "True → event"),
    (["dead", "Alive", "DEAD"], [1, 0, 1], "dead, DEAD → event; Alive → censored"),
    (["event", "censored"], [1, 0], "event → event; censored → censored"),
    (["yes", "no", None], [1, 0, np.nan], "yes → event; no → censored"),
    (["1", "0"], [1, 0], "0 → censored, 1 → event"),
])
def test_event_coercion(values, expected, desc):
    out, coding = sv.coerce_events(pd.Series(values, dtype=object if None in values else None))
    np.testing.assert_array_equal(out, np.asarray(expected, float))
    assert coding.description.startswith(desc)


@pytest.mark.parametrize("values,match", [([0, 1, 3], "cannot be read as event/censored: 3"),
                                          (["dead", "maybe"], "cannot be read as event/censored: maybe")])
def test_bad_events(values, match):
    with pytest.raises(InvalidInputError, match=match):
        sv.coerce_events(pd.Series(values), column="status")


@pytest.fixture()
def small():
    return pd.DataFrame({"t": [5, 8, 12, 3, 9, 15, 7, 11], "e": [1, 0, 1, 1, 0, 1, 1, 0],
                         "g": ["a", "a", "a", "a", "b", "b", "b", "b"], "x": [1.0, 2, 3, 4, 5, 6, 7, 8]})


def test_missing_columns(small):
    with pytest.raises(InvalidInputError, match=r"Columns 'time', 'status' are not in the table") as exc:
        sv.prepare_cohort(small, "time", "status")
    assert "t, e, g, x" in exc.value.hint


def test_non_numeric_and_negative_times(small):
    bad = small.assign(t=small.t.astype(object))
    bad.loc[2, "t"] = "12 days"
    with pytest.raises(InvalidInputError, match=r"non-numeric value\(s\), e.g. '12 days' in row 3"):
        sv.prepare_cohort(bad, "t", "e")
    with pytest.raises(InvalidInputError, match=r"negative value\(s\), e.g. -4 in row 2"):
        sv.prepare_cohort(small.assign(t=[5, -4, 12, 3, 9, 15, 7, 11]), "t", "e")


def test_rows_dropped_are_counted(small):
    df = small.copy()
    df.loc[[0, 3], "x"] = np.nan
    df.loc[5, "g"] = None
    c = sv.prepare_cohort(df, "t", "e", "g", ["x"])
    assert (c.n, c.n_dropped, c.dropped_by_column["x"], c.dropped_by_column["g"]) == (5, 3, 2, 1)
    assert "3 of 8 rows dropped for missing values (g: 1, x: 2)" in c.summary()
    with pytest.raises(InvalidInputError, match="No rows left after dropping 8 rows"):
        sv.prepare_cohort(df.assign(x=np.nan), "t", "e", covariates=["x"])


def test_group_problems(small):
    no_events = small.assign(e=[1, 0, 1, 1, 0, 0, 0, 0])
    c = sv.prepare_cohort(no_events, "t", "e", "g")
    with pytest.raises(InvalidInputError, match="Group 'b' of column 'g' has no events"):
        sv.group_hazard_ratios(c)
    assert sv.kaplan_meier(c)["b"].events == 0  # the curve itself is still drawn
    single = sv.prepare_cohort(small.assign(g="a"), "t", "e", "g")
    with pytest.raises(InvalidInputError, match=r"Only one group \('a'\) in column 'g': a log-rank test needs at least two"):
        sv.logrank_test(single)


def test_too_few_events_for_cox(small):
    c = sv.prepare_cohort(small.assign(e=[0, 0, 1, 0, 0, 0, 0, 0]), "t", "e", covariates=["x"])
    with pytest.raises(InvalidInputError, match=r"Too few events for a Cox model: 1 event\(s\) for 1 coefficient"):
        sv.fit_cox(c, ["x"])
    c = sv.prepare_cohort(small.assign(x=1.0), "t", "e", covariates=["x"])
    with pytest.raises(InvalidInputError, match="take a single value"):
        sv.fit_cox(c, ["x"])
    ok = sv.fit_cox(sv.prepare_cohort(small, "t", "e", covariates=["x"]), ["x"], ph_test=False)
    assert any("events per coefficient" in w for w in ok.warnings)


def test_non_numeric_covariate(small):
    with pytest.raises(InvalidInputError, match="Covariate 'g' is not numeric"):
        sv.prepare_cohort(small, "t", "e", covariates=["g"])


def test_read_table_formats(tmp_path, small):
    small.to_csv(tmp_path / "c.csv", index=False)
    small.to_csv(tmp_path / "c.tsv", index=False, sep="\t")
    small.to_csv(tmp_path / "s.csv", index=False, sep=";")
    for name in ("c.csv", "c.tsv", "s.csv"):
        assert list(sv.read_table(tmp_path / name).columns) == ["t", "e", "g", "x"]
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        sv.read_table(tmp_path / "empty.csv")
    with pytest.raises(UnsupportedFormatError, match="unsupported table format"):
        sv.read_table(b"abc", name="x.parquet")
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        with pytest.raises(UnsupportedFormatError, match="Excel"):
            sv.read_table(b"PK\x03\x04", name="c.xlsx")


def test_join_features():
    cohort = pd.DataFrame({"pid": ["p1", "p2", "p3"], "time": [1, 2, 3], "event": [1, 0, 1]})
    feats = pd.DataFrame({"patient": ["p2", "p3", "p4"], "cluster_7": [0.1, 0.5, 0.2]})
    out = sv.join_features(cohort, feats, "pid", "patient")
    assert list(out.pid) == ["p2", "p3"] and list(out.cluster_7) == [0.1, 0.5]
    with pytest.raises(InvalidInputError, match="repeated patient id"):
        sv.join_features(cohort, pd.concat([feats, feats]), "pid", "patient")
    slides = pd.DataFrame({"slide": ["p2-A.svs", "p2-B.svs", "p3-A.svs"], "mean_score": [0.2, 0.4, 0.9], "error": [None] * 3})
    joined = sv.join_features(cohort, slides, "pid", "slide", id_chars=2, aggregate=True)
    assert list(joined.pid) == ["p2", "p3"] and joined.mean_score.tolist() == pytest.approx([0.3, 0.9])
    with pytest.raises(InvalidInputError, match="No patient id"):
        sv.join_features(cohort, feats.assign(patient=["x", "y", "z"]), "pid", "patient")


# --------------------------------------------------------------------------------------------------
# Risk score workflow
# --------------------------------------------------------------------------------------------------
def test_risk_score_frozen_on_validation():
    demo = sv.DEMO_COHORTS["gbsg2"]
    disc_df, val_df = sv.split_discovery_validation(demo.load(), 0.5, stratify=demo.event)
    assert abs(len(disc_df) - len(val_df)) <= 2  # halves of each event stratum, rounded
    feats = list(demo.features)
    disc = sv.prepare_cohort(disc_df, demo.time, demo.event, covariates=feats)
    val = sv.prepare_cohort(val_df, demo.time, demo.event, covariates=feats)
    res = sv.risk_score_workflow(disc, val, feats, penalizer=0.1)
    m = res.model
    assert m.cutoff_ == pytest.approx(np.median(m.score(disc)))
    # validation scores use the frozen coefficients and cut, never refitted
    np.testing.assert_allclose(res.validation.cohort.data.risk_score, val.data[feats].to_numpy() @ m.coef_.to_numpy())
    assert ((res.validation.cohort.data.risk_score > m.cutoff_) == (res.validation.cohort.data.group == sv.HIGH)).all()
    tab = res.summary_frame()
    assert list(tab.cohort) == ["discovery", "validation"]
    assert (tab.hr_high_vs_low > 1).all() and (tab.logrank_p < 0.05).all()
    again = sv.RiskScoreModel.from_dict(json.loads(m.to_json()))
    np.testing.assert_allclose(again.score(val), m.score(val))
    with pytest.raises(InvalidInputError, match="lacks the risk-score feature"):
        m.score(val_df.drop(columns=["pnodes"]))


def test_risk_score_model_file_errors():
    with pytest.raises(InvalidInputError, match="Not a risk-score model file"):
        sv.RiskScoreModel.from_dict({"features": ["a"]})


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def test_km_figure_has_everything(lung):
    c = sv.prepare_cohort(lung, "time", "status", "sex")
    km = sv.kaplan_meier(c)
    fig = sv.km_figure(km, sv.logrank_test(c), risk_times=[0, 250, 500, 750, 1000])
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["1", "2"]
    markers = [t for t in fig.data if t.mode == "markers"]
    assert len(markers) == 2 and markers[0].marker.symbol == "cross-thin"
    table = [t for t in fig.data if t.mode == "text"]
    assert [list(t.text) for t in table] == [["138", "62", "20", "7", "2"], ["90", "53", "21", "3", "0"]]
    assert any("Log-rank p = 0.001" in a.text for a in fig.layout.annotations)
    assert sum(1 for s in fig.layout.shapes if s.line.dash == "dash") == 3  # two medians + the 0.5 line
    assert "<html>" in sv.figure_html(fig)[:200]
    forest = sv.forest_figure(sv.group_hazard_ratios(c))
    assert forest.layout.xaxis.type == "log"
    d = lung.dropna(subset=["age"])
    assert sv.cutpoint_figure(sv.optimal_cutpoint(d.time, d.status - 1, d.age, variable="age")).data


def test_figure_image_export(lung, monkeypatch):
    """Both sides of static export run everywhere: refused with a clear message without a browser, real PNG with one."""
    from PIL import Image

    c = sv.prepare_cohort(lung, "time", "status", "sex")
    fig = sv.km_figure(sv.kaplan_meier(c), sv.logrank_test(c))
    with pytest.raises(UnsupportedFormatError, match="Cannot export a figure as 'gif'"):
        sv.figure_image(fig, "gif")
    with monkeypatch.context() as m:  # the real availability check, told the browser is a file that does not exist
        m.setenv("BROWSER_PATH", "/nonexistent/chromium")
        assert not sv.image_export_available()
        with pytest.raises(UnsupportedFormatError, match="Static image export is not available on this server") as info:
            sv.figure_image(fig, "png")
        assert "camera button" in info.value.hint
    if not sv.image_export_available():
        pytest.skip("kaleido or a local Chromium is missing here: the export itself is not checked")
    png = sv.figure_image(fig, "png", width=400, height=300, scale=1)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(png)).size == (400, 300)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_json_matches_r(capsys):
    rc = cli_main(["survival", str(REF / "veteran.csv"), "--time", "time", "--event", "status", "--group", "celltype", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"groups", "logrank", "hazard_ratios"}
    med = read_ref("km_median.csv")
    med = med[med.dataset == "veteran"]
    assert [g["name"] for g in out["groups"]] == list(med.stratum)
    for g, (_, r) in zip(out["groups"], med.iterrows(), strict=True):
        assert set(g) == {"name", "n", "events", "median", "median_ci"}
        assert (g["n"], g["events"], g["median"], g["median_ci"]) == (r.n, r.events, r["median"], [r.lcl, r.ucl])
    lr = read_ref("logrank.csv").query("dataset == 'veteran' and rho == 0").iloc[0]
    assert out["logrank"]["df"] == 3
    close("log-rank chi2", out["logrank"]["chi2"], lr.chisq)
    cox = read_ref("cox.csv").query("model == 'veteran_celltype'")
    assert [h["group"] for h in out["hazard_ratios"]] == ["large", "smallcell", "squamous"]
    close("cox HR and CI", [[h["hr"], *h["ci"]] for h in out["hazard_ratios"]], cox[["hr", "hr_lower", "hr_upper"]])


def test_cli_null_where_not_reached(capsys):
    rc = cli_main(["survival", str(REF / "tiny.csv"), "--time", "time", "--event", "status", "--group", "case", "--json"])
    assert rc == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert groups[0]["median_ci"] == [1.0, None]


def test_cli_text_and_errors(capsys):
    assert cli_main(["survival", str(REF / "lung.csv"), "--time", "time", "--event", "status", "--group", "sex"]) == 0
    captured = capsys.readouterr()
    assert "chi2 = 10.3267 on 1 df" in captured.out and "1 → censored, 2 → event" in captured.err
    assert cli_main(["survival", str(REF / "lung.csv"), "--time", "days", "--event", "status", "--group", "sex"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Column 'days' is not in the table.") and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Live R (when installed): the committed reference values are what R computes today
# --------------------------------------------------------------------------------------------------
def _r_has_survival() -> bool:
    if not shutil.which("Rscript"):
        return False
    return subprocess.run(["Rscript", "-e", "library(survival)"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _r_has_survival(), reason="Rscript with the survival package is not installed")
def test_r_live(tmp_path):
    subprocess.run(["Rscript", str(REF / "make_reference.R"), str(tmp_path)], check=True, capture_output=True, timeout=120)
    for committed in sorted(REF.glob("*.csv")):
        fresh = tmp_path / committed.name
        if not fresh.exists():  # maxstat files need the maxstat package
            assert committed.name.startswith("maxstat"), committed.name
            continue
        a, b = read_ref(committed.name), pd.read_csv(fresh, na_values=["NA"], keep_default_na=False)
        assert list(a.columns) == list(b.columns)
        for col in a.columns:
            if pd.api.types.is_numeric_dtype(a[col]):
                close(f"live R: {committed.stem}", a[col], b[col], rtol=1e-9)
            else:
                assert a[col].fillna("").astype(str).tolist() == b[col].fillna("").astype(str).tolist()
    # and our numbers against the fresh run, for one representative file of each kind
    fresh_lr = pd.read_csv(tmp_path / "logrank.csv")
    r0 = fresh_lr.query("dataset == 'lung' and group_col == 'sex' and rho == 0").iloc[0]
    lung = pd.read_csv(tmp_path / "lung.csv", na_values=["NA"])
    close("live R: log-rank", sv.logrank_test(sv.prepare_cohort(lung, "time", "status", "sex")).chi2, r0.chisq)
    assert math.isfinite(r0.p)


# --------------------------------------------------------------------------------------------------
# Issue 15: O(n log n) concordance, vectorised cox.zph, tables users really have, bounds
# --------------------------------------------------------------------------------------------------
def slow_concordance(t, e, r):
    """The obvious O(events × n) count (the engine's former implementation): the reference for the sorted one."""
    conc = disc = tied = 0
    for i in np.flatnonzero(e == 1):
        j = (t > t[i]) | ((t == t[i]) & (e == 0))
        conc += int((r[i] > r[j]).sum())
        disc += int((r[i] < r[j]).sum())
        tied += int((r[i] == r[j]).sum())
    return conc, disc, tied


def test_sorted_concordance_equals_the_pairwise_count_with_ties():
    rng = np.random.default_rng(15)
    for _ in range(200):  # small tables full of tied times, tied risks and tied censored/event times
        n = int(rng.integers(1, 50))
        t, e, r = rng.integers(0, 6, n).astype(float), rng.integers(0, 2, n), rng.integers(0, 4, n).astype(float)
        assert sv.cox.concordance(t, e, r)[1:] == slow_concordance(t, e, r)


def slow_cox_zph_information(x, time, event, beta):
    """R cox.zph's score and information for (beta, theta), one event time at a time (the former loop; km transform)."""
    tt = sv.cox.km_time_transform(time, event)
    g_all = tt - tt[event == 1].mean()
    w = np.exp(x @ beta - (x @ beta).max())
    p = x.shape[1]
    u, imat = np.zeros(2 * p), np.zeros((2 * p, 2 * p))
    for t in np.unique(time[event == 1]):
        risk, dead = time >= t, (time >= t) & (time == t) & (event == 1)
        nd, g = int(dead.sum()), g_all[dead][0]
        s0, s1, s2 = w[risk].sum(), w[risk] @ x[risk], (x[risk] * w[risk][:, None]).T @ x[risk]
        d0, d1, d2 = w[dead].sum(), w[dead] @ x[dead], (x[dead] * w[dead][:, None]).T @ x[dead]
        u[:p] += x[dead].sum(axis=0)
        u[p:] += g * x[dead].sum(axis=0)
        for k in range(nd):
            f = k / nd
            xbar = (s1 - f * d1) / (s0 - f * d0)
            v = (s2 - f * d2) / (s0 - f * d0) - np.outer(xbar, xbar)
            u[:p] -= xbar
            u[p:] -= g * xbar
            imat += np.block([[v, g * v], [g * v, g * g * v]])
    return u, imat


def test_vectorised_cox_zph_equals_the_per_time_loop():
    rng = np.random.default_rng(14)
    for _ in range(20):
        n, p = int(rng.integers(12, 60)), int(rng.integers(1, 4))
        x, time = rng.normal(size=(n, p)), rng.integers(1, 10, n).astype(float)
        event = rng.integers(0, 2, n)
        event[:2] = 1
        beta = rng.normal(size=p) * 0.3
        u, imat = slow_cox_zph_information(x, time, event, beta)
        expected = [float(np.r_[np.zeros(p), u[p + j]] @ np.linalg.solve(imat[np.ix_([*range(p), p + j], [*range(p), p + j])],
                                                                           np.r_[np.zeros(p), u[p + j]])) for j in range(p)]
        got = sv.cox_zph(x, time, event, beta, [f"x{j}" for j in range(p)])
        close("cox.zph chisq (vs loop)", got.chi2[:p], expected, rtol=1e-9)


def test_200000_rows_answer_and_the_row_limit_is_stated():
    from tests.corpus import _rows

    table = sv.read_table(_rows(200_000).encode(), name="big.csv")
    cohort = sv.prepare_cohort(table, "time", "status", "arm", ["x"])
    res = sv.fit_cox(cohort, ["x"])  # concordance, cox.zph and Schoenfeld residuals on 200,000 rows
    assert res.n == 200_000 and 0.4 < res.concordance < 0.6 and len(res.schoenfeld) == 133_333
    with pytest.raises(sv.data.TooLargeError, match="has more than 1,000 rows, the limit for a cohort table"):
        sv.read_table(_rows(1_001).encode(), name="big.csv", max_rows=1_000)
    assert len(sv.read_table(_rows(1_000).encode(), name="ok.csv", max_rows=1_000)) == 1_000


def test_encoding_can_be_chosen_and_a_wrong_choice_is_a_message():
    text = "time;status;Région\n5;1;Île\n6;0;Zürich\n"
    assert list(sv.read_table(text.encode("latin-1"), name="t.csv", encoding="latin-1")["Région"]) == ["Île", "Zürich"]
    assert list(sv.read_table(text.encode("cp1252"), name="t.csv")["Région"]) == ["Île", "Zürich"]  # detected
    with pytest.raises(CorruptFileError, match="t.csv cannot be read as utf-8 text"):
        sv.read_table(text.encode("latin-1"), name="t.csv", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="Unknown text encoding 'ebcdic'"):
        sv.read_table(text.encode(), name="t.csv", encoding="ebcdic")


def test_excel_duplicate_headers_and_old_xls():
    import io as _io

    buf = _io.BytesIO()
    pd.DataFrame([[5, 1, 2], [6, 0, 3]], columns=["time", "status", "status "]).to_excel(buf, index=False)
    with pytest.raises(InvalidInputError, match=r"dup.xlsx has 1 column name\(s\) that appear more than once"):
        sv.read_table(buf.getvalue(), name="dup.xlsx")
    with pytest.raises(UnsupportedFormatError, match=r"old Excel 97–2003 workbook \(.xls\)"):
        sv.read_table(b"\xd0\xcf\x11\xe0 old", name="old.xls")
