"""Kaplan–Meier curves per group with R's log-log intervals and R's median definition.

The estimate and its event table come from :class:`lifelines.KaplanMeierFitter`. The 95 % band is
R's ``survfit(..., conf.type = "log-log")``: with Greenwood's ``se = sqrt(sum d / (n (n - d)))`` (the
standard error of log S, R's ``std.err``), ``S ** exp(±z se / log S)``; NaN where S is 0 or 1, as R
gives ``NA`` there. Medians and their confidence limits follow R's ``print.survfit`` exactly (:func:`r_median`): the
first time the curve (or its lower/upper limit) is at or below 0.5, or the midpoint of a stretch
where the curve is exactly 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from engine.errors import InvalidInputError
from engine.survival.data import Cohort

R_TOLERANCE = math.sqrt(np.finfo(float).eps)  # R: sqrt(.Machine$double.eps)


def _none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def r_median(time: np.ndarray, curve: np.ndarray, tol: float = R_TOLERANCE) -> float:
    """Median as R's ``print.survfit`` / ``summary(fit)$table`` (``survival:::survmean``'s ``minmin``).

    The first time the curve is at or below 0.5 (NaN values skipped); if the curve sits at exactly
    0.5 there and drops lower later, the midpoint between that time and the first lower step.
    Applied to the lower and upper confidence curves it gives the median's confidence limits.
    NaN when the curve never reaches 0.5 (median not reached).
    """
    x = np.asarray(time, float)
    y = np.asarray(curve, float)
    keep = ~np.isnan(y) & (y < 0.5 + tol)
    if not keep.any():
        return math.nan
    x, y = x[keep], y[keep]
    if abs(y[0] - 0.5) < tol and (y < y[0]).any():
        return float((x[0] + x[np.flatnonzero(y < y[0])[0]]) / 2)
    return float(x[0])


@dataclass(frozen=True)
class KMCurve:
    """One group's Kaplan–Meier curve. ``table``: time, n_risk, n_event, n_censor, surv, std_err, lower, upper."""

    name: str
    table: pd.DataFrame
    n: int
    events: int
    median: float
    median_ci: tuple[float, float]
    conf_level: float = 0.95

    def survival_at(self, times: Sequence[float]) -> pd.DataFrame:
        """Survival and its CI at given times (R ``summary(fit, times, extend = TRUE)``)."""
        tab = self.table
        rows = []
        t_all = tab["time"].to_numpy()
        for t in times:
            k = np.searchsorted(t_all, t, side="right") - 1
            at_risk = int((self._times_all >= t).sum())
            if k < 0:
                s, lo, hi = 1.0, 1.0, 1.0
            else:
                s, lo, hi = (float(tab[c].iloc[k]) for c in ("surv", "lower", "upper"))
            rows.append({"group": self.name, "time": float(t), "n_risk": at_risk, "surv": s, "lower": lo, "upper": hi})
        return pd.DataFrame(rows)

    @property
    def _times_all(self) -> np.ndarray:
        tab = self.table
        return np.repeat(tab["time"].to_numpy(), (tab["n_event"] + tab["n_censor"]).to_numpy().astype(int))

    def n_at_risk(self, times: Sequence[float]) -> np.ndarray:
        ta = self._times_all
        return np.array([(ta >= t).sum() for t in times], dtype=int)

    def censor_times(self) -> pd.DataFrame:
        """Times with censoring and the curve's value there (for the '+' marks)."""
        tab = self.table
        c = tab[tab["n_censor"] > 0]
        return c[["time", "surv", "n_censor"]].reset_index(drop=True)

    def to_dict(self) -> dict:
        return {"name": self.name, "n": self.n, "events": self.events, "median": _none(self.median),
                "median_ci": [_none(self.median_ci[0]), _none(self.median_ci[1])]}


