"""Tests between groups: k-group (weighted) log-rank, pairwise log-rank with Holm's correction.

The statistics come from :func:`lifelines.statistics.multivariate_logrank_test`. Weightings:

=====================  ===========================================  =============================
``weighting``          weight at each event time                    R equivalent
=====================  ===========================================  =============================
``logrank``            1                                            ``survdiff(rho = 0)``
``wilcoxon``           n at risk (Gehan–Breslow)                    (none in survival)
``tarone-ware``        sqrt(n at risk)                              (none in survival)
``peto``               Peto–Peto modified survival, prod(1-d/(n+1))  (none in survival)
``fleming-harrington`` S(t-)^p (1 - S(t-))^q, pooled KM             ``survdiff(rho = p)`` when q = 0
=====================  ===========================================  =============================
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.errors import InvalidInputError
from engine.survival.data import Cohort, require_groups

WEIGHTINGS = {
    "logrank": "Log-rank",
    "wilcoxon": "Gehan–Breslow–Wilcoxon",
    "tarone-ware": "Tarone–Ware",
    "peto": "Peto–Peto",
    "fleming-harrington": "Fleming–Harrington",
}


def describe_test(weighting: str = "logrank", p: float = 1.0, q: float = 0.0) -> str:
    if weighting not in WEIGHTINGS:
        raise InvalidInputError(f"Unknown test {weighting!r}.", f"Choose one of: {', '.join(WEIGHTINGS)}.")
    name = WEIGHTINGS[weighting]
    if weighting == "fleming-harrington":
        name += f" (p={p:g}, q={q:g})"
    return name


@dataclass(frozen=True)
class LogRankResult:
    """A k-group (weighted) log-rank test: chi-square statistic, degrees of freedom, p-value."""

    chi2: float
    df: int
    p: float
    test_name: str
    weighting: str = "logrank"
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"chi2": float(self.chi2), "df": int(self.df), "p": float(self.p)}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"test": self.test_name, "chi2": self.chi2, "df": self.df, "p": self.p,
                              "groups": ", ".join(self.groups)}])


def _lifelines_test(time, event, group, weighting: str, p: float, q: float):
    from lifelines.statistics import multivariate_logrank_test

    kwargs = {}
    w = None if weighting == "logrank" else weighting
    if weighting == "fleming-harrington":
        if p < 0 or q < 0:
            raise InvalidInputError("Fleming–Harrington p and q must be zero or positive.")
        kwargs = {"p": p, "q": q}
    return multivariate_logrank_test(np.asarray(time, float), np.asarray(group, object), np.asarray(event, int),
                                     weightings=w, **kwargs)


def logrank_test(cohort: Cohort, weighting: str = "logrank", p: float = 1.0, q: float = 0.0) -> LogRankResult:
    """Overall test of equal survival across the groups of ``cohort`` (k - 1 degrees of freedom)."""
    name = describe_test(weighting, p, q)
    require_groups(cohort, need_events=False, what="a log-rank test")
    d = cohort.data
    if d["event"].sum() == 0:
        raise InvalidInputError("No events in the cohort: a log-rank test needs at least one.",
                                "Check the event column and its coding.")
    res = _lifelines_test(d["time"], d["event"], d["group"], weighting, p, q)
    return LogRankResult(chi2=float(res.test_statistic), df=int(res.degrees_of_freedom), p=float(res.p_value),
                         test_name=name, weighting=weighting, groups=tuple(cohort.group_order))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment (R ``p.adjust(method = "holm")``)."""
    p = np.asarray(pvalues, float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


@dataclass(frozen=True)
class PairwiseResult:
    """Every pair of groups compared by the same test; ``p_holm`` adjusted over all pairs."""

    table: pd.DataFrame  # a, b, chi2, p, p_holm
    test_name: str

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()


def pairwise_logrank(cohort: Cohort, weighting: str = "logrank", p: float = 1.0, q: float = 0.0) -> PairwiseResult:
    """Pairwise tests between all groups (each on the two groups' patients only), Holm-adjusted."""
    name = describe_test(weighting, p, q)
    require_groups(cohort, need_events=False, what="pairwise tests")
    d = cohort.data
    rows = []
    for a, b in itertools.combinations(cohort.group_order, 2):
        sub = d[d["group"].isin([a, b])]
        if sub["event"].sum() == 0:
            rows.append({"a": a, "b": b, "chi2": np.nan, "p": np.nan})
            continue
        r = _lifelines_test(sub["time"], sub["event"], sub["group"], weighting, p, q)
        rows.append({"a": a, "b": b, "chi2": float(r.test_statistic), "p": float(r.p_value)})
    tab = pd.DataFrame(rows, columns=["a", "b", "chi2", "p"])
    ok = tab["p"].notna().to_numpy()
    tab["p_holm"] = np.nan
    tab.loc[ok, "p_holm"] = holm(tab.loc[ok, "p"].to_numpy())
    return PairwiseResult(table=tab, test_name=name)