@dataclass(frozen=True)
class KMResult:
    """Kaplan–Meier curves of every group (or one curve named ``all``)."""

    curves: tuple[KMCurve, ...]
    group_col: str | None = None
    time_unit: str = "days"
    conf_level: float = 0.95
    conf_type: str = "log-log"

    def __getitem__(self, name: str) -> KMCurve:
        for c in self.curves:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.curves]

    def to_frame(self) -> pd.DataFrame:
        """Every curve's steps, long format (one row per group and time)."""
        return pd.concat([c.table.assign(group=c.name) for c in self.curves], ignore_index=True)[
            ["group", "time", "n_risk", "n_event", "n_censor", "surv", "std_err", "lower", "upper"]]

    def medians_frame(self) -> pd.DataFrame:
        pct = int(round(self.conf_level * 100))
        return pd.DataFrame([{"group": c.name, "n": c.n, "events": c.events, "median": c.median,
                              f"median_{pct}ci_lower": c.median_ci[0], f"median_{pct}ci_upper": c.median_ci[1]}
                             for c in self.curves])

    def survival_at(self, times: Sequence[float]) -> pd.DataFrame:
        return pd.concat([c.survival_at(times) for c in self.curves], ignore_index=True)

    def risk_table(self, times: Sequence[float]) -> pd.DataFrame:
        """Number at risk, one row per group, one column per time."""
        return pd.DataFrame({t: [int(n) for n in (c.n_at_risk([t])[0] for c in self.curves)] for t in times},
                            index=pd.Index(self.names, name="group"))

    def to_dict(self) -> dict:
        return {"groups": [c.to_dict() for c in self.curves], "conf_level": self.conf_level,
                "conf_type": self.conf_type, "time_unit": self.time_unit}


def _curve(name: str, time: np.ndarray, event: np.ndarray, conf_level: float) -> KMCurve:
    from lifelines import KaplanMeierFitter

    kmf = KaplanMeierFitter(alpha=1 - conf_level).fit(time, event_observed=event)
    et = kmf.event_table
    et = et[et["removed"] > 0]  # lifelines adds a t=0 row; R lists observed times only
    t = et.index.to_numpy(dtype=float)
    n_risk = et["at_risk"].to_numpy(dtype=float)
    d = et["observed"].to_numpy(dtype=float)
    surv = kmf.survival_function_.loc[t].iloc[:, 0].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.where(d > 0, d / (n_risk * (n_risk - d)), 0.0)
        se = np.sqrt(np.cumsum(greenwood))  # inf from the step where n == d on
        z = stats.norm.ppf(1 - (1 - conf_level) / 2)
        xx = np.where((surv == 0) | (surv == 1), np.nan, surv)
        se2 = z * se / np.log(xx)
        lower = np.exp(-np.exp(np.log(-np.log(xx)) - se2))
        upper = np.exp(-np.exp(np.log(-np.log(xx)) + se2))
    table = pd.DataFrame({"time": t, "n_risk": n_risk.astype(int), "n_event": d.astype(int),
                          "n_censor": et["censored"].to_numpy(dtype=int), "surv": surv, "std_err": se,
                          "lower": lower, "upper": upper})
    med = r_median(t, surv)
    # R: the median's lower limit is where the lower curve reaches 0.5, its upper limit where the upper curve does
    lo = r_median(t, lower)
    hi = r_median(t, upper)
    return KMCurve(name=name, table=table, n=int(len(time)), events=int(event.sum()), median=med,
                   median_ci=(lo, hi), conf_level=conf_level)


def kaplan_meier(cohort: Cohort, conf_level: float = 0.95, by_group: bool = True) -> KMResult:
    """Kaplan–Meier curve per group of ``cohort`` (one curve ``all`` without a group column)."""
    if not 0 < conf_level < 1:
        raise InvalidInputError(f"Confidence level must be between 0 and 1, not {conf_level}.")
    df = cohort.data
    if by_group and cohort.group_col is not None:
        curves = tuple(_curve(g, df.loc[df["group"] == g, "time"].to_numpy(), df.loc[df["group"] == g, "event"].to_numpy(), conf_level)
                       for g in cohort.group_order)
        gcol = cohort.group_col
    else:
        curves = (_curve("all", df["time"].to_numpy(), df["event"].to_numpy(), conf_level),)
        gcol = None
    return KMResult(curves=curves, group_col=gcol, time_unit=cohort.time_unit, conf_level=conf_level)


def default_risk_times(km: KMResult, n: int = 6) -> list[float]:
    """Round, evenly spaced times for the number-at-risk table (0 to the last follow-up)."""
    tmax = max(float(c.table["time"].max()) for c in km.curves)
    if tmax <= 0:
        return [0.0]
    raw = tmax / (n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    return [float(x) for x in np.arange(0, tmax + 1e-9, step)]
